"""Quantization-aware fine-tuning whose learned weights and ranges every target exports (``--qat-steps N``).

The student computes what every static INT8 target computes for a conv/linear layer:
- BatchNorm folded into its conv first (``adaround.fold_batchnorm``), as every target folds it, so the
  weights trained are the weights quantized;
- weights fake-quantized per output channel on the targets' grid (scale max(max|w| / 127, 2^-12),
  integers -127..127, straight-through gradient), the grid every target re-derives from the weights
  (a target whose kernels need a coarser grid may widen some channels' scales and round them again);
- each layer's input fake-quantized per tensor on the int8 asymmetric grid with a *learned* scale and
  zero point (LSQ+: torch's learnable fake-quant op), initialised from the recipe's calibrator on the
  calibration samples.
It is distilled from the FP32 model on the calibration samples, augmented (image inputs: random
horizontal flip and shift; labels are not needed): the loss is the output error relative to the
teacher's output energy (1 / SQNR), Adam for ``steps`` steps on seeded batches.

-> ``QATResult``: the trained float model (BatchNorm folded) and each layer input's learned (lo, hi).
The recipe carries the ranges to every target (``QuantRecipe.learned_ranges``): a target's calibration
takes them for the tensors those layers read instead of calibrating them again
(``calibrators.calibrate_ranges``); activations no conv/linear reads (an add's output feeding an add)
are calibrated on the trained model as before.

Limits: a BatchNorm outside an nn.Sequential with its conv is not folded here (frozen in eval mode
instead), so that conv trains on a grid the targets re-derive after folding: it gains less. The
student simulates the asymmetric per-tensor int8 grid of the PT2E and ptl targets; ncnn's symmetric
grid with its shift and its float-kept layers computes differently, and the trained weights cost it
(MobileNetV2, 24 steps: ncnn 21.41 -> 18.29 dB while the other four gain 1.0 dB; the trained float
model alone is 23.1 dB from FP32; bench/results/qat_mobilenet_v2_24steps.md), so ncnn (no "qat" among
its levers) exports the model before training. Results are cached by content hash (``state_cache``).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from edgekit.errors import UserError

from .adaround import _input_ranges, _layers_in_order, channel_scales, fold_batchnorm
from .calibrators import QMAX, QMIN, qparams
from .recipe import QuantRecipe, keep_float_modules

MAX_STEPS = 100_000
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class QATSettings:
    """How the student trains (``--qat-steps`` sets ``steps``; the rest are measured defaults)."""

    steps: int
    batch_size: int = 16
    lr: float = 1e-5  # weights and biases (Adam)
    range_lr: float = 1e-3  # the learned input ranges' scale and zero point (Adam)
    augment: bool = True  # image inputs: random horizontal flip and shift by up to 1/16 of the side
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise UserError("E-ARGS", f"--qat-steps {self.steps!r} is not a whole number in 1..{MAX_STEPS}",
                            "pass e.g. --qat-steps 200 (0 or no flag: no quantization-aware training)")
        if not 1 <= self.batch_size <= 4096 or not (0 < self.lr < 1 and 0 < self.range_lr < 1):
            raise UserError("E-ARGS", "QAT batch size or learning rate out of range", "keep the defaults")


@dataclass
class QATResult:
    model: nn.Module  # float, BatchNorm folded, trained weights
    ranges: dict[str, tuple[float, float]]  # conv/linear module name -> its input's learned int8 range
    report: dict

    def recipe(self, recipe: QuantRecipe) -> QuantRecipe:
        """``recipe`` carrying the learned input ranges to every target's calibration (unchanged if none were kept)."""
        return recipe.with_(learned_ranges=tuple((n, lo, hi) for n, (lo, hi) in self.ranges.items())) if self.ranges else recipe

    def describe(self) -> str:
        r = self.report
        return (f"quantization-aware training: {r['steps']} steps of {r['batch_size']} on {r['samples']} calibration "
                f"samples{' (augmented: flip, shift)' if r['augmented'] else ''}, {_time_said(r)}; the trained weights"
                f"{' and input ranges' if self.ranges else ''} of {r['layers']} conv/linear layers go to every target whose int8 grid it simulates "
                f"({_ranges_said(r)}); student SQNR vs FP32 on its training batches "
                f"{_db(r['loss_first'])} -> {_db(r['loss_last'])} dB (BatchNorm folded: {r['batchnorm_folded']})")


def _time_said(r: dict) -> str:
    return f"from the cache (trained in {r['seconds']:.0f} s before)" if r.get("cached") else f"{r['seconds']:.0f} s"


def _db(relative_error: float) -> str:
    return f"{10 * np.log10(1 / max(relative_error, 1e-30)):.1f}"


def _ranges_said(r: dict) -> str:
    held = r["held_out_loss"]
    how = ("learned input ranges kept" if r["ranges"] == "learned" else
           "learned input ranges dropped, the targets calibrate the trained model")
    return (f"{how}: on {r['held_out']} held-out calibration samples {_db(held['learned'])} dB with them, "
            f"{_db(held['recalibrated'])} dB recalibrated")


class _WeightGrid(nn.Module):
    """Parametrization: the weight as every target rounds it (per output channel, symmetric)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = channel_scales(w).float()
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class _InputRange(nn.Module):
    """One layer input's learnable int8 grid, applied by a forward pre-hook: the scale is learned as
    its log (an Adam step then moves it by a fraction of itself, whatever its size), the zero point
    as a float that the fake-quant op rounds."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        scale, zp = qparams(lo, hi)
        self.log_scale = nn.Parameter(torch.tensor([float(np.log(scale))]))
        self.zero_point = nn.Parameter(torch.tensor([float(zp)]))

    def __call__(self, module, args):
        x = args[0]
        grad = 1.0 / float(np.sqrt(x[0].numel() * QMAX))  # LSQ's gradient scale
        self.zero_point.data.clamp_(QMIN, QMAX)
        scale = self.log_scale.exp().clamp(min=2.0 ** -12)
        return (torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero_point, QMIN, QMAX, grad),) + tuple(args[1:])

    def learned(self) -> tuple[float, float]:
        s = float(self.log_scale.detach().exp().clamp(min=2.0 ** -12))
        z = float(np.clip(np.round(float(self.zero_point.detach())), QMIN, QMAX))
        return float((QMIN - z) * s), float((QMAX - z) * s)


def _layer_names(model: nn.Module, recipe: QuantRecipe, sample: tuple) -> list[str]:
    """Conv/linear layers the targets quantize (not kept float) that a calibration sample reaches."""
    kept = keep_float_modules(model, recipe)
    return _layers_in_order(model, sample, {n for n, m in model.named_modules() if isinstance(m, _LAYERS) and n not in kept})


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A batch of images (N, C, H, W): each flipped left-right half the time and shifted by up to 1/16
    of its side (reflect padding, then a random crop back to the size). Other inputs: unchanged."""
    if not x.is_floating_point() or x.dim() != 4 or min(x.shape[2:]) < 16:
        return x
    h, w = x.shape[2:]
    p = max(1, min(h, w) // 16)
    padded = nn.functional.pad(x, (p, p, p, p), mode="reflect")
    out = []
    for i in range(len(x)):
        dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=gen))
        img = padded[i, :, dy:dy + h, dx:dx + w]
        out.append(img.flip(-1) if bool(torch.rand((), generator=gen) < 0.5) else img)
    return torch.stack(out)


def _leaves(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _leaves(o)] if isinstance(out, (list, tuple)) else []


def _relative_error(student_out, teacher_out) -> torch.Tensor:
    """Sum over outputs of mean squared error / mean squared teacher output (1 / SQNR)."""
    terms = [((s.float() - t.float()) ** 2).mean() / ((t.float() ** 2).mean() + 1e-12)
             for s, t in zip(_leaves(student_out), _leaves(teacher_out)) if t.is_floating_point()]
    if not terms:
        raise UserError("E-ARGS", "quantization-aware training needs a model with float outputs", "drop --qat-steps")
    return sum(terms)


def _batch(samples: list[tuple], idx, settings: QATSettings, gen: torch.Generator) -> tuple:
    cols = [torch.cat([samples[i][k] for i in idx]) for k in range(len(samples[0]))]
    return tuple(_augment(c, gen) if settings.augment else c for c in cols)


def _student(model: nn.Module, names: list[str], ranges: dict) -> tuple[dict[str, _InputRange], list]:
    """Fake-quant weights (parametrization) and learned input ranges (pre-hooks) on ``names``."""
    grids, hooks = {}, []
    for n in names:
        mod = model.get_submodule(n)
        parametrize.register_parametrization(mod, "weight", _WeightGrid())
        grids[n] = _InputRange(*ranges[n][:2])
        hooks.append(mod.register_forward_pre_hook(grids[n]))
    return grids, hooks


def _stripped(model: nn.Module, names: list[str], hooks: list) -> nn.Module:
    """The plain float model with its trained raw weights (fake-quant and range hooks removed)."""
    for h in hooks:
        h.remove()
    for n in names:
        if parametrize.is_parametrized(model.get_submodule(n), "weight"):
            parametrize.remove_parametrizations(model.get_submodule(n), "weight", leave_parametrized=False)
    return model


_FORMAT = "edgekit-qat-1"  # the cache file's layout (edgekit.quant.state_cache)
_ALGORITHM = 1  # part of the cache key: bump when the same inputs would train different weights


def train_quantized(model: nn.Module, samples: list[tuple], recipe: QuantRecipe, settings: QATSettings,
                    cache_dir=None) -> QATResult:
    """Distil a fake-quant copy of ``model`` from it; ``samples``: tuples of arrays with a batch dim of 1.

    The last quarter of the samples is held out of training: the learned input ranges are kept only
    if, with the trained weights, they beat the ranges the targets would calibrate on those samples
    (like AdaRound's learned rounding); otherwise the targets calibrate the trained model as usual.
    Cached on disk by a content hash of the weights, samples, recipe, settings and torch version
    (``cache_dir``; None: ``$EDGEKIT_CACHE_DIR/qat`` or ``~/.cache/edgekit/qat``; False: no cache), so a
    re-export with the same model, data and recipe trains nothing (the report says ``cached``)."""
    from . import state_cache

    key = state_cache.content_key(model, samples, (sorted(recipe.to_dict().items()), settings, _ALGORITHM))
    path = None if cache_dir is False else Path(cache_dir or state_cache.cache_dir("qat")) / f"qat-{key[:32]}.npz"
    if path is not None and path.is_file():
        student = copy.deepcopy(model).eval()
        fold_batchnorm(student)  # the trained model's layout, which the cached tensors must fit
        hit = state_cache.load(path, _FORMAT, key, student.state_dict())
        if hit is not None:
            student.load_state_dict(hit[0])
            ranges = {n: (float(lo), float(hi)) for n, (lo, hi) in hit[1]["shipped_ranges"].items()}
            return QATResult(student, ranges, {**hit[1]["report"], "cached": True})
    res = _train(model, samples, recipe, settings)
    state = {k: v.detach().clone() for k, v in res.model.state_dict().items()}
    state_cache.store(path, _FORMAT, key, state, {"report": res.report, "shipped_ranges": res.ranges})
    return QATResult(res.model, res.ranges, {**res.report, "cached": False})


def _train(model: nn.Module, samples: list[tuple], recipe: QuantRecipe, settings: QATSettings) -> QATResult:
    t0 = time.time()
    torch_samples = [tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in s) for s in samples]
    hold = len(torch_samples) // 4 if len(torch_samples) >= 8 else 0
    train, val = torch_samples[:len(torch_samples) - hold], torch_samples[len(torch_samples) - hold:] or torch_samples
    teacher = copy.deepcopy(model).eval()
    student = copy.deepcopy(model).eval()
    n_bn = fold_batchnorm(student)
    names = _layer_names(student, recipe, torch_samples[0])
    if not names:
        raise UserError("E-ARGS", "quantization-aware training found no conv/linear layer to quantize",
                        "drop --qat-steps (or --keep-float) for this model")
    grids, hooks = _student(student, names, _input_ranges(student, names, train, recipe))
    losses = _fit(student, teacher, train, grids, settings)
    learned = {n: grids[n].learned() for n in names}
    held = {"learned": _held_out_loss(student, teacher, val)}
    recalibrated = _input_ranges(_stripped(student, names, hooks), names, torch_samples, recipe)
    _, hooks = _student(student, names, recalibrated)  # what the targets would do without learned ranges
    held["recalibrated"] = _held_out_loss(student, teacher, val)
    _stripped(student, names, hooks)
    kept = keeps_learned(held)
    report = {"steps": settings.steps, "batch_size": min(settings.batch_size, len(train)), "samples": len(train),
              "held_out": hold, "augmented": settings.augment, "seconds": round(time.time() - t0, 1),
              "loss_first": losses[0], "loss_last": float(np.mean(losses[-max(1, len(losses) // 10):])),
              "held_out_loss": held, "ranges": "learned" if kept else "recalibrated", "batchnorm_folded": n_bn,
              "layers": len(names), "lr": settings.lr, "range_lr": settings.range_lr}
    return QATResult(student.eval(), learned if kept else {}, report)


def keeps_learned(held: dict) -> bool:
    """The learned ranges ship when they do at least as well as recalibration on the held-out samples.
    Which wins depends on the host's float arithmetic as well as on the model (tiny_cnn at 40 steps:
    7.35e-5 vs 8.18e-5 on one x86 host, 6.99e-5 vs 6.78e-5 on an AVX2 one without AVX-512)."""
    return held["learned"] <= held["recalibrated"]


def _held_out_loss(student, teacher, samples) -> float:
    with torch.no_grad():
        batch = tuple(torch.cat([s[k] for s in samples]) for k in range(len(samples[0])))
        return float(_relative_error(student(*batch), teacher(*batch)))


def _fit(student, teacher, samples, grids, settings: QATSettings) -> list[float]:
    """Adam on the weights (lr) and on the input ranges (range_lr); -> the loss of every step."""
    gen = torch.Generator().manual_seed(settings.seed)
    range_params = [p for g in grids.values() for p in g.parameters()]
    opt = torch.optim.Adam([{"params": [p for p in student.parameters() if p.requires_grad], "lr": settings.lr},
                            {"params": range_params, "lr": settings.range_lr}])
    size, losses = min(settings.batch_size, len(samples)), []
    for _ in range(settings.steps):
        idx = torch.randperm(len(samples), generator=gen)[:size].tolist()
        batch = _batch(samples, idx, settings, gen)
        with torch.no_grad():
            target = teacher(*batch)
        loss = _relative_error(student(*batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
