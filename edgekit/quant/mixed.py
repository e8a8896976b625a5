"""Mixed precision by sensitivity (``recipe.float_share``): the few conv/linear layers whose INT8
error is far out of proportion to their size stay float, within a small share of the INT8 weight
bytes, on every target (they join ``recipe.keep_float``).

Each layer's sensitivity is measured end to end on a few calibration samples, with a float
simulation that is the same for every target: the float model (BatchNorm folded into its conv, as
every target does) with only that layer quantized, its weights on the int8 per-channel grid and the
tensor it reads on the recipe's per-tensor activation grid (int8; int16 for int16x8) over the range
the recipe's calibrator gives it. Its sensitivity is the
output noise power over the output power. A layer kept float costs 3 extra bytes per weight
(float32 instead of int8). Layers are taken by noise per extra byte, best first, while (a) that ratio
is at least ``DISPROPORTION`` times the model's average (all layers quantized at once, over the extra
bytes of keeping all of them float) and (b) the extra bytes stay within ``recipe.float_share`` of the
INT8 weight bytes.

A layer is kept float with the activation that follows it (edgekit.quant.pt2e: ``KeepFloat``), so
two neighbouring float layers exchange a float tensor: MobileNetV2's stem and first depthwise conv
(1,152 weights) are where its INT8 loses most (bench/results/mixed_mobilenet_v2.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .recipe import WEIGHT_SCALE_FLOOR, QuantRecipe, keep_float_modules

DISPROPORTION = 10.0  # noise per extra byte a float layer must exceed, in units of the model's average
SENSITIVITY_SAMPLES = 8  # calibration samples the sensitivities are measured on
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Sensitivity:
    layer: str  # module name
    weights: int  # weight count
    noise: float  # output noise power over output power, only this layer quantized

    @property
    def extra_bytes(self) -> int:
        return 3 * self.weights

    @property
    def db(self) -> float:
        return float(10 * np.log10(1 / max(self.noise, 1e-30)))


def sensitive_float(model: nn.Module, samples, recipe: QuantRecipe) -> tuple[QuantRecipe, list[Sensitivity]]:
    """-> the recipe with the chosen layers added to keep_float, and those layers' sensitivities
    (empty when none is disproportionate, or recipe.float_share is 0)."""
    if not recipe.float_share:
        return recipe, []
    folded = _folded(model)
    budget = recipe.float_share * sum(m.weight.numel() for m in _layers(folded, recipe).values())
    rows, average = _measured(folded, samples, recipe, lambda m: 3 * m.weight.numel() <= budget)
    chosen, spent = [], 0
    for row in rows:
        if row.noise / row.extra_bytes < DISPROPORTION * average:
            break
        if spent + row.extra_bytes <= budget:
            chosen.append(row)
            spent += row.extra_bytes
    if not chosen:
        return recipe, []
    return recipe.with_(keep_float=recipe.keep_float + tuple(r.layer for r in chosen)), chosen


def ranked(model: nn.Module, samples, recipe: QuantRecipe) -> list[Sensitivity]:
    """Every conv/linear layer not already kept float, the most int8 noise per extra float byte first
    (the order in which the budget search keeps layers float, edgekit.quant.search)."""
    return _measured(_folded(model), samples, recipe, lambda m: True)[0]


def _measured(folded, samples, recipe, candidate) -> tuple[list[Sensitivity], float]:
    """(the candidate layers' sensitivities, most noise per extra byte first; the model's average noise
    per extra byte), on one torch thread, so the same model and data give the same order anywhere."""
    from .calibrators import one_torch_thread

    samples = tuple(samples)[:SENSITIVITY_SAMPLES]
    layers = _layers(folded, recipe)
    if not samples or not layers:
        return [], 0.0
    with one_torch_thread():
        ranges = _input_ranges(folded, layers, samples, recipe)
        grid = {n: (lo, hi, recipe.scheme) for n, (lo, hi) in ranges.items()}
        reference = _outputs(folded, samples)
        average = _noise(folded, layers, grid, samples, reference) / (3 * sum(m.weight.numel() for m in layers.values()))
        rows = [Sensitivity(n, m.weight.numel(), _noise(folded, {n: m}, grid, samples, reference))
                for n, m in layers.items() if candidate(m)]
    return sorted(rows, key=lambda r: -r.noise / r.extra_bytes), average


def _layers(folded, recipe) -> dict[str, nn.Module]:
    kept = set(keep_float_modules(folded, recipe)) if recipe.keep_float else set()
    return {n: m for n, m in folded.named_modules() if isinstance(m, _LAYERS) and n not in kept}


def describe(chosen: list[Sensitivity], share: float, scheme: str = "int8") -> str | None:
    """The quant note naming the layers kept float by sensitivity."""
    if not chosen:
        return None
    parts = ", ".join(f"{r.layer} ({r.db:.1f} dB alone)" for r in chosen)
    return (f"mixed precision (float_share {share:g}): {len(chosen)} {scheme}-sensitive layer(s) kept float, "
            f"+{sum(r.extra_bytes for r in chosen):,} bytes: {parts}")


def _folded(model: nn.Module) -> nn.Module:
    from .adaround import fold_batchnorm

    folded = copy.deepcopy(model).eval()
    fold_batchnorm(folded)
    return folded


def _as_tensors(sample) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(a)) for a in sample]


def _outputs(model, samples) -> list[np.ndarray]:
    outs = []
    with torch.no_grad():
        for s in samples:
            r = model(*_as_tensors(s))
            r = (r,) if isinstance(r, torch.Tensor) else tuple(r.values()) if isinstance(r, dict) else tuple(r)
            outs.append(np.concatenate([t.detach().double().numpy().ravel() for t in r if isinstance(t, torch.Tensor)]))
    return outs


def _input_ranges(model, layers: dict, samples, recipe) -> dict[str, tuple[float, float]]:
    """Layer -> (lo, hi) of the tensor it reads, from the recipe's calibrator."""
    from .calibrators import TensorStatsCollector, calibrate_ranges

    collector = TensorStatsCollector(recipe.bins)
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: collector.observe(n, args[0]))
             for n, m in layers.items()]
    try:
        ranges = calibrate_ranges(collector, lambda: _outputs(model, samples), recipe, list(layers))
    finally:
        for h in hooks:
            h.remove()
    return dict(ranges)


def _int8_weight(w: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, w.dim()))
    scale = (w.abs().amax(dim=dims, keepdim=True) / 127).clamp(min=WEIGHT_SCALE_FLOOR)
    return (w / scale).round().clamp(-127, 127) * scale


def _noise(model, layers: dict, grids: dict, samples, reference: list[np.ndarray]) -> float:
    """Output noise power over output power with ``layers`` quantized (weights, and input on its
    grid: layer -> (lo, hi, scheme), as adaround.input_fake_quant takes it)."""
    from .adaround import input_fake_quant

    saved = {n: m.weight.data for n, m in layers.items()}
    hooks = []
    for n, m in layers.items():
        m.weight.data = _int8_weight(saved[n])
        hooks.append(m.register_forward_pre_hook(input_fake_quant(*grids[n])))
    try:
        got = _outputs(model, samples)
    finally:
        for h in hooks:
            h.remove()
        for n, m in layers.items():
            m.weight.data = saved[n]
    noise = sum(float(np.sum((g - r) ** 2)) for g, r in zip(got, reference))
    return noise / max(sum(float(np.sum(r ** 2)) for r in reference), 1e-30)
