"""Quantization-aware distillation: a fake-quant student trained against the FP32 teacher.

``fake_quant(model, QATConfig())`` wraps every Linear / Conv2d (or the named ones) so that its forward
sees what edgekit's INT8 recipe will compute: weights int8 symmetric per output channel (-127..127,
scale = max|w| / 127, recomputed every step) and the layer input int8 asymmetric per tensor (range
from an exponential moving average of the batch min/max while training, frozen in eval). Rounding
uses torch's fake-quant ops, whose backward is the straight-through estimator (gradient 1 inside the
range, 0 where clipped). Train the wrapped student with ``distill.Distiller`` (FP32 teacher, KD
loss), then ``strip_fake_quant`` gives back a plain float model whose weights have adapted to
INT8 noise; every target's static PTQ export then quantizes it.

Approximation: batch norm is not folded while training (the conv weights are fake-quantized before
the export folds BN into them); the activation ranges learned here are not exported, the PTQ
calibrator sets them again.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.errors import UserError


@dataclass(frozen=True)
class QATConfig:
    layers: tuple[str, ...] | None = None  # layer names; None: every Linear and Conv2d
    momentum: float = 0.1  # EMA weight of a new batch's activation min/max
    quantize_inputs: bool = True  # fake-quantize each layer's input (per tensor) as well as its weights

    def __post_init__(self):
        if not 0.0 < self.momentum <= 1.0:
            raise UserError("E-COMPRESS-CONFIG", f"QAT momentum {self.momentum} is outside (0, 1]", "pass e.g. 0.1")


def _weight_fq(w: torch.Tensor) -> torch.Tensor:
    flat = w.detach().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(1) / 127.0).clamp(min=1e-12).float()
    zero = torch.zeros(w.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class FakeQuantLayer(nn.Module):
    """A Linear or Conv2d computed with fake-quantized weights and input."""

    weight_fake_quant = True

    def __init__(self, layer: nn.Module, config: QATConfig):
        super().__init__()
        self.layer = layer
        self.config = config
        self.register_buffer("act_min", torch.zeros(()))
        self.register_buffer("act_max", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    def _input_fq(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
            if not bool(self.observed):
                self.act_min.copy_(lo)
                self.act_max.copy_(hi)
                self.observed.fill_(True)
            else:
                m = self.config.momentum
                self.act_min.mul_(1 - m).add_(m * lo)
                self.act_max.mul_(1 - m).add_(m * hi)
        if not bool(self.observed):
            return x  # eval before any training batch: no range yet
        scale = float((self.act_max - self.act_min).clamp(min=1e-8) / 255.0)
        zero = int(torch.clamp(torch.round(-128 - self.act_min / scale), -128, 127))
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, -128, 127)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.quantize_inputs:
            x = self._input_fq(x)
        w = _weight_fq(self.layer.weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def fake_quant(model: nn.Module, config: QATConfig = QATConfig(), inplace: bool = False) -> nn.Module:
    """Wrap the chosen layers in FakeQuantLayer; -> the student to train (a copy unless inplace)."""
    model = model if inplace else copy.deepcopy(model)
    modules = dict(model.named_modules())
    eligible = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if config.layers is None:
        names = eligible
    else:
        names = list(config.layers)
        for n in names:
            if n not in modules:
                raise UserError("E-COMPRESS-LAYER", f"QAT: the model has no layer named {n!r}",
                                f"use a Linear or Conv2d name from model.named_modules(), e.g. {', '.join(eligible[:5])}")
            if n not in eligible:
                raise UserError("E-COMPRESS-LAYER", f"QAT: layer {n!r} is a {type(modules[n]).__name__}, not a Linear or Conv2d",
                                "name Linear or Conv2d layers")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, FakeQuantLayer(modules[name], config))
    return model


def strip_fake_quant(model: nn.Module) -> nn.Module:
    """Replace every FakeQuantLayer by its (trained, float) layer, in place; -> the model."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, FakeQuantLayer):
                setattr(module, child_name, child.layer)
    return model
