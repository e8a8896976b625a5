"""INT8 of a model doing integer index arithmetic, as transformers' attention-mask code does
(``arange(L) + offset`` used to index the mask): the quantizer must not turn it into float."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import edgekit

pytest.importorskip("executorch.exir")


class OffsetIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(100, 16), nn.Linear(16, 4)

    def forward(self, ids, mask):
        keys = torch.arange(ids.shape[1]) + 1  # int64 + a Python int: an integer add
        keep = mask.bool()[:, keys - 1]  # an index built from it
        h = self.embed(ids) * keep.unsqueeze(-1).to(torch.float32)
        return self.head(h * 2)  # a float scalar multiply stays float


def test_integer_add_of_a_scalar_stays_integer_in_executorch_int8(tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = []
    for i in range(16):
        mask = np.ones((1, 8), np.int64)
        mask[0, 8 - i % 5:] = 0
        data.append((rng.integers(0, 100, (1, 8)).astype(np.int64), mask))
    example = tuple(torch.from_numpy(a) for a in data[0])
    bundle = edgekit.export(OffsetIndex().eval(), example, targets=["executorch"], data=data, quant="int8",
                            out=tmp_path / "b")
    r = bundle.results["executorch"]
    assert r.status == "pass", (r.status, r.error, r.failures)
    assert r.raw["compression"]["output"]["sqnr_db"] > 20


class ScaledGate(nn.Module):
    """A sigmoid gate times a Python int (box-regression style): the quantizer makes the 24 an int64
    constant, and TFLite's LOGISTIC only takes its fixed output scale 1/256."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, 2, 1), nn.Linear(8, 6)

    def forward(self, image):
        h = torch.relu(self.conv(image)).mean((2, 3))
        return torch.sigmoid(self.head(h)) * 24


def test_float_scalar_constants_and_fixed_sigmoid_range_in_tflite_int8(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from edgekit.inspect import inspect_artifact

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    bundle = edgekit.export(ScaledGate().eval(), (torch.from_numpy(data[0]),), targets=["tflite"], data=data,
                            quant="int8", out=tmp_path / "b")  # was: "histogram_cpu" not implemented for 'Long'
    r = bundle.results["tflite"]
    assert r.status == "pass", (r.status, r.error, r.failures)
    # the reference kernels refuse a LOGISTIC whose output scale is not 1/256 (a calibrated range was)
    res = inspect_artifact(tmp_path / "b" / r.raw["file"])
    assert "LOGISTIC" in [op["op"] for op in res.ops]
