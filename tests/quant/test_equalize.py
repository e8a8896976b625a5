"""Cross-layer equalization: exact on ReLU networks, equal per-channel weight ranges afterwards."""
from __future__ import annotations

import copy

import torch
from torch import nn

from edgekit.quant.equalize import equalize


def _block():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()),
                      nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        m[0].weight[2] *= 40.0  # one channel with a 40x larger range
        for bn in (m[1], m[3][1]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return m.eval()


def test_equalize_keeps_a_relu_network_exact_and_equalizes_ranges():
    m = _block()
    x = torch.randn(2, 3, 8, 8)
    e = copy.deepcopy(m)
    assert equalize(e) == 2  # conv -> dw, dw -> pointwise (through the nested Sequential)
    torch.testing.assert_close(e(x), m(x), rtol=1e-4, atol=1e-4)
    r1 = e[0].weight.abs().reshape(8, -1).amax(1)
    r2 = e[3][0].weight.abs().reshape(8, -1).amax(1)
    assert torch.allclose(r1, r2, rtol=0.05)  # s_i = sqrt(r1/r2): equal ranges (the depthwise is in two pairs: iterated)
    assert isinstance(e[1], nn.Identity)  # BatchNorm folded


def test_relu6_between_a_pair_becomes_relu():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 2, 1)).eval()
    assert equalize(m) == 1 and isinstance(m[1], nn.ReLU)
