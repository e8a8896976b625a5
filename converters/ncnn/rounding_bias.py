"""Weight-rounding bias correction for ncnn INT8: each int8 layer's float bias absorbs the mean output
error its rounded weights make on the calibration data.

ncnn computes an int8 layer as sum(W_q * x_q) / (s_in * s_w) + bias, the bias in float32 (the .bin
record keeps it float), so it can carry any correction at no cost. Rounding the weights to int8
changes the output by (W_q - W) x; its mean over the data, (W_q - W) E[x] with E[x] each input
channel's mean on the calibration samples, is a per-output-channel constant, removed here
(Nagel et al. 2019, "bias correction", the analytical form: the float model's input means, no
pass through the quantized model; borders of padded convs read a slightly different mean).

Why by default: MobileNetV2 (ImageNet weights) with every weight int8 and every activation float
read 17.2 dB logit SQNR vs FP32 on the bench's held-out images, one layer alone (features.1.conv.0.0,
the first depthwise, 288 weights) 15.5 dB: its BN-folded weights (up to +-15) nearly cancel on the
flat regions of its ReLU6 input, so the rounding error is mostly a constant per channel. With the
correction, weights-only: 27.2 dB.
"""
from __future__ import annotations

import numpy as np

from .int8 import QLayer, quantize_weights


def input_channel_means(folded, modules: list[str], samples) -> dict[str, np.ndarray]:
    """Module name -> mean of its input per input channel (Conv2d: over batch and space; Linear: over
    every dimension but the last) on the float folded model, over ``samples``."""
    import torch

    sums: dict[str, np.ndarray] = {}
    hooks = [folded.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: sums.__setitem__(name, sums.get(name, 0.0) + _channel_mean(m, args[0])))
        for name in modules]
    try:
        with torch.no_grad():
            for s in samples:
                folded(*[torch.from_numpy(np.ascontiguousarray(a)) for a in s])
    finally:
        for h in hooks:
            h.remove()
    return {name: (v / len(samples)).astype(np.float64) for name, v in sums.items()}


def _channel_mean(mod, x) -> np.ndarray:
    from torch import nn

    dims = tuple(i for i in range(x.dim()) if i != 1) if isinstance(mod, nn.Conv2d) else tuple(range(x.dim() - 1))
    return x.double().mean(dim=dims).numpy()


def rounding_bias(weight: np.ndarray, shape: tuple, groups: int, mean: np.ndarray) -> np.ndarray:
    """Per output channel, (W_q - W) E[x]: ``weight`` (out, -1) as ncnn stores it, ``shape`` the torch
    weight's shape (out, in / groups, *kernel), ``mean`` the input channel means (in)."""
    q, scales = quantize_weights(weight)
    err = (q.astype(np.float64) / scales.astype(np.float64)[:, None] - weight.astype(np.float64))
    out, per_group = shape[0], shape[1]
    err = err.reshape(out, per_group, -1).sum(axis=2)  # (out, in / groups): summed over the kernel
    means = mean.reshape(groups, per_group)[np.arange(out) // (out // groups)]  # each output's group's inputs
    return (err * means).sum(axis=1)


def correct_rounding_bias(folded, qlayers: list[QLayer], samples) -> int:
    """Subtract each QLayer's mean weight-rounding error from its bias (layers without a bias keep
    none: their .bin record has no room for one). -> how many layers were corrected."""
    with_bias = [q for q in qlayers if q.bias is not None]
    means = input_channel_means(folded, sorted({q.module for q in with_bias}), samples)
    for q in with_bias:
        mod = folded.get_submodule(q.module)
        groups = int(getattr(mod, "groups", 1))
        delta = rounding_bias(q.weight, tuple(mod.weight.shape), groups, means[q.module])
        q.bias = (q.bias.astype(np.float64) - delta).astype(np.float32)
    return len(with_bias)
