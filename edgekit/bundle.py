"""The bundle folder: artifacts, manifest.json, the reference program, verification inputs, reports.

A bundle is built in a hidden staging folder beside its destination and moved into place only when
complete, so a failed run never leaves a half-written bundle (or destroys the previous one).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit import destination as D
from edgekit import manifest as M
from edgekit.errors import UserError
from edgekit.manifest import FORMAT, FORMAT_VERSION, MANIFEST  # noqa: F401  (re-exported)
REFERENCE = "reference.pt2"
VERIFY_INPUTS = "verify_inputs.npz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (edgekit.atomic)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: Path, text: str) -> None:
    from edgekit.atomic import atomic_file

    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


@contextlib.contextmanager
def staging(out: Path):
    """Yield a staging folder beside ``out``; on success it takes the place of ``out`` atomically
    (edgekit.destination: only a bundle edgekit wrote is replaced). Hold ``destination.locked(out)``
    around it."""
    out = Path(out)
    D.check_replaceable(out)
    stage = D.new_stage(out)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    D.swap_in(stage, out)


def save_inputs(path: Path, stacked: list[np.ndarray], names: list[str]) -> None:
    np.savez(path, **dict(zip(names, stacked)))


def load_verify_inputs(m: "M.Manifest"):
    """The bundle's stored verification inputs as a CalibrationSet: each array's header is checked
    against the manifest's ModelSpec before anything is allocated (edgekit.arrays); the caller checks
    the file's sha256 first. E-BUNDLE-INVALID when they do not fit."""
    from edgekit.arrays import MAX_SAMPLES, Expect, read_npz
    from edgekit.data import CalibrationSet, check_finite

    path = m.path(m.inputs.path if m.inputs is not None else m.raw["verification_inputs"]["file"])
    expects = {t.name: Expect(t.dtype, tuple(t.shape), max_leading=MAX_SAMPLES) for t in m.spec.inputs}
    arrays = read_npz(path, expects, name=path.name, code="E-BUNDLE-INVALID", fix="re-export the bundle, or pass --data DIR")
    stacked = [arrays[n] for n in m.spec.input_names]
    count = {len(a) for a in stacked}
    if len(count) != 1:
        raise UserError("E-BUNDLE-INVALID", f"{path.name}: the inputs hold different sample counts {sorted(count)}",
                        "re-export the bundle, or pass --data DIR")
    samples = tuple(tuple(a[i] for a in stacked) for i in range(len(stacked[0])))
    sources = tuple(f"{path.name}[{i}]" for i in range(len(samples)))
    for sample, src in zip(samples, sources):
        check_finite(sample, src, m.spec)
    from edgekit.labels import from_manifest

    labels = from_manifest(m.raw["verification_inputs"].get("labels"), len(samples))
    return CalibrationSet(samples, sources, "tensor", str(path), labels, "labels stored with the bundle" if labels else "")


def file_entries(root: Path, files: tuple[str, ...]) -> list[dict]:
    return [{"path": f, "sha256": sha256_file(root / f), "size_bytes": (root / f).stat().st_size} for f in files]


def environment(versions: dict[str, str]) -> dict:
    import torch

    import edgekit

    return {"edgekit": edgekit.__version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "platform": platform.platform(), "machine": platform.machine(), **versions}


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def read_manifest(bundle: Path) -> dict:
    """The bundle's manifest as a dict, after every check of edgekit.manifest (E-BUNDLE-INVALID)."""
    return M.read(Path(bundle)).raw
