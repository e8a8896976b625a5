"""Conv subclasses with a forward of their own (TF "SAME" padding, then the conv, as in EfficientNet-Lite)
made plain for the FX INT8 paths (edgekit.quant.plain_layers): the model computes the same, BatchNorm
folds into them on ptl, and ncnn quantizes their convolutions instead of leaving them float."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.quant.plain_layers import plain_layers
from photos import photo_array

CALIB = Path(__file__).resolve().parents[2] / "calibration_data"


class SameConv2d(nn.Conv2d):
    """TF "SAME" padding for one input size, then the conv (the EfficientNet-Lite pattern)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, size=32):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2) * 2)

    def forward(self, x):
        return super().forward(self.static_padding(x))


class Untraceable(nn.Conv2d):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
            return super().forward(x)
        return super().forward(-x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(SameConv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU6())
        self.dw = nn.Sequential(SameConv2d(8, 8, 3, 1, groups=8, size=16), nn.BatchNorm2d(8), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, image):
        return self.fc(self.pw(self.dw(self.stem(image))).mean((2, 3)))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # BatchNorm statistics of the photos, as a trained model would have
        net.train()
        net(torch.from_numpy(photo_array(CALIB, 32, 16)))
    return net.eval()


def test_plain_layers_compute_the_same_and_let_batchnorm_fold():
    from torch.fx.experimental.optimization import fuse

    net = _net()
    plain, names = plain_layers(net)
    assert names == ["stem.0", "dw.0"]
    x = torch.from_numpy(photo_array(CALIB, 32, 4))
    with torch.no_grad():
        assert torch.equal(plain(x), net(x))
        fused = fuse(torch.fx.symbolic_trace(plain))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
        assert torch.allclose(fused(x), net(x), atol=1e-5)
        unfused = fuse(torch.fx.symbolic_trace(net))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unfused.modules()) == 2  # why it matters: FX inlines subclasses
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in net.parameters())


def test_a_subclass_fx_cannot_trace_is_left_as_it_is():
    model = nn.Sequential(Untraceable(3, 4, 3), nn.ReLU())
    plain, names = plain_layers(model)
    assert names == [] and type(plain[0]) is Untraceable


def test_ptl_folds_batchnorm_into_subclassed_convs():
    from converters.ptl.quant import quantize
    from edgekit.quant.recipe import QuantRecipe

    samples = [(a[None],) for a in photo_array(CALIB, 32, 16)]
    q = quantize(_net(), (torch.from_numpy(samples[0][0]),), samples, QuantRecipe())
    ops = [str(n.target) for n in q.module.graph.nodes]
    assert not any("batch_norm" in o for o in ops) and not any(
        isinstance(m, nn.BatchNorm2d) for m in q.module.modules())
    assert any("plain layers" in n for n in q.notes)


@pytest.mark.slow
def test_ncnn_int8_quantizes_subclassed_convs(tmp_path):
    import edgekit

    data = photo_array(CALIB, 32, 24)
    b = edgekit.export(_net(), torch.from_numpy(data[:1]), targets="ncnn", data=data, quant="int8", out=tmp_path / "b")
    assert b.passed, b.report["targets"]
    art = next(a for a in json.loads((b.path / "manifest.json").read_text())["artifacts"] if a["target"] == "ncnn")
    layers = art["meta"]["int8_layers"]
    assert len(layers) == 4  # two subclassed convs, the plain 1x1 conv and the classifier
    assert {q["op"] for q in layers} >= {"Convolution", "ConvolutionDepthWise", "InnerProduct"}
    assert np.isfinite(b.results["ncnn"].raw["compression"]["output"]["sqnr_db"])


class SharedAct(nn.Module):
    """EfficientNet-Lite's block: one ReLU6 module called after two BatchNorms, outside any Sequential."""

    def __init__(self):
        super().__init__()
        self.conv0, self.bn0 = SameConv2d(3, 8, 3, 2), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = SameConv2d(8, 8, 3, 1, groups=8, size=16), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(8, 5)

    def forward(self, image):
        x = self.act(self.bn0(self.conv0(image)))
        x = self.act(self.bn1(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def test_ptl_fuses_a_shared_relu6_called_after_batchnorm():
    """Each call site of the shared ReLU6 fuses into its conv (range capped at 6): unfused, the ReLU6
    input was quantized over BatchNorm's whole output range (EfficientNet-Lite0 ptl: 5.5 -> 13.8 dB)."""
    from converters.ptl.quant import quantize
    from edgekit.quant.recipe import QuantRecipe

    torch.manual_seed(0)
    model = SharedAct().eval()
    samples = [(a[None],) for a in photo_array(CALIB, 32, 16)]
    q = quantize(model, (torch.from_numpy(samples[0][0]),), samples, QuantRecipe())
    assert any(n.startswith("1 conv+ReLU6 fused") for n in q.notes), q.notes
    assert not any("contiguous copy" in n for n in q.notes)
    assert not any("hardtanh" in str(n.target) for n in q.module.graph.nodes)
