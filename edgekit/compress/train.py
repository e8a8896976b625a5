"""The shared training loop of every recovery step (KD after pruning, Theseus, fine-tuning).

One entry point for one process, several local processes and several nodes: under ``torchrun``
(WORLD_SIZE > 1 in the environment) the trainable module is wrapped in DistributedDataParallel
(gloo on CPU, NCCL on GPUs). Each global batch of ``batch_size`` samples is split across the ranks,
so N processes compute the same averaged gradients as one process (up to float summation order and
batch-statistics layers, which see only their rank's share).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from edgekit.errors import UserError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64  # global batch (split across processes)
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # "adamw" or "sgd" (momentum 0.9)
    schedule: str = "cosine"  # "cosine" or "constant"
    seed: int = 0
    max_steps: int | None = None  # stop early (budget in optimizer steps)
    log_every: int = 0

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1:
            raise UserError("E-COMPRESS-CONFIG", f"batch_size {self.batch_size} / epochs {self.epochs} must be >= 1", "pass positive values")
        if self.optimizer not in _OPTIMIZERS:
            raise UserError("E-COMPRESS-CONFIG", f"unknown optimizer {self.optimizer!r}", f"choose from {', '.join(_OPTIMIZERS)}")
        if self.schedule not in ("cosine", "constant"):
            raise UserError("E-COMPRESS-CONFIG", f"unknown schedule {self.schedule!r}", "choose from cosine, constant")


_OPTIMIZERS = {
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay),
}


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> World:
    """Join the process group torchrun set up (gloo on CPU); one process: World(0, 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _collate(samples: list) -> tuple:
    return tuple(torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in range(len(samples[0])))


def rank_batches(dataset: Sequence, batch_size: int, epoch: int, seed: int, world: World):
    """This rank's share of each global batch, same shuffled order on every rank; incomplete
    final batches are dropped so every rank takes the same number of steps."""
    if batch_size % world.size:
        raise UserError("E-COMPRESS-CONFIG", f"batch size {batch_size} does not split over {world.size} processes",
                        f"pass a batch size that is a multiple of {world.size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start:start + batch_size][world.rank::world.size]
        yield _collate([dataset[i] for i in idx])


def fit(module: nn.Module, dataset: Sequence, loss_fn: Callable[[nn.Module, tuple], torch.Tensor],
        config: TrainConfig, on_step: Callable[[int], None] | None = None) -> list[float]:
    """Train ``module``'s trainable parameters on ``dataset`` (a sequence of tuples of tensors).

    loss_fn(model, batch) -> scalar loss, where model is ``module`` or its DDP wrapper; on_step(step)
    runs before each step (e.g. a Theseus schedule). Returns the loss of every step (this rank's).
    """
    world = init_distributed()
    torch.manual_seed(config.seed)
    model = module
    if world.size > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(module, find_unused_parameters=_has_frozen_branches(module))
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise UserError("E-COMPRESS-CONFIG", "the module to train has no trainable parameters", "unfreeze the student")
    opt = _OPTIMIZERS[config.optimizer](params, config)
    steps_per_epoch = len(dataset) // config.batch_size
    total = steps_per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, steps_per_epoch * config.epochs)
    if total < 1:
        raise UserError("E-COMPRESS-CONFIG", f"{len(dataset)} samples give no full batch of {config.batch_size}", "pass a smaller batch size")
    losses: list[float] = []
    step = 0
    module.train()
    for epoch in range(config.epochs):
        for batch in rank_batches(dataset, config.batch_size, epoch, config.seed, world):
            if step >= total:
                return losses
            if on_step is not None:
                on_step(step)
            lr = config.lr if config.schedule == "constant" else 0.5 * config.lr * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if config.log_every and world.main and step % config.log_every == 0:
                print(f"step {step}/{total} loss {losses[-1]:.4f}", flush=True)
            step += 1
    return losses


def _has_frozen_branches(module: nn.Module) -> bool:
    """Theseus trains modules that a given step may skip: DDP must then look for unused ones."""
    return any(getattr(m, "may_skip_parameters", False) for m in module.modules())


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Sequence, batch_size: int = 256) -> float:
    """Top-1 accuracy of (inputs..., label) samples."""
    model.eval()
    correct = 0
    for start in range(0, len(dataset), batch_size):
        *inputs, labels = _collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        correct += int((model(*inputs).argmax(-1) == labels).sum())
    return correct / max(len(dataset), 1)
