import math

import numpy as np
import pytest

from edgekit.converters.base import FP32_TOLERANCE, Tolerance
from edgekit.parity import check, compare, output_metrics


def test_exact_outputs_pass_with_infinite_sqnr():
    ref = np.random.default_rng(0).normal(size=(4, 1, 10)).astype(np.float32)
    m = output_metrics("logits", ref, ref.copy(), classification=True)
    assert m.max_abs == 0 and math.isinf(m.sqnr_db) and m.cosine_min == pytest.approx(1.0) and m.top1_agreement == 1.0
    assert check(m, FP32_TOLERANCE) == []


def test_metrics_values_are_the_textbook_ones():
    ref = np.array([[[3.0, 4.0]], [[1.0, 0.0]]])
    got = np.array([[[3.0, 4.1]], [[0.0, 1.0]]])
    m = output_metrics("y", ref, got, classification=True)
    assert m.max_abs == pytest.approx(1.0)
    assert m.mean_abs == pytest.approx((0 + 0.1 + 1 + 1) / 4)
    assert m.cosine_min == pytest.approx(0.0, abs=1e-12)  # second sample is orthogonal
    signal, noise = 9 + 16 + 1, 0.01 + 1 + 1
    assert m.sqnr_db == pytest.approx(10 * math.log10(signal / noise))
    assert m.top1_agreement == 0.5


def test_every_failed_criterion_is_reported():
    ref = np.random.default_rng(1).normal(size=(8, 1, 10))
    got = ref.copy()
    got[0, 0, :] = -got[0, 0, :]  # one sample flipped: max error, cosine and top-1 all fail
    res = compare("onnx", "fp32", [ref], [got], ["logits"], FP32_TOLERANCE, classification=True)
    assert res.status == "fail"
    assert len(res.failures) == 3
    assert any("max abs error" in f for f in res.failures)
    assert any("cosine" in f for f in res.failures)
    assert any("top-1" in f for f in res.failures)


def test_small_relative_error_passes_and_larger_fails():
    ref = np.random.default_rng(2).normal(size=(8, 1, 100)) * 10
    scale = np.abs(ref).max()
    ok = compare("t", "fp32", [ref], [ref + 0.5e-4 * scale], ["o"], FP32_TOLERANCE, True)
    bad = compare("t", "fp32", [ref], [ref + 3e-4 * scale], ["o"], FP32_TOLERANCE, True)
    assert ok.status == "pass" and bad.status == "fail"


def test_embedding_outputs_have_no_top1_and_shape_mismatch_fails():
    ref = np.ones((2, 1, 4))
    res = compare("t", "fp32", [ref], [ref], ["e"], FP32_TOLERANCE, classification=False)
    assert res.status == "pass" and res.outputs[0].top1_agreement is None
    res = compare("t", "fp32", [ref], [np.ones((2, 1, 5))], ["e"], Tolerance(1, 0, 0), False)
    assert res.status == "fail" and "shape" in res.failures[0]


def test_result_serialises_inf_as_string():
    import json

    ref = np.ones((2, 1, 3))
    d = compare("t", "fp32", [ref], [ref], ["e"], FP32_TOLERANCE, False).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["metrics"]["sqnr_db"] == "inf"


def test_a_quantized_output_within_its_step_bound_passes_whatever_its_range():
    """Issue 13: a near-constant output 1 step off must not be failed by the relative bound."""
    from edgekit.converters.base import INT8_END_TO_END_TOLERANCE as tol
    from edgekit.parity import check, output_metrics

    step = 0.02
    ref = np.full((8, 1, 10), 0.04, np.float32)
    ref[:, 0, 3] += 0.002  # near-constant logits: top-1 decided by noise
    got = ref + step * np.random.default_rng(0).choice([-1, 0, 1], ref.shape)
    m = output_metrics("logits", ref, got, True, step)
    assert m.max_steps <= 1.0 + 1e-6 and m.max_abs_rel > tol.max_abs_rel  # the relative bound alone would fail it
    assert check(m, tol) == []
    bad = output_metrics("logits", ref, ref + 40 * step, True, step)
    assert any("steps" in f for f in check(bad, tol)) and len(check(bad, tol)) >= 2  # beyond: every criterion listed
