"""Knowledge distillation: Hinton loss values, gradients on the student only, feature projections."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.compress.distill import Distiller, KDConfig, kd_loss
from edgekit.errors import UserError


def _mlp(width, out=5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, out))


def test_kd_loss_matches_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    y = torch.tensor([1])
    cfg = KDConfig(temperature=2.0, alpha=0.75)
    ps, pt = F.softmax(s / 2, -1), F.softmax(t / 2, -1)
    kl = float((pt * (pt.log() - ps.log())).sum())
    ce = float(-F.log_softmax(s, -1)[0, 1])
    assert math.isclose(float(kd_loss(s, t, y, cfg)), 0.75 * 4 * kl + 0.25 * ce, rel_tol=1e-5)
    assert float(kd_loss(t, t, None, cfg)) == pytest.approx(0.0, abs=1e-6)


def test_gradients_reach_the_student_only():
    teacher, student = _mlp(32, seed=0), _mlp(8, seed=1)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    d = Distiller(teacher, student, KDConfig(), (x[:1],))
    d(x, labels=y).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert {id(p) for p in d.parameters()} == {id(p) for p in student.parameters()}  # teacher not a submodule


def test_feature_distillation_learns_a_projection_when_widths_differ():
    teacher, student = _mlp(32, seed=0), _mlp(8, seed=1)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    d = Distiller(teacher, student, KDConfig(feature_pairs=(("1", "1"),), feature_weight=1.0), (x[:1],))
    assert isinstance(d.projections[0], nn.Linear) and d.projections[0].weight.shape == (32, 8)
    base = float(kd_loss(student(x), teacher(x), y, KDConfig()).detach())
    loss = d(x, labels=y)
    assert float(loss) > base  # the feature term is added
    loss.backward()
    assert d.projections[0].weight.grad.abs().sum() > 0


def test_output_mismatch_is_coded():
    with pytest.raises(UserError) as e:
        Distiller(_mlp(16, out=5), _mlp(8, out=3), KDConfig(), (torch.randn(1, 8),))
    assert e.value.code == "E-COMPRESS-MISMATCH" and "(1, 3)" in str(e.value) and "(1, 5)" in str(e.value)


def test_unknown_feature_layer_is_coded():
    with pytest.raises(UserError) as e:
        Distiller(_mlp(16), _mlp(8), KDConfig(feature_pairs=(("layer9", "1"),)), (torch.randn(1, 8),))
    assert e.value.code == "E-COMPRESS-LAYER" and "layer9" in str(e.value)


@pytest.mark.parametrize("kw", [{"temperature": 0.0}, {"alpha": 1.5}])
def test_bad_kd_settings_are_coded(kw):
    with pytest.raises(UserError) as e:
        KDConfig(**kw)
    assert e.value.code == "E-COMPRESS-CONFIG"
