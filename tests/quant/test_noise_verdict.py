"""Fidelity of an ill-conditioned quantized model (edgekit.quant.noise, edgekit.verification).

``Chaotic`` is a plain 20-layer conv/GELU/LayerNorm stack with weights of large variance: a rounding
flip anywhere grows with depth, so every runtime lands tens of output steps from its quantized
reference though no op computes anything else. Measured here (24 photos at 64x64): tflite 38 steps,
ptl 41, onnx 38, executorch 37 past fixed bounds of 24-32; three twins of the reference (each op
rounded differently) reach 22-26 steps themselves. The verdict:
- tflite, onnx and executorch pass: within twice the reference's own noise, and their per-layer views
  find every layer within its step bound (on the runtime's own inputs, or each kernel replayed on the
  reference's);
- a target without per-layer rows (here: executorch's rows withheld) fails with the noise figures in
  its note: end to end a fault can hide in that noise;
- a seeded fault does hide end to end (the largest weight of the 11th conv sign-flipped moves tflite to
  50 steps, inside the noise-widened bound of 52), and the per-layer view finds it: tflite fails, with
  that conv (module blocks.9) flagged.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from artifact_edit import flip_largest_tflite_weight, rehash
from photos import photo_array

pytest.importorskip("litert_torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

pytestmark = pytest.mark.slow  # three INT8 exports of a small model and a verify (~2 min on 2 cores)


class Chaotic(nn.Module):
    def __init__(self, c: int = 16, depth: int = 20, gain: float = 8.0):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 4, 4)
        self.blocks = nn.ModuleList(nn.Conv2d(c, c, 3, 1, 1) for _ in range(depth))
        for block in self.blocks:
            nn.init.normal_(block.weight, std=gain / (9 * c) ** 0.5)
        self.head = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.gelu(block(x))
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],)).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def bundle(calib_root, tmp_path_factory):
    photos = photo_array(calib_root, 64, 24, margin=8)
    out = tmp_path_factory.mktemp("chaotic") / "b"
    return edgekit.export(Chaotic().eval(), (torch.from_numpy(photos[:1]),), targets=["tflite", "onnx", "executorch"],
                          data=photos, quant="int8", samples=16, out=out)


@pytest.mark.parametrize("target", ["tflite", "onnx", "executorch"])
def test_within_the_reference_noise_with_every_layer_clean_passes(bundle, target):
    r = bundle.results[target].raw
    noise = r["reference_noise"]
    assert r["status"] == "pass" and noise["verdict"] == "pass", (r["failures"], noise)
    assert noise["fixed_bound_failures"] and noise["twins"] == 3  # the fixed bound alone would have failed it
    assert noise["twin_max_steps"] >= 10  # an ill-conditioned reference: its own twins are many steps apart
    assert r["metrics"]["max_steps"] <= noise["widened"]["max_steps"]
    assert r["per_layer"] and not [row for row in r["per_layer"] if row["flagged"]]
    assert any("fidelity judged against the reference's own rounding noise" in n for n in r["notes"])


def test_without_a_per_layer_view_the_miss_stands(bundle, tmp_path, monkeypatch):
    """The same .pte, verified with its per-layer rows withheld (as for a target that has no view):
    its runtime still runs for real; only the rows are dropped before the verdict."""
    from edgekit import verification

    real = verification.run_artifact

    def without_rows(*args, **kwargs):
        outcome = real(*args, **kwargs)
        outcome.extra.pop("per_layer", None)
        return outcome

    monkeypatch.setattr(verification, "run_artifact", without_rows)
    copy = tmp_path / "copy"
    shutil.copytree(bundle.path, copy)
    r = edgekit.verify(copy).results["executorch"].raw
    assert r["status"] == "fail" and r["reference_noise"]["verdict"] == "fail"
    assert any("has no per-layer view" in n for n in r["notes"]), r["notes"]


def test_a_fault_hidden_in_the_noise_is_found_layer_by_layer(bundle, tmp_path):
    copy = tmp_path / "faulty"
    shutil.copytree(bundle.path, copy)
    tfl = next(Path(copy).glob("*-int8.tflite"))
    flip_largest_tflite_weight(tfl, "CONV_2D", 10, tmp_path / "faulty.tflite")
    tfl.write_bytes((tmp_path / "faulty.tflite").read_bytes())
    rehash(tfl)
    r = edgekit.verify(copy).results["tflite"].raw
    assert r["status"] == "fail"
    flagged = [row for row in r["per_layer"] if row["flagged"]]
    assert [row["module"] for row in flagged] == ["blocks.9"] and flagged[0]["max_steps"] > 10, flagged
    assert r["reference_noise"]["verdict"] == "fail"
    assert np.isfinite(r["metrics"]["max_steps"])
