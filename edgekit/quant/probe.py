"""RangeProbe: stands in for one activation observer while calibrating, for every target that
quantizes in PyTorch (PT2E for tflite/executorch, FX for ptl): it feeds edgekit's collector, so
every target gets its ranges from the same calibrator, and optionally clamps (a fused ReLU6 cap)."""
from __future__ import annotations

from torch import nn

from .calibrators import TensorStatsCollector


class RangeProbe(nn.Module):
    def __init__(self, name: str, collector: TensorStatsCollector, cap: float | None):
        super().__init__()
        self.site, self.collector, self.cap = name, collector, cap

    def forward(self, x):
        if self.cap is not None:
            x = x.clamp(max=self.cap)
        self.collector.observe(self.site, x)
        return x
