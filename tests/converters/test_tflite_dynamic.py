"""TFLite with dynamic shapes (FP32): litert-torch exports the Dims, the runner resizes the
interpreter's inputs; the pipeline verifies the file at the example's size and at the range's
bounds and middle, export and `edgekit verify` alike, through the public API."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.export import Dim

import edgekit
from edgekit.converters.base import Artifact
from edgekit.errors import UserError

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import CONVERTER  # noqa: E402


class _SmallCNN(torch.nn.Module):
    """Conv, pooling and a mean over the image: every op takes a dynamic batch and image side."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean((2, 3)))


def _data(n: int = 6, side: int = 32) -> list[np.ndarray]:
    """Smooth, image-like samples (a gradient plus a little noise), each with a batch axis of 1."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(-1, 1, side, dtype=np.float32)
    base = ramp[None, None, :, None] * ramp[None, None, None, :]
    return [(base * rng.uniform(0.5, 2.0, (1, 3, 1, 1)) + 0.1 * rng.standard_normal((1, 3, side, side))).astype(np.float32)
            for _ in range(n)]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = _SmallCNN().eval()
    data = _data()
    out = tmp_path_factory.mktemp("dyn") / "bundle"
    b = edgekit.export(model, torch.from_numpy(data[0]), targets=["tflite"], data=data, task="regression",
                       dynamic_shapes={"x": {0: Dim("batch", min=1, max=4)}}, out=out)
    return model, data, b


def _dynamic_rows(result: dict) -> list[dict]:
    return result["dynamic"]["sizes"]


def test_export_passes_at_every_size_of_the_range(bundle):
    _, _, b = bundle
    res = b.results["tflite"]
    assert res.status == "pass", b.report["targets"]["tflite"]
    report = json.loads((b.path / "report.json").read_text())
    tfl = report["targets"]["tflite"]
    assert tfl["status"] == "pass"
    rows = _dynamic_rows(tfl)
    assert [r["sizes"] for r in rows] == [{"batch": 1}, {"batch": 2}, {"batch": 4}]
    for r in rows:
        assert r["status"] == "pass", r
        assert r["max_abs"] is not None and r["max_abs"] < 1e-4, r
        assert r["cosine_min"] > 0.9999, r
    assert tfl["dynamic"]["failures"] == [] and tfl["dynamic"]["errors"] == []


def test_manifest_records_the_range_and_the_files_dynamic_axis(bundle):
    _, _, b = bundle
    (art,) = [a for a in b.manifest["artifacts"] if a["target"] == "tflite"]
    meta = art["meta"]
    assert meta["dynamic"] == [{"name": "batch", "min": 1, "max": 4, "step": 1, "axes": [{"input": "x", "axis": 0}]}]
    (x,) = meta["inputs"]
    assert x["shape"] == [1, 3, 32, 32] and x["shape_signature"] == [-1, 3, 32, 32]


def test_runner_resizes_to_each_batch_and_refuses_sizes_outside_the_range(bundle):
    model, data, b = bundle
    (entry,) = [a for a in b.manifest["artifacts"] if a["target"] == "tflite"]
    run = CONVERTER.runner(Artifact.from_dict(entry), b.path)
    for batch in (3, 1, 4, 2, 4):  # up and down, and a repeat without a resize
        x = np.concatenate(data[:batch], axis=0)
        (y,) = run([x])
        want = model(torch.from_numpy(x)).detach().numpy()
        assert y.shape == (batch, 5)
        assert np.abs(y - want).max() < 1e-4
    for bad in (np.concatenate(data[:5], axis=0), data[0][:, :, :16, :16]):
        with pytest.raises(UserError) as err:
            run([bad])
        assert err.value.code == "E-DATA-SHAPE"


def test_verify_passes_at_every_size(bundle):
    _, _, b = bundle
    v = edgekit.verify(b.path)
    assert v.results["tflite"].status == "pass", v.report["targets"]["tflite"]
    rows = _dynamic_rows(v.report["targets"]["tflite"])
    assert [r["sizes"] for r in rows] == [{"batch": 1}, {"batch": 2}, {"batch": 4}]
    assert all(r["status"] == "pass" and r["max_abs"] < 1e-4 for r in rows), rows


def test_a_reshape_of_a_dynamic_size_is_reported_by_op(tmp_path):
    """litert-torch 0.10.0 cannot lower a view to a size computed from a dynamic dim: the target is
    unsupported, naming the op, not a generic failure."""

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4 * 8, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    data = [np.random.default_rng(k).standard_normal((1, 4, 8)).astype(np.float32) for k in range(4)]
    b = edgekit.export(Flat().eval(), torch.from_numpy(data[0]), targets=["tflite"], data=data, task="regression",
                       dynamic_shapes={"x": {0: Dim("batch", min=1, max=4)}}, out=tmp_path / "b")
    res = b.report["targets"]["tflite"]
    assert res["status"] == "unsupported", res
    assert res["error"]["code"] == "E-OP-UNSUPPORTED" and res["error"]["op"] == "aten.view.default", res["error"]
    assert "dynamic dimension" in res["error"]["fix"] and "fixed shape" in res["error"]["fix"]
