"""Mixed precision for ncnn INT8: the few layers whose int8 error is far out of proportion to their
size stay float (their FP32 record is copied), within a small share of the parameter bytes.

Each int8 layer's sensitivity is measured end to end on calibration samples: the quantized
reference with only that layer quantized (``int8.build_reference``), its output noise power over the
float model's output power. A layer kept float costs 3 bytes per weight (float32 instead of int8).
The layers are taken by noise per extra byte, best first, while (a) that ratio is at least
``DISPROPORTION`` times the model's average (the fully quantized model's noise over the extra bytes
of keeping everything float) and (b) the extra bytes stay within ``FLOAT_BUDGET`` of the int8
weight bytes. Only layers that fit the budget are measured (one forward pass per sample each).

Why: MobileNetV2 (ImageNet weights): its first layers are small and very sensitive: features.1.conv.0.0
(the first depthwise, 288 weights, BN-folded to +-15 that nearly cancel on flat regions) alone took
the logits to 17.4 dB vs FP32 on the held-out images. The rule keeps 10 of 53 layers float there (the
stem, features.1-2 and four more small ones: 22,640 weights, +67.9 kB, 1.034x -> 1.051x the parameter
count): the ncnn artifact went 17.6 -> 22.3 dB, 81 -> 94% top-1 agreement (bench/int8_ncnn_mobilenet_v2.py,
percentile; INT8/FP32 latency 0.91 on x86, 1 thread). The measurement adds ~5-10 s to that export.
"""
from __future__ import annotations

import numpy as np

from .int8 import QLayer, build_reference, quantize_weights

FLOAT_BUDGET = 0.02  # extra bytes of the float layers, as a share of the int8 weight bytes
DISPROPORTION = 10.0  # noise per extra byte a float layer must exceed, in units of the model's average
SENSITIVITY_SAMPLES = 8  # calibration samples the sensitivities are measured on


def _extra_bytes(q: QLayer) -> int:
    return 3 * int(q.weight.size)  # float32 instead of int8 weights


def relative_noise(folded, qlayers: list[QLayer], samples, float_out: list[np.ndarray]) -> float:
    """Output noise power of the reference with ``qlayers`` quantized over the float output power."""
    from edgekit.reference import run_reference

    got = run_reference(build_reference(folded, qlayers), samples)
    noise = sum(float(np.sum((g.astype(np.float64) - f) ** 2)) for g, f in zip(got, float_out))
    return noise / max(sum(float(np.sum(f.astype(np.float64) ** 2)) for f in float_out), 1e-30)


def sensitive_layers(folded, qlayers: list[QLayer], samples) -> list[tuple[QLayer, float]]:
    """(layer, relative output noise with only it quantized) of the layers to keep float (module doc)."""
    from edgekit.reference import run_reference

    samples = tuple(samples)[:SENSITIVITY_SAMPLES]
    for q in qlayers:
        q.w_scales = quantize_weights(q.weight)[1]  # as the export sets them later (sign-independent: shifts keep them)
    budget = FLOAT_BUDGET * sum(int(q.weight.size) for q in qlayers)
    candidates = [q for q in qlayers if _extra_bytes(q) <= budget]
    if not candidates or not samples:
        return []
    float_out = [o.astype(np.float64) for o in run_reference(folded, samples)]
    average = relative_noise(folded, qlayers, samples, float_out) / sum(_extra_bytes(q) for q in qlayers)
    scored = sorted(((relative_noise(folded, [q], samples, float_out), q) for q in candidates),
                    key=lambda t: -t[0] / _extra_bytes(t[1]))
    chosen, spent = [], 0
    for noise, q in scored:
        if noise / _extra_bytes(q) < DISPROPORTION * average:
            break
        if spent + _extra_bytes(q) <= budget:
            chosen.append((q, noise))
            spent += _extra_bytes(q)
    return chosen


def describe_float(chosen: list[tuple[QLayer, float]]) -> list[str]:
    """The quant note naming the layers kept float by sensitivity (none when no layer was)."""
    if not chosen:
        return []
    parts = ", ".join(f"{q.module} ({10 * np.log10(1 / max(n, 1e-30)):.1f} dB alone)" for q, n in chosen)
    return [f"{len(chosen)} int8-sensitive layer(s) kept float (mixed precision, +{sum(_extra_bytes(q) for q, _ in chosen)} "
            f"bytes): {parts}"]
