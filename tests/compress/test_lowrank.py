"""Low-rank SVD: the reconstruction error equals the discarded singular values' energy; ranks follow
the energy threshold or the parameter budget; 1x1 convs too; coded errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.compress.lowrank import LowRankConfig, choose_rank, factorise_matrix, low_rank
from edgekit.errors import UserError


def test_reconstruction_error_equals_discarded_energy():
    torch.manual_seed(0)
    w = torch.randn(40, 24, dtype=torch.float64)
    s = torch.linalg.svdvals(w)
    for rank in (1, 5, 12, 23):
        a, b, _ = factorise_matrix(w, rank)
        err = float(((w - a @ b) ** 2).sum())
        assert err == pytest.approx(float((s[rank:] ** 2).sum()), rel=1e-9)


def test_rank_from_energy_and_from_budget():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, (4, 4), LowRankConfig(energy=0.72)) == 1
    assert choose_rank(s, (4, 4), LowRankConfig(energy=0.73)) == 2
    assert choose_rank(torch.ones(60), (100, 60), LowRankConfig(energy=None, param_ratio=0.5)) == int(0.5 * 6000 / 160)


def test_low_rank_linear_and_1x1_conv_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4, 128), nn.ReLU(), nn.Linear(128, 10))
    x = (torch.randn(1, 16, 2, 2),)
    res = low_rank(model, x, LowRankConfig(energy=None, param_ratio=0.25))
    assert set(res.layers) == {"0", "3", "5"}
    assert res.size.after.params < 0.4 * res.size.before.params and res.size.after.macs < res.size.before.macs
    lin = model[3].weight.detach()
    f = res.model[3]
    err = float(((f[1].weight @ f[0].weight - lin) ** 2).sum())
    assert err == pytest.approx(res.layers["3"].discarded_energy, rel=1e-4)
    assert res.model(*x).shape == (1, 10)
    # Full energy kept -> same function.
    exact = low_rank(model, x, LowRankConfig(energy=0.999999))
    assert torch.allclose(exact.model(*x), model(*x), atol=1e-4)


def test_bad_low_rank_input_is_coded():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())
    with pytest.raises(UserError) as e:
        low_rank(model, (torch.randn(1, 3, 5, 5),), LowRankConfig(layers=("0",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "1x1" in str(e.value)
    with pytest.raises(UserError) as e:
        low_rank(model, (torch.randn(1, 3, 5, 5),), LowRankConfig(layers=("fc",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "'fc'" in str(e.value)
    with pytest.raises(UserError) as e:
        LowRankConfig(energy=1.0)
    assert e.value.code == "E-COMPRESS-CONFIG"
