"""edgekit's calibrators on known distributions: ranges, clipping behaviour, determinism."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.errors import UserError
from edgekit.quant import CALIBRATORS, QuantRecipe, TensorStatsCollector, qparams
from edgekit.quant import calibrators as C


def stats_of(*chunks, bins=2048):
    col = TensorStatsCollector(bins)
    for x in chunks:
        col.observe("t", x)
    col.next_phase()
    for x in chunks:
        col.observe("t", x)
    return col.stats()["t"]


@pytest.fixture(scope="module")
def heavy():
    """Student-t with 2 degrees of freedom: a bulk near 0 and rare huge outliers."""
    return np.random.default_rng(0).standard_t(2, size=200_000).astype(np.float32)


def test_minmax_is_exact(heavy):
    s = stats_of(heavy)
    assert C.minmax(s, QuantRecipe()) == (float(heavy.min()), float(heavy.max()))


def test_percentile_clips_outliers():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, 100_000).astype(np.float32)
    x[:5] = [50, -40, 30, 45, -60]  # 5 outliers in 100k = 0.005 % per side at most
    s = stats_of(x)
    lo, hi = C.percentile(s, QuantRecipe(calibrator="percentile", percentile=99.99))
    assert -1.1 < lo < -0.9 and 0.9 < hi < 1.1  # outliers clipped, bulk kept
    lo, hi = C.percentile(s, QuantRecipe(calibrator="percentile", percentile=100.0))
    assert (lo, hi) == (-60.0, 50.0)  # 100 % keeps everything


def test_percentile_on_relu_output_keeps_zero():
    x = np.abs(np.random.default_rng(2).standard_normal(100_000)).astype(np.float32)
    lo, hi = C.percentile(stats_of(x), QuantRecipe(percentile=99.9))
    assert lo == 0.0
    assert 3.0 < hi < 3.6  # the 99.9 % point of |N(0,1)| is 3.29


def test_mse_and_entropy_shrink_heavy_tails(heavy):
    s = stats_of(heavy)
    mm_lo, mm_hi = C.minmax(s, QuantRecipe())
    for name in ("mse", "entropy"):
        lo, hi = CALIBRATORS[name](s, QuantRecipe())
        assert hi - lo < 0.8 * (mm_hi - mm_lo), name
        assert lo < -5 and hi > 5, name  # still covers the bulk


def test_mse_lowers_expected_error(heavy):
    s = stats_of(heavy)
    e_minmax = C._expected_sq_error(s, *C.minmax(s, QuantRecipe()))
    e_mse = C._expected_sq_error(s, *C.mse(s, QuantRecipe()))
    assert e_mse < 0.8 * e_minmax


def test_mse_keeps_full_range_of_uniform_data():
    x = np.random.default_rng(3).uniform(-2, 2, 100_000).astype(np.float32)
    lo, hi = C.mse(stats_of(x), QuantRecipe())
    assert lo < -1.9 and hi > 1.9  # nothing to clip: clipping uniform data only adds error


def test_entropy_on_gaussian():
    x = np.random.default_rng(4).standard_normal(200_000).astype(np.float32)
    lo, hi = C.entropy(stats_of(x), QuantRecipe())
    t = max(-lo, hi)  # one threshold T on |x|, cut to the observed range on each side
    assert lo == max(-t, float(x.min())) and hi == min(t, float(x.max()))
    assert 3.0 < t < float(np.abs(x).max())


def test_every_calibrator_is_deterministic_and_chunking_independent(heavy):
    whole = stats_of(heavy)
    parts = stats_of(*np.split(heavy, 8))
    assert np.array_equal(whole.counts, parts.counts)
    for name, fn in CALIBRATORS.items():
        r = QuantRecipe(calibrator=name)
        assert fn(whole, r) == fn(parts, r) == fn(stats_of(heavy), r), name


def test_constant_and_empty_tensors():
    s = stats_of(np.zeros(100, np.float32))
    for name, fn in CALIBRATORS.items():
        lo, hi = fn(s, QuantRecipe())
        assert lo == 0.0 and hi == 0.0, name
    assert qparams(0.0, 0.0)[0] == 2.0 ** -12


def test_qparams_match_the_int8_grid():
    scale, zp = qparams(-1.0, 3.0)
    assert scale == pytest.approx(4.0 / 255)
    assert zp == -128 + round(1.0 / scale)
    assert round(0.0 / scale) + zp == zp  # 0 is exact
    scale, zp = qparams(0.0, 6.0)
    assert zp == -128


def test_unknown_calibrator_names_the_choices():
    with pytest.raises(UserError) as e:
        C.get("kl")
    assert e.value.code == "E-ARGS"
    for name in ("minmax", "percentile", "entropy", "mse"):
        assert name in e.value.fix


def test_entropy_ignores_the_spike_of_exact_zeros():
    """ReLU output = half exact zeros + |N(0,1)|. 0 is an exact int8 level, so the zeros must not
    move the KL threshold: it must equal the threshold of |N(0,1)| alone (the textbook algorithm
    smeared the spike over the first level and halved the range: 2.2 instead of ~4)."""
    rng = np.random.default_rng(5)
    g = np.abs(rng.standard_normal(200_000)).astype(np.float32)
    relu = np.concatenate([g, np.zeros(200_000, np.float32)])
    relu90 = np.concatenate([g, np.zeros(1_800_000, np.float32)])
    _, t_abs = C.entropy(stats_of(g), QuantRecipe())
    for x in (relu, relu90):
        lo, t = C.entropy(stats_of(x), QuantRecipe())
        assert lo == 0.0
        assert abs(t - t_abs) < 0.05 * t_abs
    assert 3.5 < t_abs < float(g.max())


@pytest.mark.parametrize("zeros", [0, 100_000])
def test_entropy_clips_far_outliers_at_the_bulk_edge(zeros):
    """Known answer: uniform bulk on [0, 1] plus 0.05 % outliers at 3. Clipping inside the bulk
    distorts it; any T between 1 and 3 only moves the outliers into the clip bin; T = 3 spreads the
    bulk over a third of the levels: the minimum is at the bulk's edge. (A clip bin whose group is
    empty must cost a finite amount: the textbook q = 0 there made every T < 3 infinitely bad.)"""
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.uniform(0, 1, 200_000), np.full(100, 3.0), np.zeros(zeros)]).astype(np.float32)
    lo, hi = C.entropy(stats_of(x), QuantRecipe())
    assert lo == 0.0 and 0.98 < hi < 1.05


def test_entropy_keeps_uniform_data_whole():
    for lo0, hi0 in ((0.0, 1.0), (-1.0, 1.0), (-0.1, 10.0)):
        x = np.random.default_rng(7).uniform(lo0, hi0, 200_000).astype(np.float32)
        lo, hi = C.entropy(stats_of(x), QuantRecipe())
        assert lo < lo0 + 0.02 * (hi0 - lo0) and hi > 0.98 * hi0
