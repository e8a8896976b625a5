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
