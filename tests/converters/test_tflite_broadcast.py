"""An explicit expand feeding a broadcasting op (timm MobileViTv2's ``F.relu(value) *
context.expand_as(value)``): litert-torch refuses it in FP32 ("tfl.mul: operands don't have
broadcast-compatible shapes") and writes a BROADCAST_TO that cannot prepare in INT8. edgekit drops
such expands (converters/tflite/broadcast.py) and the files verify; an expand that really changes a
shape stays."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("litert_torch")

import edgekit  # noqa: E402
from edgekit.converters.tflite.broadcast import drop_broadcast_expands  # noqa: E402


class ExpandedGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.value, self.gate, self.out = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, (1, 16)), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        v = self.value(x)
        context = torch.sigmoid(self.gate(x))  # (1, 8, 4, 1)
        return self.out(F.relu(v) * context.expand_as(v))


def _samples(n=12):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 8, 4, 16)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_expand_before_a_broadcasting_op_exports_and_verifies(tmp_path, quant):
    torch.manual_seed(0)
    data = _samples()
    bundle = edgekit.export(ExpandedGate().eval(), (torch.from_numpy(data[0]),), targets=["tflite"], data=data,
                            quant=quant, samples=8, out=tmp_path / "b", task="regression")
    r = bundle.results["tflite"]
    assert r.status == "pass", (r.status, r.error, r.failures)
    if quant == "int8":  # the convert_pt2e program is rewritten before converting
        assert any("expand before a broadcasting op dropped x1" in n for n in r.notes), r.notes
    else:  # the converter refused the module: exported again without the expand
        manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert manifest["artifacts"][0]["meta"]["traced_rewrites"] == [
            "expand before a broadcasting op dropped (torch.export, then converted again)"]


class RealExpand(nn.Module):
    def forward(self, x, y):  # x (1, 1, 4, 16), y (1, 8, 4, 1): the expand makes a shape neither has
        return x.expand(1, 8, 4, 16) * y


def test_an_expand_that_changes_the_result_shape_stays():
    x, y = torch.randn(1, 1, 4, 16), torch.randn(1, 8, 4, 1)
    gm = torch.export.export(RealExpand(), (x, y)).module()
    assert drop_broadcast_expands(gm) == 0
    gm = torch.export.export(ExpandedGate().eval(), (torch.randn(1, 8, 4, 16),)).module()
    assert drop_broadcast_expands(gm) == 1
