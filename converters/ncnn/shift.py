"""Reflected input shift: the full int8 grid for an ncnn int8 conv that reads a ReLU / clip output.

ncnn quantizes an int8 conv's input symmetrically (one scale, levels -127..127, no zero point:
``int8.calibrate``, threshold = max(|lo|, |hi|)). A conv input produced by a fused ReLU or ReLU6
is never negative, so half of the grid stays unused: one bit (~6 dB) less than the asymmetric
8-bit grids of the other targets. Measured on MobileNetV2 (ImageNet weights), the ncnn INT8 logits
were ~5 dB behind every other target (``bench/int8_ncnn_mobilenet_v2.py``).

The rewrite, for a quantized conv P with a fused ReLU or clip(a >= 0, b) whose output blob one
quantized Convolution / ConvolutionDepthWise C alone reads (``plan_shifts``): with x = act(y) in
[0, hi] (hi = C's calibrated threshold) and c = hi / 2, C reads x' = c - x instead of x:

- P: weights -W_P, bias c - b_P, clip [c - b, c - a]: exact, since c - clip(y, a, b) = clip(c - y, c - b, c - a);
- C: weights -W_C, bias b_C + c * sum(W_C) per output channel: exact, since W_C x = W_C c - W_C x';
- C's input scale doubles (threshold hi / 2), so x' in [-c, c] uses the levels -127..127;
- C's padding must stay the original zero, x' = c. ncnn's int8 conv quantizes its input first and
  pads the int8 blob afterwards (``Convolution_x86::forward_int8_x86``, ``ConvolutionDepthWise_x86::
  forward_int8_x86``, same on ARM: quantize_to_int8, then make_padding), with param 18 (pad_value)
  cast to an int8 *level* (``Padding::forward_int8`` / ``padding_x86.cpp``: ``(int64_t)value``,
  ``arm``: ``vdup_n_s8((signed char)value)``), not scaled. c * scale = 127 exactly, so ``18=127.0``
  pads with the level of the original zero. The sign is reflected (c - x, not x - c) because x86's
  packed int8 padding builds its 8-byte fill as ``v8 | v8 << 8 | ...`` from a sign-extended int64:
  a negative pad level fills 7 of every 8 channels with -1 (measured: pad -5 on 8 channels gave
  corner sums -21 on channel 0 and -1 on channel 7); a positive level is correct everywhere.

The quantized reference simulates the rewritten graph (``shift_reference``): P's fake-quant module
computes with the rewritten weights and bias, the activation node between P and C becomes the
rewritten clip, and C's fake-quant pads its int8 levels with 127 itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import InternalError

from .int8 import QMAX, QLayer, _params, quantize_weights

SHIFTABLE = ("Convolution", "ConvolutionDepthWise")
PAD_LEVEL = float(QMAX)  # the int8 level of the original zero in C's reflected input
NO_LOWER_BOUND = -1e30  # P's rewritten clip minimum when its activation was a ReLU (no maximum)


@dataclass(frozen=True)
class Shift:
    """One rewritten producer/consumer pair: C reads ``center - x`` where x is P's activation output."""

    producer: str  # ncnn layer name of P
    consumer: str  # ncnn layer name of C
    center: float  # c, float32 value
    clip: tuple[float, float]  # P's rewritten clip bounds, as ncnn parses them from the .param


def one_sided(act: tuple) -> tuple[float, float] | None:
    """(a, b) of a fused activation whose output is never negative: ReLU (9=1, no slope) -> (0, inf),
    clip (9=3) with a >= 0 -> (a, b); None for every other activation."""
    if act[0] == 1 and (len(act) == 1 or act[1] == 0.0):
        return 0.0, float("inf")
    if act[0] == 3 and act[1] >= 0.0:
        return float(act[1]), float(act[2])
    return None


def ncnn_float_text(v: float) -> str:
    """A float as ncnn's .param reads it: at most 15 characters, always with an exponent (a value
    without '.' or 'e' is read as an int)."""
    return f"{float(v):.8e}"


def ncnn_parsed(text: str) -> np.float32:
    """The float32 ncnn's ParamDict (``vstr_to_float``, paramdict.cpp) makes of ``text``: integer
    and fraction digits in double, times a power of ten built by repeated products, cast to float."""
    mant, _, exp = text.lower().partition("e")
    neg = mant.startswith("-")
    whole, _, frac = mant.lstrip("+-").partition(".")
    v = float(int(whole or "0")) + (int(frac) / float(10 ** len(frac)) if frac else 0.0)
    e = int(exp.lstrip("+-") or "0") if exp else 0
    scale = 1.0
    while e >= 8:
        scale, e = scale * 1e8, e - 8
    while e > 0:
        scale, e = scale * 10.0, e - 1
    v = v / scale if exp.startswith("-") else v * scale
    return np.float32(-v if neg else v)


def plan_shifts(layers, qlayers: list[QLayer], folded, outputs=()) -> list[tuple[QLayer, QLayer]]:
    """(P, C) pairs the rewrite applies to: P a quantized conv with a fused one-sided activation and a
    bias; its output blob no network output, read by one layer only, C, a quantized Convolution /
    ConvolutionDepthWise with one input, a bias, a calibrated scale and no pad moved from the torch
    graph; in the folded torch graph P's module feeds one node (the activation) that feeds C's alone."""
    by_out = {q.out: q for q in qlayers}
    readers: dict[str, list] = {}
    for layer in layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)
    pairs = []
    for c in qlayers:
        p = by_out.get(c.inp)
        users = readers.get(c.inp, [])
        if (p is None or c.type not in SHIFTABLE or p.type not in SHIFTABLE or len(users) != 1
                or len(users[0].inputs) != 1 or c.inp in set(outputs) or one_sided(p.act) is None
                or p.bias is None or c.bias is None or c.in_pad is not None or not c.in_scale):
            continue
        if activation_node(folded.graph, p.module, c.module) is not None:
            pairs.append((p, c))
    return pairs


def activation_node(graph, producer: str, consumer: str):
    """The one fx node between the call of module ``producer`` and the call of ``consumer`` (P's
    activation), when P's output has no other use and the activation's only use is C; else None."""
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target in (producer, consumer)]
    p_nodes = [n for n in calls if n.target == producer]
    if len(calls) != 2 or len(p_nodes) != 1:
        return None
    users = list(p_nodes[0].users)
    if len(users) != 1 or len(users[0].users) != 1:
        return None
    act, nxt = users[0], next(iter(users[0].users))
    if act.args[:1] != (p_nodes[0],) or nxt.op != "call_module" or nxt.target != consumer or nxt.args[:1] != (act,):
        return None
    return act


def apply_shifts(layers, pairs: list[tuple[QLayer, QLayer]]) -> list[Shift]:
    """Rewrite each (P, C) pair's QLayers (weights, bias, activation, C's input scale and pad level) and
    the .param tokens of P's clip and C's pad value (module docstring). -> the shifts made."""
    by_name = {layer.name: layer for layer in layers}
    shifts = []
    for p, c in pairs:
        act_min, act_max = one_sided(p.act)  # P's activation bounds (a, b); C's calibrated range is [0, 127 / in_scale]
        scale = np.float32(2.0 * np.float32(c.in_scale))  # threshold hi / 2
        center = np.float32(np.float32(QMAX) / scale)  # hi / 2: center * scale = 127
        clip_text = [ncnn_float_text(np.float32(center - act_max) if np.isfinite(act_max) else NO_LOWER_BOUND),
                     ncnn_float_text(np.float32(center - act_min))]
        clip = tuple(float(ncnn_parsed(t)) for t in clip_text)
        p.weight, p.bias, p.act = -p.weight, (center - p.bias).astype(np.float32), (3, *clip)
        c.bias = (c.bias.astype(np.float64) + float(center) * int8_weight_sums(c.weight)).astype(np.float32)
        c.weight, c.in_scale, c.pad_level, c.in_shift = -c.weight, float(scale), PAD_LEVEL, float(center)
        _set_param(by_name[p.name], 9, "3")
        _set_param(by_name[p.name], -23310, "2," + ",".join(clip_text))
        if _pads(by_name[c.name]):
            _set_param(by_name[c.name], 18, ncnn_float_text(PAD_LEVEL))
        shifts.append(Shift(p.name, c.name, float(center), clip))
    return shifts


def int8_weight_sums(weight: np.ndarray) -> np.ndarray:
    """Per output channel, the sum of the weights ncnn computes with (int8 / scale), in float64.

    C's bias takes center * this sum, not the float weights' sum: C's int8 sum is then exactly
    W_q (c - x') = W_q x, the unshifted int8 conv. With the float sum, W_q's rounding error times c
    (x' is ~c wherever x = 0, most of a ReLU6 output) became a per-channel bias error: measured on
    MobileNetV2, logits 13.3 -> 6.3 dB vs FP32."""
    q, scales = quantize_weights(weight)
    return q.astype(np.float64).sum(axis=1) / scales.astype(np.float64)


def describe_shifts(shifts: list[Shift]) -> list[str]:
    """The quant note on the reflected shifts (none when no pair qualified)."""
    if not shifts:
        return []
    return [f"{len(shifts)} int8 conv(s) fed by a ReLU/clip conv read center - x (reflected shift, exact: the "
            "producer's weights, bias and clip and the reader's weights and bias rewritten, pads at int8 level 127) "
            "so the one-sided input uses the full symmetric int8 grid (scale x2)"]


def _pads(layer) -> bool:
    """Whether a Convolution* layer pads its input (explicit pads, or -233/-234: SAME padding)."""
    p = _params(layer)
    left = int(p.get(4, 0))
    top = int(p.get(14, left))
    return any(v != 0 for v in (left, int(p.get(15, left)), top, int(p.get(16, top))))


def _set_param(layer, key: int, value: str) -> None:
    layer.params = [t for t in layer.params if int(t.partition("=")[0]) != key] + [f"{key}={value}"]


def shift_reference(ref, qlayers: list[QLayer], shifts: list[Shift]):
    """Replace, in the quantized reference ``ref`` (a GraphModule whose quantized modules already
    carry the rewritten weights), the activation node of each shifted pair by the rewritten clip."""
    import torch

    by_name = {q.name: q for q in qlayers}
    for s in shifts:
        act = activation_node(ref.graph, by_name[s.producer].module, by_name[s.consumer].module)
        if act is None:
            raise InternalError(f"shift {s.producer} -> {s.consumer}: no activation node in the reference")
        with ref.graph.inserting_after(act):
            clip = ref.graph.call_function(torch.clamp, (act.args[0],), {"min": s.clip[0], "max": s.clip[1]})
        act.replace_all_uses_with(clip)
        ref.graph.erase_node(act)
    ref.graph.lint()
    ref.recompile()
    return ref
