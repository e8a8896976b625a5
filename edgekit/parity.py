"""ParityResult: per target and per output, how far an artifact's outputs are from a reference.

Every failed criterion is collected (never the first one only) and the result is serialisable.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from edgekit.converters.base import Tolerance


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

    @property
    def max_abs_rel(self) -> float:
        return self.max_abs / self.ref_max_abs if self.ref_max_abs > 0 else (0.0 if self.max_abs == 0 else math.inf)


def output_metrics(name: str, ref: np.ndarray, got: np.ndarray, classification: bool,
                   step: float | None = None) -> OutputMetrics:
    """Metrics of one stacked output; ``step``: the output's quantization scale, if it has one."""
    ref = np.asarray(ref, np.float64)
    got = np.asarray(got, np.float64)
    err = got - ref
    flat_r, flat_g = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
    norms = np.linalg.norm(flat_r, axis=1) * np.linalg.norm(flat_g, axis=1)
    dots = (flat_r * flat_g).sum(axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(np.abs(flat_r - flat_g).max(axis=1) == 0, 1.0, 0.0))
    noise = float((err ** 2).sum())
    signal = float((ref ** 2).sum())
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    top1 = float((flat_r.argmax(axis=1) == flat_g.argmax(axis=1)).mean()) if classification else None
    steps = (float(np.abs(err).max() / step), float(np.abs(err).mean() / step)) if step else (None, None)
    return OutputMetrics(name, tuple(got.shape), float(np.abs(err).max()), float(np.abs(err).mean()),
                         float(np.abs(ref).max()), float(cos.min()), sqnr, top1, *steps)


def check(m: OutputMetrics, tol: Tolerance) -> list[str]:
    """The criteria this output misses, each as a readable sentence.

    A quantized output with a known quantization step is judged in steps: within the step bound it
    passes whatever its absolute range, cosine or top-1 (a 1-step difference on a near-constant
    output is what integer kernels do, and the relative bounds would contradict the step bound);
    beyond it, every missed criterion is listed."""
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
        }

    def to_dict(self) -> dict:
        return _finite({
            "target": self.target, "precision": self.precision, "status": self.status, "file": self.file,
            "size_bytes": self.size_bytes, "latency_ms": self.latency_ms, "n_samples": self.n_samples,
            "tolerance": asdict(self.tolerance) if self.tolerance else None,
            "metrics": self.summary_metrics(),
            "outputs": {m.name: {**asdict(m), "max_abs_rel": m.max_abs_rel} for m in self.outputs},
            "failures": self.failures, "error": self.error, "notes": self.notes, "log": self.log,
            **self.extra,
        })


def compare(target: str, precision: str, reference: list[np.ndarray], outputs: list[np.ndarray],
            names: list[str], tol: Tolerance, classification: bool, output_scales: list[float] | None = None,
            **fields) -> ParityResult:
    """Compare stacked outputs with stacked reference outputs; status pass or fail."""
    res = ParityResult(target, precision, "pass", tolerance=tol, n_samples=len(reference[0]), **fields)
    if len(outputs) != len(reference):
        res.status = "fail"
        res.failures.append(f"the artifact returns {len(outputs)} outputs, the reference {len(reference)}")
        return res
    scales = list(output_scales) if output_scales else [None] * len(names)
    for name, ref, got, step in zip(names, reference, outputs, scales):
        if ref.shape != got.shape:
            res.failures.append(f"{name}: shape {got.shape[1:]} differs from the reference's {ref.shape[1:]}")
            continue
        m = output_metrics(name, ref, got, classification, step)
        res.outputs.append(m)
        res.failures.extend(check(m, tol))
    if res.failures:
        res.status = "fail"
    return res


def cost_metrics(fp32_reference: list[np.ndarray], outputs: list[np.ndarray], names: list[str],
                 classification: bool) -> dict:
    """Compression cost: the deployed outputs against the FP32 original, per output (worst first)."""
    out = {}
    for name, ref, got in zip(names, fp32_reference, outputs):
        m = output_metrics(name, ref, got, classification)
        out[name] = {"sqnr_db": m.sqnr_db, "cosine_min": m.cosine_min, "top1_agreement": m.top1_agreement,
                     "max_abs": m.max_abs, "mean_abs": m.mean_abs}
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
