"""The bundle folder: artifacts, manifest.json, the reference program, verification inputs, reports.

A bundle is built in a hidden staging folder beside its destination and moved into place only when
complete, so a failed run never leaves a half-written bundle (or destroys the previous one).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit.errors import UserError

FORMAT = "edgekit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE = "reference.pt2"
VERIFY_INPUTS = "verify_inputs.npz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_destination(out: Path) -> None:
    """Fail early (before any heavy work) if ``out`` cannot become a bundle."""
    if out.exists() and not out.is_dir():
        raise UserError("E-OUT-EXISTS", f"{out} exists and is a file", "pass --out with a folder path")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError("E-OUT-EXISTS", f"{out} is a non-empty folder that is not an edgekit bundle",
                        "pass --out with a new or empty folder (an existing bundle is replaced)")
    parent = out.parent if out.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError("E-OUT-UNWRITABLE", f"cannot write into {parent}: {exc.strerror or exc}",
                        "pass --out with a folder you can write to") from exc


@contextlib.contextmanager
def staging(out: Path):
    """Yield a staging folder; on success it replaces ``out`` (an older bundle there is removed)."""
    out = Path(out)
    check_destination(out)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "bundle")
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_inputs(path: Path, stacked: list[np.ndarray], names: list[str]) -> None:
    np.savez(path, **dict(zip(names, stacked)))


def load_inputs(path: Path, names: list[str]) -> list[np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return [z[n] for n in names]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError("E-BUNDLE-INVALID", f"cannot read the verification inputs {path}: {exc}",
                        "re-export the bundle, or pass --data DIR") from exc


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
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise UserError("E-BUNDLE-INVALID", f"{bundle} is not a folder", "pass the folder `edgekit export` wrote")
    if not path.is_file():
        raise UserError("E-BUNDLE-INVALID", f"{bundle} has no {MANIFEST}", "pass the folder `edgekit export` wrote")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError("E-BUNDLE-INVALID", f"cannot parse {path}: {exc}", "re-export the bundle") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise UserError("E-BUNDLE-INVALID", f"{path} is not an edgekit bundle manifest of version {FORMAT_VERSION}",
                        "re-export the bundle with this edgekit version")
    return manifest
