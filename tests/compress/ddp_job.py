"""A KD recovery job for the torchrun test: the same script runs on 1 or 2 processes.

    torchrun --nproc_per_node 2 tests/compress/ddp_job.py OUT.pt
Writes the student's state dict (rank 0) and the losses.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from edgekit.compress.distill import Distiller, KDConfig
from edgekit.compress.train import TrainConfig, World, fit, init_distributed, shutdown_distributed


def models():
    g = torch.Generator().manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    student = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        for p in list(teacher.parameters()) + list(student.parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.randn(256, 16, generator=g)
    y = teacher(x).argmax(-1)
    return teacher, student, [(x[i], y[i]) for i in range(len(y))]


def main(out: str) -> None:
    world: World = init_distributed()
    teacher, student, data = models()
    d = Distiller(teacher, student, KDConfig(temperature=2.0, alpha=0.5), (data[0][0][None],))
    losses = fit(d, data, lambda m, b: m(b[0], labels=b[1]),
                 TrainConfig(epochs=3, batch_size=32, lr=5e-2, optimizer="sgd", schedule="cosine", seed=3))
    if world.main:
        torch.save({"state": student.state_dict(), "losses": losses, "world": world.size}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
