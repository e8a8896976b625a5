"""Compression as one pipeline stage: a frozen ``CompressConfig`` applied by ``compress``.

The config names the steps to run, in order (``prune``, ``heads``, ``lowrank``, ``theseus``,
``distill``, ``qat_distill``), each with its own technique config. ``compress(model, example_inputs, config, data)``
runs them on a copy of the model and returns the compressed model and a ``StageReport``: params,
MACs and (with data) accuracy / top-1 agreement with the original model before and after every step.

Recovery steps (``distill``, ``qat_distill``, ``theseus``) train on ``data``: labelled samples
(inputs..., label) train with the KD loss mixed with cross-entropy; unlabelled samples (the pipeline's
calibration set) with the teacher's soft targets alone. The teacher is always the original model.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import torch
from torch import nn

from edgekit.errors import UserError

from .count import ModelSize, measure
from .distill import KDConfig
from .heads import HeadPruneConfig
from .lowrank import LowRankConfig
from .prune import PruneConfig
from .qat import QATConfig
from .theseus import TheseusConfig
from .train import TrainConfig


@dataclass(frozen=True)
class TheseusStage:
    """BERT-of-Theseus as a stage step: which stack of blocks to replace, and how."""

    stack: str  # e.g. "layers" (tiny_transformer) or "encoder.encoder.layer" (minilm)
    theseus: TheseusConfig


@dataclass(frozen=True)
class CompressConfig:
    steps: tuple[str, ...]  # run in this order; names from STEPS
    prune: PruneConfig | None = None
    heads: HeadPruneConfig | None = None
    lowrank: LowRankConfig | None = None
    theseus: TheseusStage | None = None
    distill: KDConfig | None = None
    qat: QATConfig | None = None
    train: TrainConfig = TrainConfig(epochs=1, batch_size=16, lr=1e-3)  # every training step

    def __post_init__(self):
        if not self.steps:
            raise UserError("E-COMPRESS-CONFIG", "a compress config needs at least one step", f"name steps from {', '.join(STEPS)}")
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise UserError("E-COMPRESS-CONFIG", f"unknown compression step(s) {', '.join(map(repr, unknown))}",
                            f"choose from {', '.join(STEPS)}")
        for step in self.steps:
            needs = STEPS[step].needs
            if needs and getattr(self, needs) is None:
                raise UserError("E-COMPRESS-CONFIG", f"step {step!r} has no [{needs}] settings",
                                f"add a {needs} config (e.g. {STEPS[step].example})")


@dataclass(frozen=True)
class StageData:
    """Samples for training and evaluation: tuples of tensors without a batch dim; the last element is
    the label when ``labelled``."""

    train: Sequence
    eval: Sequence | None = None  # default: the training samples
    labelled: bool = True

    @property
    def eval_set(self) -> Sequence:
        return self.train if self.eval is None else self.eval


def from_calibration(calibration, limit: int | None = None) -> StageData:
    """A CalibrationSet (numpy, batch dim 1) as unlabelled stage data (tensors, no batch dim)."""
    samples = [tuple(torch.from_numpy(a[0]) for a in s) for s in calibration.samples[:limit]]
    if not samples:
        raise UserError("E-DATA-EMPTY", "compression got no samples", "pass --data with samples of the model's inputs")
    return StageData(samples, None, labelled=False)


@dataclass
class StepReport:
    step: str
    before: ModelSize
    after: ModelSize
    accuracy_before: float | None = None  # labelled eval data
    accuracy_after: float | None = None
    agreement_before: float | None = None  # top-1 agreement with the original model on the eval data
    agreement_after: float | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["before"], d["after"] = self.before.to_dict(), self.after.to_dict()
        d["seconds"] = round(self.seconds, 2)
        return d


@dataclass
class StageReport:
    steps: list[StepReport] = field(default_factory=list)
    config: dict = field(default_factory=dict)

    @property
    def before(self) -> ModelSize:
        return self.steps[0].before

    @property
    def after(self) -> ModelSize:
        return self.steps[-1].after

    def to_dict(self) -> dict:
        return {"config": self.config, "steps": [s.to_dict() for s in self.steps],
                "before": self.before.to_dict(), "after": self.after.to_dict(),
                "mac_ratio": round(self.after.macs / max(self.before.macs, 1), 4),
                "param_ratio": round(self.after.params / max(self.before.params, 1), 4)}

    def markdown(self) -> str:
        def pct(v):
            return "-" if v is None else f"{100 * v:.2f}"

        rows = ["| step | params | MMACs | accuracy | agreement with original | s |", "|---|---|---|---|---|---|"]
        for s in self.steps:
            rows.append(f"| {s.step} | {s.before.params} -> {s.after.params} | {s.before.macs / 1e6:.2f} -> {s.after.macs / 1e6:.2f} | "
                        f"{pct(s.accuracy_before)} -> {pct(s.accuracy_after)} | {pct(s.agreement_before)} -> {pct(s.agreement_after)} | "
                        f"{s.seconds:.1f} |")
        return "\n".join(rows)


@dataclass
class _Context:
    original: nn.Module
    example_inputs: tuple
    config: CompressConfig
    data: StageData | None


@dataclass(frozen=True)
class _Step:
    run: Callable[[nn.Module, _Context], tuple[nn.Module, dict]]
    needs: str | None  # the CompressConfig field the step requires
    example: str = ""


def _need_data(ctx: _Context, step: str) -> StageData:
    if ctx.data is None:
        raise UserError("E-COMPRESS-CONFIG", f"compression step {step!r} trains and got no data",
                        "pass training samples (the pipeline passes its calibration set), or drop the step")
    return ctx.data


def _task_loss(model: nn.Module, inputs: tuple, labels: torch.Tensor | None, teacher: nn.Module) -> torch.Tensor:
    """Cross-entropy on labelled data; on unlabelled data, MSE to the original model's outputs."""
    out = model(*inputs)
    if labels is not None:
        return nn.functional.cross_entropy(out, labels)
    with torch.no_grad():
        target = teacher(*inputs)
    return nn.functional.mse_loss(out, target)


def _split(batch: tuple, labelled: bool) -> tuple[tuple, torch.Tensor | None]:
    return (tuple(batch[:-1]), batch[-1]) if labelled else (tuple(batch), None)


def _run_prune(model: nn.Module, ctx: _Context) -> tuple[nn.Module, dict]:
    from .prune import prune

    cfg = ctx.config.prune
    loss_fn = None
    if cfg.importance == "taylor":
        data = _need_data(ctx, "prune (taylor importance)")
        from .train import _collate

        batch = _collate([data.train[i] for i in range(min(len(data.train), 32))])
        inputs, labels = _split(batch, data.labelled)
        teacher = ctx.original

        def loss_fn(m):
            return _task_loss(m, inputs, labels, teacher)
    res = prune(model, ctx.example_inputs, cfg, loss_fn=loss_fn)
    return res.model, {"channels": {k: list(v) for k, v in res.channels.items()}}


def _run_heads(model: nn.Module, ctx: _Context) -> tuple[nn.Module, dict]:
    from .heads import prune_heads

    res = prune_heads(model, ctx.example_inputs, ctx.config.heads)
    return res.model, {"layers": res.layers}


def _run_lowrank(model: nn.Module, ctx: _Context) -> tuple[nn.Module, dict]:
    from .lowrank import low_rank

    res = low_rank(model, ctx.example_inputs, ctx.config.lowrank)
    return res.model, {"layers": {k: vars(v) for k, v in res.layers.items()}}


def _kd_loss_fn(labelled: bool):
    def loss(distiller, batch):
        inputs, labels = _split(batch, labelled)
        return distiller(*inputs, labels=labels)
    return loss


def _run_distill(model: nn.Module, ctx: _Context, student_wrap=None) -> tuple[nn.Module, dict]:
    from .distill import Distiller
    from .train import fit

    data = _need_data(ctx, "distill")
    student = model if student_wrap is None else student_wrap(model)
    teacher = copy.deepcopy(ctx.original).eval()
    distiller = Distiller(teacher, student, ctx.config.distill or KDConfig(), ctx.example_inputs)
    losses = fit(distiller, data.train, _kd_loss_fn(data.labelled), ctx.config.train)
    distiller.remove_hooks()
    return distiller.student.eval(), {"loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses)}


def _run_qat_distill(model: nn.Module, ctx: _Context) -> tuple[nn.Module, dict]:
    from .qat import fake_quant, strip_fake_quant

    student, details = _run_distill(model, ctx, student_wrap=lambda m: fake_quant(m, ctx.config.qat))
    details["fake_quant_layers"] = sum(1 for _ in student.modules() if hasattr(_, "weight_fake_quant"))
    return strip_fake_quant(student), details


def _run_theseus(model: nn.Module, ctx: _Context) -> tuple[nn.Module, dict]:
    from . import theseus
    from .train import fit

    data = _need_data(ctx, "theseus")
    stage = ctx.config.theseus
    teacher = copy.deepcopy(ctx.original).eval()
    stack = theseus.start(model, stage.stack, stage.theseus)
    labelled = data.labelled

    def loss(m, batch):
        return _task_loss(m, *_split(batch, labelled), teacher)
    losses = fit(model, data.train, loss, ctx.config.train, on_step=stack.set_step)
    model = theseus.finish(model, stage.stack).eval()
    return model, {"loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses)}


STEPS: dict[str, _Step] = {
    "prune": _Step(_run_prune, "prune", "PruneConfig(ratio=0.3)"),
    "heads": _Step(_run_heads, "heads", "HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5)"),
    "lowrank": _Step(_run_lowrank, "lowrank", "LowRankConfig(energy=0.9)"),
    "theseus": _Step(_run_theseus, "theseus", "TheseusStage('layers', TheseusConfig(successor_layers=1))"),
    "distill": _Step(_run_distill, None),
    "qat_distill": _Step(_run_qat_distill, "qat", "QATConfig()"),
}


@torch.no_grad()
def _predictions(model: nn.Module, samples: Sequence, labelled: bool, batch_size: int = 64) -> torch.Tensor | None:
    from .train import _collate

    model.eval()
    preds = []
    for start in range(0, len(samples), batch_size):
        inputs, _ = _split(_collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))]), labelled)
        out = model(*inputs)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            return None  # not a classifier's (batch, classes) logits: no accuracy or agreement
        preds.append(out.argmax(-1))
    return torch.cat(preds)


def _quality(model: nn.Module, data: StageData | None, original_preds: torch.Tensor | None) -> tuple[float | None, float | None]:
    if data is None or original_preds is None:
        return None, None
    samples = data.eval_set
    preds = _predictions(model, samples, data.labelled)
    if preds is None:
        return None, None
    agreement = float((preds == original_preds).float().mean())
    if not data.labelled:
        return None, agreement
    labels = torch.stack([torch.as_tensor(samples[i][-1]) for i in range(len(samples))])
    return float((preds == labels).float().mean()), agreement


def compress(model: nn.Module, example_inputs: tuple, config: CompressConfig,
             data: StageData | Sequence | None = None) -> tuple[nn.Module, StageReport]:
    """Run ``config.steps`` in order on a copy of ``model``; -> (compressed model in eval mode, report).

    ``data``: StageData, or a sequence of labelled (inputs..., label) samples (then used both to
    train and to evaluate). Without data only prune (not taylor) and lowrank can run."""
    if not isinstance(config, CompressConfig):
        raise UserError("E-COMPRESS-CONFIG", f"compress needs a CompressConfig, not {type(config).__name__}",
                        "build one with edgekit.compress.stage.CompressConfig(steps=(...), ...)")
    if data is not None and not isinstance(data, StageData):
        data = StageData(data)
    original = model.eval()
    ctx = _Context(original, tuple(example_inputs), config, data)
    original_preds = _predictions(original, data.eval_set, data.labelled) if data is not None else None
    current = copy.deepcopy(original)
    report = StageReport(config=describe(config))
    size = measure(current, ctx.example_inputs)
    acc, agree = _quality(current, data, original_preds)
    for name in config.steps:
        t0 = time.perf_counter()
        current, details = STEPS[name].run(current, ctx)
        current.eval()
        new_size = measure(current, ctx.example_inputs)
        new_acc, new_agree = _quality(current, data, original_preds)
        report.steps.append(StepReport(name, size, new_size, acc, new_acc, agree, new_agree, time.perf_counter() - t0, details))
        size, acc, agree = new_size, new_acc, new_agree
    return current, report


def describe(config: CompressConfig) -> dict:
    """The config as plain data (for the report and the manifest)."""
    import dataclasses

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    out = {"steps": list(config.steps), "train": plain(config.train)}
    for name in ("prune", "heads", "lowrank", "theseus", "distill", "qat"):
        value = getattr(config, name)
        if value is not None:
            out[name] = plain(value)
    return out
