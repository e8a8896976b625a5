"""Test helper: one real tiny_cnn bundle (tflite + onnx, exported with the CLI) shared by the test
modules of a session, and copies of it with one artifact's classifier bias perturbed."""
from __future__ import annotations

import shutil
from pathlib import Path

from artifact_edit import perturb_tensor

TARGETS = "tflite,onnx"


def tiny_bundle(tmp_path_factory) -> Path:
    """Export tiny_cnn once per session (later calls reuse the folder: ~13 s saved per module)."""
    from edgekit.cli import main

    out = tmp_path_factory.getbasetemp() / "shared_tiny_cnn" / "tiny_cnn"
    if not (out / "manifest.json").is_file():
        assert main(["export", "tiny_cnn", "--targets", TARGETS, "--out", str(out), "--samples", "8", "--quiet"]) == 0
    return out


def perturbed_copy(bundle: Path, dst: Path, target: str, delta: float = 0.5) -> Path:
    """Copy ``bundle`` to ``dst`` and add ``delta`` to one classifier bias value inside ``target``'s file."""
    from edgekit import bundle as B
    from edgekit.models import BUILTIN

    shutil.copytree(bundle, dst)
    art = next(a for a in B.read_manifest(dst)["artifacts"] if a["target"] == target)
    bias = BUILTIN["tiny_cnn"]().module.classifier.bias.detach().numpy()
    perturb_tensor([dst / f["path"] for f in art["files"]], bias, index=3, delta=delta)
    return dst


def checked_reports(tmp_path_factory) -> dict:
    """{"good": (report, errors), "bad": (report, errors)} from assert_parity's check on the shared
    bundle and on a copy with the onnx bias perturbed; computed once per session, kept on disk."""
    import json

    import numpy as np

    from edgekit.pytest_plugin import check_parity

    good = tiny_bundle(tmp_path_factory)
    cache = good.parent / "checked"
    if not (cache / "bad.npz").is_file():
        bad = perturbed_copy(good, good.parent / "perturbed_onnx", "onnx")
        cache.mkdir(exist_ok=True)
        for name, path in (("good", good), ("bad", bad)):
            report, errors = check_parity("tiny_cnn", path)
            (cache / f"{name}.json").write_text(json.dumps(report))
            np.savez(cache / f"{name}.npz", **errors)
    out = {}
    for name in ("good", "bad"):
        with np.load(cache / f"{name}.npz") as z:
            out[name] = (json.loads((cache / f"{name}.json").read_text()), {k: z[k] for k in z.files})
    return out
