"""ParityResult: per target and per output, how far an artifact's outputs are from a reference.

Every failed criterion is collected (never the first one only) and the result is serialisable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.converters.base import Tolerance
from edgekit.tasks import DetectionMetrics, Task, TaskTolerance, check_detection, detection_metrics, \
    pixel_agreement, relative_error, task_tolerance


@dataclass(frozen=True)
class OutputMetrics:
    name: str
    shape: tuple[int, ...]  # (N, *output_shape)
    max_abs: float
    mean_abs: float
    ref_max_abs: float  # max |reference|: the scale max_abs is judged against
    cosine_min: float  # lowest per-sample cosine similarity
    sqnr_db: float  # 10 log10(signal power / error power) over all samples; inf when bit-exact
    top1_agreement: float | None  # classification outputs only
    max_steps: float | None = None  # quantized artifacts: max error in output quantization steps
    mean_steps: float | None = None
    pixel_agreement: float | None = None  # segmentation logits: per-pixel argmax agreement
    rel_error: float | None = None  # regression (all samples) and embedding (worst sample): ||error|| / ||reference||

    @property
    def max_abs_rel(self) -> float:
        return self.max_abs / self.ref_max_abs if self.ref_max_abs > 0 else (0.0 if self.max_abs == 0 else math.inf)


def output_metrics(name: str, ref: np.ndarray, got: np.ndarray, classification: bool,
                   step: float | None = None, role: str | None = None) -> OutputMetrics:
    """Metrics of one stacked output; ``step``: the output's quantization scale, if it has one.
    ``role`` (edgekit.tasks.Task.role) adds the task's metric: pixels -> per-pixel argmax agreement,
    regression -> relative error and cosine over all samples together, embedding -> relative error."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    err = got - ref
    rows = 1 if role == "regression" else len(ref)  # a scalar regression output has no per-sample direction
    flat_r, flat_g = ref.reshape(rows, -1), got.reshape(rows, -1)
    norms = np.linalg.norm(flat_r, axis=1) * np.linalg.norm(flat_g, axis=1)
    dots = (flat_r * flat_g).sum(axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.abs(flat_r - flat_g).max(axis=1) == 0, 1.0, 0.0))
    sqnr = _sqnr(float((ref ** 2).sum()), float((err ** 2).sum()))
    top1 = float((flat_r.argmax(axis=1) == flat_g.argmax(axis=1)).mean()) if classification else None
    steps = (float(np.abs(err).max() / step), float(np.abs(err).mean() / step)) if step else (None, None)
    pixels = pixel_agreement(ref, got) if role == "pixels" else None
    rel = relative_error(ref, got, per_sample=role == "embedding") if role in ("regression", "embedding") else None
    return OutputMetrics(name, tuple(got.shape), float(np.abs(err).max()), float(np.abs(err).mean()),
                         float(np.abs(ref).max()), float(cos.min()), sqnr, top1, *steps, pixels, rel)


def _sqnr(signal: float, noise: float) -> float:
    """10 log10(signal / noise): inf when exact, -inf when the error is infinite or there is no signal, nan for NaN."""
    if noise == 0:
        return math.inf
    if math.isnan(noise) or math.isnan(signal):
        return math.nan
    return 10 * math.log10(signal / noise) if signal > 0 and math.isfinite(noise) else -math.inf


def check(m: OutputMetrics, tol: Tolerance, tt: TaskTolerance | None = None) -> list[str]:
    """The criteria this output misses, each as a readable sentence (``tt``: the task's criteria,
    default ``task_tolerance(tol)``).

    A quantized output with a known quantization step is judged in steps: within the step bound it
    passes whatever its absolute range, cosine, top-1 or task metric (a 1-step difference on a
    near-constant output is what integer kernels do, and the relative bounds would contradict the
    step bound); beyond it, every missed criterion is listed."""
    if (tol.max_steps is not None and m.max_steps is not None and np.isfinite(m.max_abs)
            and m.max_steps <= tol.max_steps):
        return []
    fails = []
    if not np.isfinite(m.max_abs) or m.max_abs_rel > tol.max_abs_rel:
        fails.append(f"{m.name}: max abs error {m.max_abs:.3g} exceeds {tol.max_abs_rel:g} x max|reference| "
                     f"{m.ref_max_abs:.3g} = {tol.max_abs_rel * m.ref_max_abs:.3g}")
    if m.cosine_min < tol.min_cosine:
        fails.append(f"{m.name}: lowest cosine similarity {m.cosine_min:.6f} is below {tol.min_cosine}")
    if tol.max_steps is not None and m.max_steps is not None and m.max_steps > tol.max_steps:
        fails.append(f"{m.name}: max error {m.max_steps:.1f} output quantization steps exceeds {tol.max_steps:g}")
    if m.top1_agreement is not None and m.top1_agreement < tol.min_top1:
        fails.append(f"{m.name}: top-1 agreement {m.top1_agreement:.2%} is below {tol.min_top1:.0%}")
    tt = tt or task_tolerance(tol)
    if m.pixel_agreement is not None and m.pixel_agreement < tt.min_agreement:
        fails.append(f"{m.name}: per-pixel argmax agreement {m.pixel_agreement:.3%} is below {tt.min_agreement:.1%}")
    if m.rel_error is not None and not m.rel_error <= tt.max_rel_error:
        fails.append(f"{m.name}: relative error {m.rel_error:.3g} exceeds {tt.max_rel_error:.3g}")
    return fails


NOT_RUNNABLE = "not runnable on host"  # a status that is neither pass nor fail (e.g. NNAPI)
UNSUPPORTED = "unsupported"  # the target cannot express the model (an operator, a dtype): named with the source line
STATUSES = ("pass", "fail", "error", UNSUPPORTED, NOT_RUNNABLE)


@dataclass
class ParityResult:
    target: str
    precision: str
    status: str  # one of STATUSES: "pass", "fail", "error", UNSUPPORTED, or NOT_RUNNABLE (exported, never run here)
    file: str | None = None
    size_bytes: int | None = None
    latency_ms: float | None = None
    n_samples: int = 0
    tolerance: Tolerance | None = None
    outputs: list[OutputMetrics] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    error: dict | None = None  # {"code", "message", "fix"} when status is "error"
    notes: list[str] = field(default_factory=list)  # deprecations, runtime settings, integrity
    log: str = ""
    extra: dict = field(default_factory=dict)  # per-check details, e.g. "arm": emulated-CPU figures
    task: str | None = None  # the task the outputs were judged as (edgekit.tasks), None when never compared
    task_tolerance: TaskTolerance | None = None
    detection: DetectionMetrics | None = None  # detection: boxes and scores after IoU matching

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def summary_metrics(self) -> dict:
        """Worst value over the outputs, for the report table."""
        if not self.outputs:
            return {}
        top1 = [m.top1_agreement for m in self.outputs if m.top1_agreement is not None]
        steps = [m.max_steps for m in self.outputs if m.max_steps is not None]
        return {
            "max_steps": max(steps) if steps else None,
            "max_abs": max(m.max_abs for m in self.outputs),
            "mean_abs": max(m.mean_abs for m in self.outputs),
            "max_abs_rel": max(m.max_abs_rel for m in self.outputs),
            "cosine_min": min(m.cosine_min for m in self.outputs),
            "sqnr_db": min(m.sqnr_db for m in self.outputs),
            "top1_agreement": min(top1) if top1 else None,
            **self.task_metrics(),
        }

    def task_metrics(self) -> dict:
        """The task's own figures, worst over the outputs (only those the task has)."""
        pixels = [m.pixel_agreement for m in self.outputs if m.pixel_agreement is not None]
        rel = [m.rel_error for m in self.outputs if m.rel_error is not None]
        out = {"pixel_agreement": min(pixels)} if pixels else {}
        if rel:
            out["rel_error"] = max(rel)
        d = self.detection
        if d is not None:
            out.update(matched_fraction=d.matched_fraction, missing_boxes=d.missing, extra_boxes=d.extra,
                       mean_iou=d.mean_iou, score_err_rel=d.score_err_rel, label_agreement=d.label_agreement)
        return out

    def to_dict(self) -> dict:
        return _finite({
            "target": self.target, "precision": self.precision, "status": self.status, "file": self.file,
            "size_bytes": self.size_bytes, "latency_ms": self.latency_ms, "n_samples": self.n_samples,
            "tolerance": asdict(self.tolerance) if self.tolerance else None,
            "task": self.task, "task_tolerance": asdict(self.task_tolerance) if self.task_tolerance else None,
            "metrics": self.summary_metrics(),
            **({"detection": self.detection.to_dict()} if self.detection else {}),
            "outputs": {m.name: {**asdict(m), "max_abs_rel": m.max_abs_rel} for m in self.outputs},
            "failures": self.failures, "error": self.error, "notes": self.notes, "log": self.log,
            **self.extra,
        })


def compare(target: str, precision: str, reference: list[np.ndarray], outputs: list[np.ndarray],
            names: list[str], tol: Tolerance, classification: bool | Task, output_scales: list[float] | None = None,
            task_tol: TaskTolerance | None = None, **fields) -> ParityResult:
    """Compare stacked outputs with stacked reference outputs; status pass or fail.

    ``classification``: the Task (edgekit.tasks) the outputs are judged as; a bool means
    classification (True) or embedding (False), as before tasks existed. Detection's boxes and
    scores are judged after IoU matching, not element by element (their metrics are still reported).
    ``task_tol``: the task's criteria, when not the ones ``task_tolerance(tol)`` derives."""
    task = as_task(classification)
    tt = task_tol or task_tolerance(tol)
    res = ParityResult(target, precision, "pass", tolerance=tol, n_samples=len(reference[0]), task=str(task),
                       task_tolerance=tt, **fields)
    if len(outputs) != len(reference):
        res.status = "fail"
        res.failures.append(f"the artifact returns {len(outputs)} outputs, the reference {len(reference)}")
        return res
    scales = list(output_scales) if output_scales else [None] * len(names)
    same = {}
    for name, ref, got, step in zip(names, reference, outputs, scales):
        if ref.shape != got.shape:
            res.failures.append(f"{name}: shape {got.shape[1:]} differs from the reference's {ref.shape[1:]}")
            continue
        same[name] = (ref, got)
        role = task.role(name, ref.shape[1:])
        m = output_metrics(name, ref, got, role == "class", step, role)
        res.outputs.append(m)
        if role not in ("boxes", "scores"):
            res.failures.extend(check(m, tol, tt))
    if task.name == "detection" and task.boxes in same and task.scores in same:
        (boxes_ref, boxes_got), (scores_ref, scores_got) = same[task.boxes], same[task.scores]
        score_tol = tt.max_score_err_rel * float(np.abs(scores_ref).max(initial=0.0))
        res.detection = detection_metrics(task, boxes_ref, boxes_got, scores_ref, scores_got, score_tol)
        if not _within_steps([m for m in res.outputs if m.name in (task.boxes, task.scores)], tol):
            res.failures.extend(check_detection(res.detection, tt))
    if res.failures:
        res.status = "fail"
    return res


def _within_steps(metrics: list[OutputMetrics], tol: Tolerance) -> bool:
    """Quantized outputs (boxes and scores) all within the step bound: judged in steps, as ``check``
    judges any quantized output, so IoU matching of near-tied boxes cannot contradict the step bound."""
    return bool(metrics) and tol.max_steps is not None and all(
        m.max_steps is not None and np.isfinite(m.max_abs) and m.max_steps <= tol.max_steps for m in metrics)


def as_task(value: bool | Task) -> Task:
    """A Task, or a bool as callers passed before tasks: True classification, False embedding."""
    if isinstance(value, Task):
        return value
    return Task("classification" if value else "embedding")


def cost_metrics(fp32_reference: list[np.ndarray], outputs: list[np.ndarray], names: list[str],
                 classification: bool | Task) -> dict:
    """Compression cost: the deployed outputs against the FP32 original, per output (worst first);
    a detection's matched fraction, mean IoU and score error sit with its boxes output."""
    task = as_task(classification)
    out = {}
    for name, ref, got in zip(names, fp32_reference, outputs):
        role = task.role(name, ref.shape[1:])
        m = output_metrics(name, ref, got, role == "class", role=role)
        out[name] = {"sqnr_db": m.sqnr_db, "cosine_min": m.cosine_min, "top1_agreement": m.top1_agreement,
                     "max_abs": m.max_abs, "mean_abs": m.mean_abs}
        out[name].update({k: v for k, v in (("pixel_agreement", m.pixel_agreement), ("rel_error", m.rel_error)) if v is not None})
    if task.name == "detection" and task.boxes in names and task.scores in names:
        b, s = names.index(task.boxes), names.index(task.scores)
        if fp32_reference[b].shape == outputs[b].shape and fp32_reference[s].shape == outputs[s].shape:
            d = detection_metrics(task, fp32_reference[b], outputs[b], fp32_reference[s], outputs[s])
            out[task.boxes].update(matched_fraction=d.matched_fraction, mean_iou=d.mean_iou, score_err_rel=d.score_err_rel)
    return out


def _finite(obj):
    """JSON has no inf/nan: write them as strings "inf", "-inf", "nan"."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
