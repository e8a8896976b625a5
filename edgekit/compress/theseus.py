"""BERT-of-Theseus: progressive module replacing for stacks of blocks.

The predecessor's N layers are grouped into n blocks of N/n consecutive layers; during training each
block is replaced by its successor layer with probability p (constant, or a linear curriculum from
p_start to 1), only successor layers train; then ``finish`` detaches the successor (a plain stack of
n layers) for fine-tuning alone and export. Works on any stack that is iterated (a Hugging Face BERT
encoder's ``layer`` ModuleList) or called (an nn.Sequential).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from edgekit.errors import UserError


@dataclass(frozen=True)
class TheseusConfig:
    successor_layers: int
    schedule: str = "constant"  # "constant" (p) or "linear" (p_start -> 1 over ramp_steps)
    p: float = 0.5
    p_start: float = 0.3
    ramp_steps: int = 1000
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise UserError("E-COMPRESS-CONFIG", f"unknown Theseus schedule {self.schedule!r}", f"choose from {', '.join(SCHEDULES)}")
        for name, v in (("p", self.p), ("p_start", self.p_start)):
            if not 0.0 <= v <= 1.0:
                raise UserError("E-COMPRESS-CONFIG", f"Theseus {name} {v} is outside [0, 1]", f"pass {name} as a probability")
        if self.successor_layers < 1 or self.ramp_steps < 1:
            raise UserError("E-COMPRESS-CONFIG", "successor_layers and ramp_steps must be >= 1", "pass positive values")


SCHEDULES = {
    "constant": lambda c, step: c.p,
    "linear": lambda c, step: min(1.0, c.p_start + (1.0 - c.p_start) * step / c.ramp_steps),
}


def replace_probability(config: TheseusConfig, step: int) -> float:
    return float(SCHEDULES[config.schedule](config, step))


class TheseusStack(nn.Module):
    """Stands in for the predecessor's stack while replacing. Iterating it (as a BERT encoder loop
    does) or calling it (as an nn.Sequential parent does) runs, per block, either the predecessor's
    layers or the successor layer. In eval mode only the successor runs."""

    may_skip_parameters = True  # DDP: successor layers are unused on steps where their block is kept

    def __init__(self, predecessor: nn.Module, config: TheseusConfig):
        super().__init__()
        layers = list(predecessor)
        n, k = len(layers), config.successor_layers
        if n % k or k >= n:
            raise UserError("E-COMPRESS-CONFIG", f"{n} predecessor layers cannot be grouped into {k} blocks",
                            f"pick a successor depth that divides {n} and is smaller (e.g. {n // 2})")
        self.config, self.block = config, n // k
        self.predecessor = nn.ModuleList(layers)
        for p in self.predecessor.parameters():
            p.requires_grad_(False)
        # Successor layer i starts as a copy of the first layer of block i.
        self.successor = nn.ModuleList(copy.deepcopy(layers[i * self.block]) for i in range(k))
        for p in self.successor.parameters():
            p.requires_grad_(True)
        self.kind = type(predecessor)
        self.step = 0
        self.last_choice: list[bool] = []

    def set_step(self, step: int) -> None:
        self.step = step

    def choose(self) -> list[bool]:
        """Which blocks the successor replaces in this forward pass (same on every DDP rank)."""
        p = replace_probability(self.config, self.step)
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step)
        return (torch.rand(len(self.successor), generator=g) < p).tolist()

    def __iter__(self):
        if not self.training:
            self.last_choice = [True] * len(self.successor)
            return iter(self.successor)
        self.last_choice = self.choose()
        chosen = []
        for i, replaced in enumerate(self.last_choice):
            chosen += [self.successor[i]] if replaced else list(self.predecessor[i * self.block:(i + 1) * self.block])
        return iter(chosen)

    def __len__(self) -> int:
        return len(self.successor)

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x


def _locate(model: nn.Module, stack: str) -> tuple[nn.Module, str, nn.Module]:
    modules = dict(model.named_modules())
    if stack not in modules:
        stacks = [n for n, m in modules.items() if isinstance(m, (nn.ModuleList, nn.Sequential)) and n]
        raise UserError("E-COMPRESS-LAYER", f"the model has no layer named {stack!r}",
                        f"name the stack of blocks, e.g. {', '.join(stacks[:5]) or 'an nn.ModuleList attribute'}")
    parent_name, _, child = stack.rpartition(".")
    return (modules[parent_name] if parent_name else model), child, modules[stack]


def start(model: nn.Module, stack: str, config: TheseusConfig) -> TheseusStack:
    """Install a TheseusStack at ``stack`` (e.g. "encoder.encoder.layer" for edgekit's MiniLM) and
    freeze every other parameter of the model: only successor layers train."""
    parent, child, current = _locate(model, stack)
    if not isinstance(current, (nn.ModuleList, nn.Sequential)):
        raise UserError("E-COMPRESS-LAYER", f"{stack!r} is a {type(current).__name__}, not an nn.ModuleList or nn.Sequential",
                        "name the container that holds the repeated blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    theseus = TheseusStack(current, config)
    setattr(parent, child, theseus)
    return theseus


def finish(model: nn.Module, stack: str) -> nn.Module:
    """Replace the TheseusStack by the successor alone (same container type as the predecessor's),
    unfreeze the model, update a Hugging Face config's layer count. Returns the model."""
    parent, child, current = _locate(model, stack)
    if not isinstance(current, TheseusStack):
        raise UserError("E-COMPRESS-LAYER", f"{stack!r} is not a Theseus stack", "call theseus.start first")
    layers = list(current.successor)
    setattr(parent, child, nn.Sequential(*layers) if current.kind is nn.Sequential else nn.ModuleList(layers))
    for p in model.parameters():
        p.requires_grad_(True)
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "num_hidden_layers"):
            cfg.num_hidden_layers = len(layers)
    return model
