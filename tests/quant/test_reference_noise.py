"""The quantized reference's own rounding noise (edgekit.quant.noise): twins of the reference, and the
tolerance they widen. Fast: small programs and synthetic outputs; the verdict on real bundles is in
tests/quant/test_noise_verdict.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.converters.base import INT8_END_TO_END_TOLERANCE as TOL
from edgekit.parity import compare
from edgekit.quant.noise import MARGIN, noise_tolerance, reference_noise, twin, twin_outputs


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.nn.functional.gelu(self.conv(x)).mean((2, 3))).softmax(-1)


def _program():
    x = torch.randn(1, 3, 12, 12)
    return torch.export.export(Small().eval(), (x,)).module(), x


def test_a_twin_is_the_reference_up_to_float_rounding_and_is_deterministic():
    module, x = _program()
    with torch.no_grad():
        plain = module(x).numpy()
        a, b = twin(module, 1)(x)[0].numpy(), twin(module, 1)(x)[0].numpy()
        c = twin(module, 2)(x)[0].numpy()
    assert np.array_equal(a, b)  # the same seed gives the same twin
    assert 0 < np.abs(a - c).max() < 1e-5 and np.abs(a - plain).max() < 1e-5  # moved, by roundings only


def test_reference_noise_of_a_program_without_rounding_boundaries_is_tiny():
    module, x = _program()
    samples = [(np.random.default_rng(i).normal(size=(1, 3, 12, 12)).astype(np.float32),) for i in range(3)]
    noise = reference_noise(module, samples)
    assert noise["samples"] == 3 and noise["max_abs_rel"] < 1e-5 and noise["cosine_min"] > 1 - 1e-9
    assert len(twin_outputs(module, samples, 1)) == 1 and twin_outputs(module, samples, 1)[0].shape == (3, 1, 4)


def _judged(ref, got, steps=None):
    return compare("t", "int8", [ref], [got], ["logits"], TOL, True, [steps] if steps else None)


def test_noise_tolerance_is_margin_times_the_worst_twin_and_never_narrower():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 1, 10)).astype(np.float32)
    near = _judged(ref, ref + 0.001)  # a well-conditioned twin: the fixed bound stays
    assert noise_tolerance(TOL, [near])[0] == TOL
    far = ref + rng.normal(scale=0.3, size=ref.shape).astype(np.float32)
    twin_res = _judged(ref, far)
    wide, task = noise_tolerance(TOL, [near, twin_res])
    worst = twin_res.outputs[0]
    assert wide.max_abs_rel == pytest.approx(MARGIN * worst.max_abs_rel)
    assert wide.min_cosine == pytest.approx(1 - MARGIN * (1 - worst.cosine_min))
    assert wide.min_top1 == pytest.approx(max(0.0, min(TOL.min_top1, 1 - MARGIN * (1 - worst.top1_agreement))))
    assert wide.max_steps == TOL.max_steps  # no output step known: the step bound is not widened


def test_a_fault_beyond_the_noise_still_fails_and_within_it_passes():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(16, 1, 10)).astype(np.float32)
    twins = [_judged(ref, ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)) for _ in range(2)]
    wide, _ = noise_tolerance(TOL, twins)
    like_a_twin = ref + rng.normal(scale=0.05, size=ref.shape).astype(np.float32)
    assert compare("t", "int8", [ref], [like_a_twin], ["logits"], wide, True).status == "pass"
    broken = ref.copy()
    broken[:, :, 3] += 2.0  # one logit shifted: a wrong bias
    res = compare("t", "int8", [ref], [broken], ["logits"], wide, True)
    assert res.status == "fail" and any("max abs error" in f for f in res.failures)


def test_detection_criteria_widen_from_the_twins_own_box_matching():
    """The task criteria (matched boxes, IoU, score error) follow the twins' own matching, not only the
    floors ``task_tolerance`` derives (at least 75% matched, IoU 0.5), which a twin may miss itself."""
    from types import SimpleNamespace

    from edgekit.tasks import task_tolerance

    det = SimpleNamespace(matched_fraction=0.6, label_agreement=0.9, mean_iou=0.8, score_err_rel=0.1)
    wide, task = noise_tolerance(TOL, [SimpleNamespace(outputs=[], detection=det)])
    fixed = task_tolerance(TOL)
    assert wide == TOL  # no per-element output judged: the element-wise bounds stay
    assert task.min_agreement == pytest.approx(1 - MARGIN * 0.4) and task.min_agreement < fixed.min_agreement
    assert task.min_mean_iou == pytest.approx(min(fixed.min_mean_iou, 1 - MARGIN * 0.2))
    assert task.max_score_err_rel == pytest.approx(max(fixed.max_score_err_rel, MARGIN * 0.1))


def test_twins_flip_each_layer_at_its_measured_rate_capped():
    """flip_rates: a per-layer row within 1 step gives its layer's rate (its mean step), capped at
    FLIP_CAP; a row over 1 step gives none (a flagged or faulty layer is not rounding noise). A twin
    with flips moves the outputs; with a rate of 0 it is the plain twin."""
    pytest.importorskip("executorch")
    from edgekit.converters.executorch import CONVERTER
    from edgekit.quant import QuantRecipe
    from edgekit.quant.noise import FLIP_CAP, flip_rates
    from edgekit.quant.per_layer import producer, q_nodes
    from edgekit.quant.pt2e import quantize

    samples = [(np.random.default_rng(i).normal(size=(1, 3, 12, 12)).astype(np.float32),) for i in range(4)]
    q = quantize(Small().eval(), (torch.from_numpy(samples[0][0]),), samples, QuantRecipe(), CONVERTER.pt2e_quantizer(),
                 fold_quantize=True)
    layers = [(n, producer(n).name) for n in q_nodes(q.module) if producer(n).op != "placeholder"]
    (conv_q, conv), (mean_q, mean) = layers[0], layers[1]  # the conv, then the pooled features
    rates = flip_rates(q.module, [{"layer": mean, "max_steps": 1.0, "mean_steps": 0.5},
                                  {"layer": conv, "max_steps": 3.0, "mean_steps": 0.01}])
    assert rates == {mean_q.name: FLIP_CAP}
    x = torch.from_numpy(samples[1][0])
    with torch.no_grad():
        plain = twin(q.module, 1, 0.0)(x)[0]
        assert torch.equal(twin(q.module, 1, 0.0, {mean_q.name: 0.0})(x)[0], plain)
        assert not torch.equal(twin(q.module, 1, 0.0, {mean_q.name: 0.5})(x)[0], plain)  # 8 features, half moved
