"""Structured pruning: remove whole channels / filters / neurons, dependencies handled.

The dependency graph (which layers must lose the same channels: residual adds, depthwise convs,
batch norm, concat, classifier inputs) comes from Torch-Pruning 1.6.1; the importance criteria,
the ratio schedule with a per-layer floor, the rounding and the recovery between steps are edgekit's.
The result is a smaller dense nn.Module: every target exports it like any other model.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from edgekit.errors import UserError

from .count import SizeChange, measure


# ---- importance: one-method classes, a group of coupled layers -> one score per channel -------------

class _GroupImportance:
    """Sums a per-channel score over every layer of a dependency group, then divides by its mean so
    that groups compare fairly in global pruning."""

    def channel_scores(self, layer: nn.Module, weight_rows: torch.Tensor, kind: str) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, group) -> torch.Tensor:
        import torch_pruning as tp

        out_fns = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        in_fns = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        total = None
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.target.module, dep.handler
            root = group[i].root_idxs
            rows = None
            if fn in out_fns and isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear)):
                rows, kind = _rows(layer.weight, idxs, 0), "out"
            elif fn in in_fns and isinstance(layer, (nn.Conv2d, nn.Conv1d, nn.Linear)) and getattr(layer, "groups", 1) == 1:
                rows, kind = _rows(layer.weight, idxs, 1), "in"
            elif fn == tp.prune_batchnorm_out_channels and layer.affine:
                rows, kind = _rows(layer.weight, idxs, 0), "bn"
            if rows is None or any(r is None for r in root):
                continue
            score = self.channel_scores(layer, rows, kind)
            if score is None:
                continue
            if total is None:
                total = torch.zeros(max(root) + 1 if len(root) else 0)
            if total.numel() <= max(root):
                total = torch.cat([total, torch.zeros(max(root) + 1 - total.numel())])
            total.scatter_add_(0, torch.tensor(root), score.float())
        if total is None:
            return None
        return total / total.mean().clamp(min=1e-12)


def _rows(weight: torch.Tensor, idxs, dim: int) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    if len(idxs) == 0 or max(idxs) >= weight.shape[dim]:
        return None
    w = weight.detach().transpose(0, dim)[idxs].reshape(len(idxs), -1)
    g = weight.grad.transpose(0, dim)[idxs].reshape(len(idxs), -1) if weight.grad is not None else None
    return w, g


class L1Importance(_GroupImportance):
    def channel_scores(self, layer, rows, kind):
        return rows[0].abs().sum(1) if kind != "bn" else None


class L2Importance(_GroupImportance):
    def channel_scores(self, layer, rows, kind):
        return rows[0].pow(2).sum(1).sqrt() if kind != "bn" else None


class BNScaleImportance(_GroupImportance):
    """|gamma| of the batch norms in the group (network slimming)."""

    def channel_scores(self, layer, rows, kind):
        return rows[0].abs().sum(1) if kind == "bn" else None


class TaylorImportance(_GroupImportance):
    """First-order Taylor: |sum(w * dL/dw)| per channel; needs gradients (PruneConfig + loss_fn)."""

    def channel_scores(self, layer, rows, kind):
        w, g = rows
        return None if g is None else (w * g).sum(1).abs()


IMPORTANCE: dict[str, type[_GroupImportance]] = {
    "l1": L1Importance, "l2": L2Importance, "bn_scale": BNScaleImportance, "taylor": TaylorImportance,
}


@dataclass(frozen=True)
class PruneConfig:
    ratio: float  # fraction of channels removed from each prunable layer (or globally)
    importance: str = "l2"
    global_pruning: bool = False  # rank channels across layers (then max_layer_ratio is the floor)
    max_layer_ratio: float = 0.9  # never remove more than this fraction of one layer's channels
    round_to: int | None = 8  # keep channel counts a multiple of this (fast kernels)
    iterative_steps: int = 1  # prune in this many steps, recovering in between
    ignore: tuple[str, ...] = ()  # layer names kept whole (the classifier head is always kept)
    layer_ratios: tuple[tuple[str, float], ...] = ()  # per-layer overrides (name, ratio)

    def __post_init__(self):
        for name, r in (("ratio", self.ratio), *((f"ratio of {n}", r) for n, r in self.layer_ratios)):
            if not 0.0 < r < 1.0:
                raise UserError("E-COMPRESS-CONFIG", f"pruning {name} {r} is outside (0, 1)", "pass a fraction such as 0.3 (30% of channels removed)")
        if not 0.0 < self.max_layer_ratio <= 1.0:
            raise UserError("E-COMPRESS-CONFIG", f"max_layer_ratio {self.max_layer_ratio} is outside (0, 1]", "pass e.g. 0.9")
        if self.importance not in IMPORTANCE:
            raise UserError("E-COMPRESS-CONFIG", f"unknown importance {self.importance!r}", f"choose from {', '.join(IMPORTANCE)}")
        if self.iterative_steps < 1:
            raise UserError("E-COMPRESS-CONFIG", f"iterative_steps {self.iterative_steps} < 1", "pass 1 or more")


@dataclass
class PruneResult:
    model: nn.Module
    size: SizeChange
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (before, after) out channels

    def to_dict(self) -> dict:
        return {"size": self.size.to_dict(), "channels": {k: list(v) for k, v in self.channels.items()}}


def _named(model: nn.Module, names, what: str) -> list[nn.Module]:
    modules = dict(model.named_modules())
    out = []
    for name in names:
        if name not in modules:
            raise UserError("E-COMPRESS-LAYER", f"{what}: the model has no layer named {name!r}",
                            f"use a name from model.named_modules(), e.g. {', '.join(n for n in list(modules)[1:6])}")
        out.append(modules[name])
    return out


def _head(model: nn.Module) -> nn.Module | None:
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            last = m
    return last


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d)) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))}


def prune(model: nn.Module, example_inputs: tuple, config: PruneConfig, *,
          loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
          recover: Callable[[nn.Module, int], None] | None = None, inplace: bool = False) -> PruneResult:
    """Prune ``model`` (a copy unless inplace) by ``config``; report params/MACs before and after.

    loss_fn(model) -> loss: needed by the Taylor importance (gradients are taken before each step).
    recover(model, step): called after each of the iterative steps (e.g. a short KD fine-tune).
    """
    import torch_pruning as tp

    if config.importance == "taylor" and loss_fn is None:
        raise UserError("E-COMPRESS-CONFIG", "the taylor importance needs gradients", "pass loss_fn=, or use importance l2")
    model = model if inplace else copy.deepcopy(model)
    before = measure(model, example_inputs)
    widths_before = _widths(model)
    ignored = _named(model, config.ignore, "PruneConfig.ignore")
    head = _head(model)
    if head is not None:
        ignored.append(head)
    ratio_dict = dict(zip(_named(model, [n for n, _ in config.layer_ratios], "PruneConfig.layer_ratios"),
                          [r for _, r in config.layer_ratios]))
    was_training = model.training
    model.eval()
    try:
        pruner = tp.pruner.MetaPruner(
            model, example_inputs, importance=IMPORTANCE[config.importance](), global_pruning=config.global_pruning,
            pruning_ratio=config.ratio, pruning_ratio_dict=ratio_dict or None, max_pruning_ratio=config.max_layer_ratio,
            iterative_steps=config.iterative_steps, ignored_layers=ignored, round_to=config.round_to)
    except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise UserError("E-COMPRESS-UNSUPPORTED", f"the dependency analysis cannot trace {type(model).__name__}: {type(exc).__name__}: {exc}"[:500],
                        "make the model traceable with plain tensor ops, or pass the offending layers in PruneConfig.ignore") from exc
    for step in range(config.iterative_steps):
        if loss_fn is not None:
            model.zero_grad(set_to_none=True)
            loss_fn(model).backward()
        pruner.step()
        model.zero_grad(set_to_none=True)
        _check_runs(model, example_inputs, widths_before)
        if recover is not None:
            recover(model, step)
            model.eval()
    model.train(was_training)
    after = measure(model, example_inputs)
    widths_after = _widths(model)
    channels = {n: (widths_before[n], widths_after[n]) for n in widths_before if n in widths_after and widths_before[n] != widths_after[n]}
    return PruneResult(model, SizeChange(before, after), channels)


def _check_runs(model: nn.Module, example_inputs: tuple, widths_before: dict[str, int]) -> None:
    """A graph the analysis misread (hard-coded shapes, views over channels) fails here, not on a phone."""
    try:
        with torch.no_grad():
            model(*example_inputs)
    except RuntimeError as exc:
        changed = [n for n, w in _widths(model).items() if widths_before.get(n) != w]
        raise UserError("E-COMPRESS-UNSUPPORTED",
                        f"the pruned model no longer runs ({str(exc).splitlines()[0][:200]}); pruned layers: {', '.join(changed[:6])}",
                        "the model has a shape the dependency analysis cannot see (e.g. a hard-coded reshape): "
                        "pass the layers feeding it in PruneConfig.ignore") from exc
