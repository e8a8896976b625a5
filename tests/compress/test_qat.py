"""QAT-style distillation: a fake-quant student (int8 per-channel weights, per-tensor inputs) learns
from the FP32 teacher; gradients reach the student only; stripping gives back a plain float model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.compress.distill import Distiller, KDConfig
from edgekit.compress.qat import FakeQuantLayer, QATConfig, _weight_fq, fake_quant, strip_fake_quant
from edgekit.compress.train import TrainConfig, fit
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.model_source import load_model


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny_cnn")
    data = load_samples(loaded.default_data, loaded.spec)
    return loaded, [(torch.from_numpy(s[0][0]),) for s in data.samples]  # real photos, no batch dim


def test_weights_land_on_the_int8_per_channel_grid():
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    q = _weight_fq(w)
    scale = w.abs().reshape(6, -1).amax(1) / 127
    steps = q / scale[:, None, None, None]
    assert torch.allclose(steps, steps.round(), atol=1e-3) and steps.abs().max() <= 127 + 1e-3
    assert 0 < float((q - w).abs().max()) <= float(scale.max()) / 2 + 1e-6  # rounding error at most half a step


def test_fake_quant_student_learns_from_fp32_teacher_with_gradients_on_student_only(tiny):
    loaded, samples = tiny
    teacher = loaded.module.eval()
    student = fake_quant(teacher, QATConfig())
    assert sum(isinstance(m, FakeQuantLayer) for m in student.modules()) == 6  # 5 convs + classifier
    with torch.no_grad():
        for m in student.modules():  # perturb the student so there is something to learn
            if isinstance(m, FakeQuantLayer):
                m.layer.weight.mul_(0.6)
    distiller = Distiller(teacher, student, KDConfig(temperature=2.0, alpha=1.0), (samples[0][0][None],))
    losses = fit(distiller, samples, lambda d, batch: d(*batch), TrainConfig(epochs=8, batch_size=16, lr=3e-3, schedule="constant"))
    assert len(losses) == 24
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    fq = [m for m in student.modules() if isinstance(m, FakeQuantLayer)]
    assert all(bool(m.observed) and m.act_max > m.act_min for m in fq)  # input ranges were observed
    plain = strip_fake_quant(student)
    assert not any(isinstance(m, FakeQuantLayer) for m in plain.modules())
    assert isinstance(plain.classifier, nn.Linear) and plain.classifier.weight is fq[-1].layer.weight


def test_unknown_or_wrong_layer_is_coded(tiny):
    loaded, _ = tiny
    with pytest.raises(UserError) as e:
        fake_quant(loaded.module, QATConfig(layers=("nope",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "nope" in str(e.value)
    with pytest.raises(UserError) as e:
        fake_quant(loaded.module, QATConfig(layers=("stem.1",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "BatchNorm2d" in str(e.value)
    with pytest.raises(UserError) as e:
        QATConfig(momentum=0.0)
    assert e.value.code == "E-COMPRESS-CONFIG"
