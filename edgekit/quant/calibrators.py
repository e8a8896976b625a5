"""Activation calibrators: from the values one tensor took on the calibration set to its int8 range.

Implemented once here and used by every target. Each calibrator reads a ``TensorStats`` (exact
min/max plus a fixed-range histogram, collected in two passes by ``TensorStatsCollector``) and
returns a clipping range (lo, hi) with lo <= 0 <= hi. Everything is integer counting and float64
arithmetic on fixed bin edges, so the same data gives the same range, bit for bit.

Registry: ``CALIBRATORS`` names the valid choices; ``get`` raises a coded error naming them.
``calibrate_ranges`` is the two-pass loop every target's calibration runs through.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Mapping

import numpy as np

from edgekit.errors import UserError

QMIN, QMAX = -128, 127  # int8 activations
LEVELS = QMAX - QMIN  # 255 steps between the ends of the range


@dataclass
class TensorStats:
    """What one activation tensor looked like on the calibration set.

    counts: histogram over [-m, m] with 2 * bins bins, m = max(|lo|, |hi|) (edges = ``edges``).
    """

    lo: float
    hi: float
    counts: np.ndarray = field(repr=False)

    @property
    def m(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.m, self.m, len(self.counts) + 1, dtype=np.float64)

    @property
    def centers(self) -> np.ndarray:
        e = self.edges
        return (e[:-1] + e[1:]) / 2

    def folded(self) -> np.ndarray:
        """Histogram of |x| over [0, m] with ``bins`` bins (bin k of both signs added)."""
        half = len(self.counts) // 2
        return self.counts[half:] + self.counts[:half][::-1]


class TensorStatsCollector:
    """Two passes over the calibration set: pass 1 exact min/max per tensor, pass 2 a histogram on
    the range found in pass 1. ``observe(name, tensor)`` is all a target's hook needs to call."""

    def __init__(self, bins: int):
        self.bins = bins
        self.phase = 1
        self.minmax: dict[str, list[float]] = {}
        self.counts: dict[str, np.ndarray] = {}

    def observe(self, name: str, x) -> None:
        a = x.detach().float().cpu().numpy() if hasattr(x, "detach") else np.asarray(x, np.float32)
        if a.size == 0:
            return
        if self.phase == 1:
            lo, hi = float(a.min()), float(a.max())
            cur = self.minmax.setdefault(name, [lo, hi])
            cur[0], cur[1] = min(cur[0], lo), max(cur[1], hi)
            return
        lo, hi = self.minmax[name]
        m = max(abs(lo), abs(hi))
        if m == 0.0:
            m = 1.0
        h, _ = np.histogram(a.astype(np.float64, copy=False), bins=2 * self.bins, range=(-m, m))
        self.counts[name] = self.counts.get(name, 0) + h.astype(np.int64)

    def next_phase(self) -> None:
        self.phase = 2

    def stats(self) -> dict[str, TensorStats]:
        out = {}
        for name, (lo, hi) in self.minmax.items():
            counts = self.counts.get(name)
            if counts is None:
                counts = np.zeros(2 * self.bins, np.int64)
            out[name] = TensorStats(lo, hi, counts)
        return out


def _bounded(lo: float, hi: float, s: TensorStats) -> tuple[float, float]:
    """Keep a range within the observed values and around 0 (0 must be exactly representable)."""
    lo, hi = max(float(lo), s.lo), min(float(hi), s.hi)
    return min(lo, 0.0), max(hi, 0.0)


def minmax(s: TensorStats, recipe) -> tuple[float, float]:
    return _bounded(s.lo, s.hi, s)


def percentile(s: TensorStats, recipe) -> tuple[float, float]:
    """Clip both tails at ``recipe.percentile`` (e.g. 99.99: the 0.01 % most extreme values of each side)."""
    total = int(s.counts.sum())
    if total == 0:
        return minmax(s, recipe)
    tail = total * (100.0 - recipe.percentile) / 100.0
    edges = s.edges
    cdf = np.cumsum(s.counts)
    # hi: right edge of the first bin where the mass above it is <= tail; lo likewise from below
    above = total - cdf
    k_hi = int(np.argmax(above <= tail))
    below = np.concatenate(([0], cdf[:-1]))
    k_lo = int(len(below) - 1 - np.argmax((below <= tail)[::-1]))
    return _bounded(edges[k_lo], edges[k_hi + 1], s)


def _expected_sq_error(s: TensorStats, lo: float, hi: float) -> float:
    """Expected squared int8 quantization error of the histogram for the range [lo, hi]:
    rounding noise step^2/12 inside, squared clipping distance outside."""
    c, n = s.centers, s.counts
    step = (hi - lo) / LEVELS
    if step <= 0:
        return float(np.dot(n, c * c))
    clip = np.where(c > hi, c - hi, np.where(c < lo, lo - c, 0.0))
    inside = (c >= lo) & (c <= hi)
    return float(np.dot(n, clip * clip) + n[inside].sum() * step * step / 12.0)


def mse(s: TensorStats, recipe) -> tuple[float, float]:
    """The range (the min/max range shrunk by a factor in (0, 1]) minimising the expected squared error."""
    if s.counts.sum() == 0 or s.m == 0.0:
        return minmax(s, recipe)
    lo0, hi0 = minmax(s, recipe)
    best, best_err = (lo0, hi0), None
    for alpha in np.linspace(1.0, 0.02, 197):  # from 1 down: ties keep the wider range
        lo, hi = lo0 * alpha, hi0 * alpha
        err = _expected_sq_error(s, lo, hi)
        if best_err is None or err < best_err * (1 - 1e-12):
            best, best_err = (lo, hi), err
    return _bounded(*best, s)


_KL_EPS = 1e-6  # floor of the normalised q where p > 0


def entropy(s: TensorStats, recipe) -> tuple[float, float]:
    """KL-divergence threshold (TensorRT's calibration): the clip T of |x| whose int8 histogram
    loses the least information; range = [max(lo, -T), min(hi, T)].

    Two details make it a model of edgekit's actual quantizer rather than of a symmetric one:
    - the bin holding 0 is its own group: 0 is an exact int8 level (the zero point), so the spike of
      exact zeros a ReLU produces is not smeared over the first level's bins. Smearing it (the
      textbook algorithm) makes the KL of every wide range look bad and shrank ReLU ranges by 2-8x
      (MobileNetV2: 25 % top-1 agreement instead of 75 %);
    - the number of levels on [0, T] follows the tensor's asymmetry: 255 * m / (hi - lo) (256 for a
      one-signed tensor, 128 for a symmetric one), since activations are asymmetric int8.
    """
    hist = s.folded().astype(np.float64)
    nbins = len(hist)
    if hist.sum() == 0 or s.m == 0.0:
        return minmax(s, recipe)
    span = max(s.hi, 0.0) - min(s.lo, 0.0)
    levels = int(np.clip(round(LEVELS * s.m / span), 128, 256))
    if nbins <= levels:
        return minmax(s, recipe)
    best_i, best_kl = nbins, None
    stride = max(1, (nbins - levels) // 512)
    candidates = list(range(levels, nbins + 1, stride))
    if candidates[-1] != nbins:
        candidates.append(nbins)
    for i in candidates:
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        # quantize hist[:i] to `levels` groups, spread each group's mass over its non-empty bins;
        # bin 0 (holding the exact zeros) is a group of its own
        groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
        groups[0] = levels
        nonzero = (p > 0).astype(np.float64)  # p's support: the clip bin holds the clipped values
        mass = np.bincount(groups, weights=hist[:i], minlength=levels + 1)
        width = np.bincount(groups, weights=nonzero, minlength=levels + 1)
        q = np.where(nonzero > 0, mass[groups] / np.maximum(width[groups], 1.0), 0.0)
        mask = p > 0
        pn = p[mask] / p.sum()
        qn = q[mask] / max(q.sum(), 1e-300)
        qn = np.maximum(qn, _KL_EPS)  # a clip bin whose group is empty: finite, large cost
        kl = float(np.sum(pn * np.log(pn / qn)))
        if best_kl is None or kl < best_kl * (1 - 1e-12):
            best_i, best_kl = i, kl
    t = s.m * best_i / nbins
    return _bounded(-t, t, s)


CALIBRATORS: dict[str, Callable[[TensorStats, object], tuple[float, float]]] = {
    "minmax": minmax,
    "percentile": percentile,
    "entropy": entropy,
    "mse": mse,
}


def get(name: str) -> Callable[[TensorStats, object], tuple[float, float]]:
    try:
        return CALIBRATORS[name]
    except KeyError:
        raise UserError("E-ARGS", f"unknown calibrator {name!r}", f"use one of {', '.join(sorted(CALIBRATORS))}") from None


def qparams(lo: float, hi: float, eps: float = 2.0 ** -12) -> tuple[float, int]:
    """int8 asymmetric (scale, zero_point) of a range, with the formula the PT2E observers use."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / LEVELS, eps)
    zp = int(np.clip(QMIN - np.round(lo / scale), QMIN, QMAX))
    return float(scale), zp


@contextmanager
def one_torch_thread():
    """Calibrate on one torch thread: another thread count sums in another order and can move a
    range by an ulp, so the same data would not give the same file."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def calibrate_ranges(collector: TensorStatsCollector, feed: Callable[[], None], recipe, sites: Iterable[str],
                     exact: Collection[str] = (), caps: Mapping[str, float] | None = None,
                     reads: Mapping[str, Collection[str]] | None = None) -> dict[str, tuple[float, float]]:
    """The one calibration every target runs (PT2E observers, ptl's FX observers, ncnn's blobs).

    ``feed()`` runs the calibration samples through the target's model, whose activation sites call
    ``collector.observe(site, tensor)``; it runs twice on one torch thread (pass 1: exact min/max,
    pass 2: the histogram on that range). -> each site's (lo, hi) from the recipe's calibrator;
    min/max for the sites in ``exact`` (model outputs with ``recipe.minmax_output``); hi capped at
    ``caps[site]`` (a fused ReLU6); (0, 1) for a site no sample reached. ``reads[site]``: the
    conv/linear layers (module names) whose input the site is; where the recipe carries learned
    ranges for them (quantization-aware training, ``recipe.learned_ranges``), the site takes their
    learned range (the union, when several layers with different ranges read it) instead.
    """
    with one_torch_thread():
        feed()
        collector.next_phase()
        feed()
    stats, calibrator, caps = collector.stats(), get(recipe.calibrator), caps or {}
    learned = _learned_ranges(recipe, reads)
    ranges = {}
    for site in sites:
        s = stats.get(site)
        lo, hi = (minmax if site in exact else calibrator)(s, recipe) if s is not None else (0.0, 1.0)
        if site in learned and site not in exact:
            lo, hi = learned[site]
        if site in caps:
            hi = min(hi, caps[site])
        ranges[site] = (float(lo), float(hi))
    return ranges


def _learned_ranges(recipe, reads: Mapping[str, Collection[str]] | None) -> dict[str, tuple[float, float]]:
    """Site -> the learned range of the layers that read it (only layers the recipe has one for)."""
    by_layer = recipe.input_ranges() if hasattr(recipe, "input_ranges") else {}
    out = {}
    for site, layers in (reads or {}).items():
        known = [by_layer[n] for n in layers if n in by_layer]
        if known:
            out[site] = (min(lo for lo, _ in known), max(hi for _, hi in known))
    return out


def learned_note(read_layers: Collection[str], recipe) -> str | None:
    """The report note of a target that used learned ranges: how many of the recipe's layers it found
    among the conv/linear layers its quantized sites feed (``read_layers``), and which it did not."""
    learned = recipe.input_ranges() if hasattr(recipe, "input_ranges") else {}
    if not learned:
        return None
    missing = sorted(set(learned) - set(read_layers))
    shown = ", ".join(missing[:5]) + ("..." if len(missing) > 5 else "")
    return (f"quantization-aware training: the learned input ranges of {len(learned) - len(missing)} of {len(learned)} "
            "layers set their quantized inputs" + (f"; calibrated instead (an input that shares its range with other "
                                                  f"tensors, or is not quantized here): {shown}" if missing else ""))
