"""Low-rank factorisation: a Linear (or 1x1 Conv2d) W (out x in) becomes two layers U_r (out x r)
and V_r (r x in) from its truncated SVD, W ~= U_r S_r V_r^T; the rank comes from an energy threshold
(the kept fraction of sum(s^2)) or a parameter budget. A layer is factorised only when it saves
parameters (r * (in + out) < in * out). The Frobenius error of the reconstruction equals the energy
of the discarded singular values: ||W - W_r||^2 = sum_{i>r} s_i^2.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekit.errors import UserError

from .count import SizeChange, measure


@dataclass(frozen=True)
class LowRankConfig:
    energy: float | None = 0.9  # keep the smallest rank whose singular values hold this share of sum(s^2)
    param_ratio: float | None = None  # or: the rank that keeps this fraction of the layer's parameters
    layers: tuple[str, ...] | None = None  # layer names; None: every Linear and 1x1 Conv2d
    min_rank: int = 1
    round_to: int = 1  # round the rank up to a multiple of this

    def __post_init__(self):
        if (self.energy is None) == (self.param_ratio is None):
            raise UserError("E-COMPRESS-CONFIG", "LowRankConfig needs exactly one of energy and param_ratio",
                            "pass energy=0.9 (share of spectral energy kept) or param_ratio=0.5")
        for name, v in (("energy", self.energy), ("param_ratio", self.param_ratio)):
            if v is not None and not 0.0 < v < 1.0:
                raise UserError("E-COMPRESS-CONFIG", f"low-rank {name} {v} is outside (0, 1)", f"pass {name} as a fraction, e.g. 0.5")


@dataclass(frozen=True)
class Factorised:
    rank: int
    full_rank: int
    kept_energy: float  # share of sum(s^2) kept
    discarded_energy: float  # sum of the discarded s^2 (= squared Frobenius error)


@dataclass
class LowRankResult:
    model: nn.Module
    size: SizeChange
    layers: dict[str, Factorised] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"size": self.size.to_dict(), "layers": {k: vars(v) for k, v in self.layers.items()}}


def _matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def _eligible(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.groups == 1 \
        and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1)


def choose_rank(s: torch.Tensor, shape: tuple[int, int], config: LowRankConfig) -> int:
    out_f, in_f = shape
    if config.energy is not None:
        cum = torch.cumsum(s.double() ** 2, 0) / (s.double() ** 2).sum().clamp(min=1e-30)
        rank = int(torch.searchsorted(cum, torch.tensor(config.energy, dtype=torch.float64)).item()) + 1
    else:
        rank = int(config.param_ratio * out_f * in_f / (out_f + in_f))
    rank = max(config.min_rank, rank)
    rank = -(-rank // config.round_to) * config.round_to
    return min(rank, len(s))


def factorise_matrix(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r sqrt(S_r), sqrt(S_r) V_r^T, s): the two factors (balanced) and all singular values."""
    u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype), s.to(w.dtype)


def _factor_layer(layer: nn.Module, rank: int) -> tuple[nn.Module, torch.Tensor]:
    w = _matrix(layer)
    a, b, s = factorise_matrix(w, rank)
    out_f, in_f = w.shape
    bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(in_f, rank, bias=False), nn.Linear(rank, out_f, bias=bias)
        first.weight.data.copy_(b)
        second.weight.data.copy_(a)
    else:
        first, second = nn.Conv2d(in_f, rank, 1, bias=False), nn.Conv2d(rank, out_f, 1, bias=bias)
        first.weight.data.copy_(b[:, :, None, None])
        second.weight.data.copy_(a[:, :, None, None])
    if bias:
        second.bias.data.copy_(layer.bias.detach())
    return nn.Sequential(first, second), s


def low_rank(model: nn.Module, example_inputs: tuple, config: LowRankConfig, inplace: bool = False) -> LowRankResult:
    """Replace eligible layers by their rank-r factorisation; report params/MACs before and after."""
    model = model if inplace else copy.deepcopy(model)
    before = measure(model, example_inputs)
    modules = dict(model.named_modules())
    if config.layers is not None:
        names = list(config.layers)
        for n in names:
            if n not in modules:
                raise UserError("E-COMPRESS-LAYER", f"low-rank: the model has no layer named {n!r}",
                                f"use a name from model.named_modules(), e.g. {', '.join(k for k, m in modules.items() if _eligible(m))}")
            if not _eligible(modules[n]):
                raise UserError("E-COMPRESS-LAYER", f"low-rank: layer {n!r} is a {type(modules[n]).__name__}, not a Linear or 1x1 Conv2d",
                                "name Linear or 1x1, stride-1, ungrouped Conv2d layers")
    else:
        names = [n for n, m in modules.items() if _eligible(m)]
    done: dict[str, Factorised] = {}
    for name in names:
        layer = modules[name]
        w = _matrix(layer)
        s = torch.linalg.svdvals(w.double())
        rank = choose_rank(s, tuple(w.shape), config)
        if rank * sum(w.shape) >= w.numel():
            continue  # no saving at this rank
        new, s = _factor_layer(layer, rank)
        energy = (s.double() ** 2)
        done[name] = Factorised(rank, len(s), float(energy[:rank].sum() / energy.sum()), float(energy[rank:].sum()))
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, new)
    return LowRankResult(model, SizeChange(before, measure(model, example_inputs)), done)
