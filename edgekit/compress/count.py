"""Parameters and MACs of a module on given example inputs: the numbers every stage reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSize:
    params: int
    macs: int  # multiply-accumulates of one forward pass on the example inputs

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SizeChange:
    """Before and after one compression stage."""

    before: ModelSize
    after: ModelSize

    @property
    def mac_ratio(self) -> float:
        return self.after.macs / max(self.before.macs, 1)

    @property
    def param_ratio(self) -> float:
        return self.after.params / max(self.before.params, 1)

    def to_dict(self) -> dict:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(),
                "mac_ratio": round(self.mac_ratio, 4), "param_ratio": round(self.param_ratio, 4)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: tuple) -> int:
    """MACs of one forward pass, from torch's FLOP counter (convolutions, linears and matmuls,
    attention included); one MAC = two FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def measure(model: nn.Module, example_inputs: tuple) -> ModelSize:
    return ModelSize(count_params(model), count_macs(model, example_inputs))
