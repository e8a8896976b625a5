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
    assert lo == -hi
    assert 2.5 < hi < float(np.abs(x).max())


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
