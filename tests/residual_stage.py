"""Test helper: a stem and six residual blocks (MobileNetV2's stages in small). Each block's small
correction is added to a skip path much larger than it, and each sum is read both by the next block's
first conv and by its add: the pattern where int8 placements and runtimes differ."""
from __future__ import annotations

import torch


class ResidualStage(torch.nn.Module):
    def __init__(self, blocks: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1))
            for _ in range(blocks))
        with torch.no_grad():
            self.stem.weight.mul_(4.0)
            for b in self.blocks:
                b[2].weight.mul_(0.1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return x
