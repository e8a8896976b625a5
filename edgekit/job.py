"""ExportJob: one `edgekit export` (what to export, to which targets, verified on which data, written
where), validated field by field at construction: the API, the CLI and run configs build it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.data import DEFAULT_SAMPLES
from edgekit.errors import UserError
from edgekit.isolate import DEFAULT_TIMEOUT_S
from edgekit.model_source import check_model_arg
from edgekit.tasks import parse as parse_task

if TYPE_CHECKING:
    from edgekit.compress.stage import CompressConfig


@dataclass(frozen=True)
class ExportJob:
    """One `edgekit export`: what to export, to which targets, verified on which data, written where."""

    model: Any  # a built-in name, "file.py:factory", a .pt2 path, an nn.Module or an ExportedProgram
    targets: str | tuple[str, ...] = "all"
    data: Any = None  # a folder, or arrays / an iterable (edgekit.data.samples_from); default: the built-in model's folder
    out: str | None = None  # default: bundles/<model name>
    samples: int = DEFAULT_SAMPLES  # verification samples (quantized: taken from the held-out part)
    timeout_s: float = DEFAULT_TIMEOUT_S  # per target runtime subprocess
    quant: str = "fp32"  # "fp32", "int8" (static PTQ with edgekit's recipe), "fp16" or "dynamic" (weights only)
    calibrator: str | None = None  # int8: minmax, percentile, entropy, mse (default: the recipe's)
    percentile: float | None = None  # int8 with the percentile calibrator
    keep_float: tuple[str, ...] = ()  # int8: module names or class names kept in float
    equalize: bool = False  # int8: cross-layer equalization (Nagel et al. 2019)
    bias_correction: bool | None = None  # int8: empirical bias correction (default: the model's measured setting, else off)
    float_io: bool = False  # int8 tflite: float32 model I/O instead of int8
    rounding: str | None = None  # int8 weights: "nearest" or "adaround" (default: the model's measured setting, else nearest)
    minmax_output: bool | None = None  # int8: model outputs ranged by min/max, never clipped (default: the model's measured setting, else off)
    # int8: the int8-sensitive layers stay float within this share of the weight bytes (edgekit.quant.mixed;
    # default: the model's measured setting, else 0 = off)
    float_share: float | None = None
    compress: "CompressConfig | None" = None  # edgekit.compress.stage run on the model before export ([compress] of a run config)
    example_inputs: Any = None  # a tensor or a tuple of tensors, for a model given as an nn.Module
    task: str | None = None  # edgekit.tasks: classification, segmentation, detection[:...], regression, embedding; None: inferred
    # edgekit.dynamic: "--dynamic" strings (e.g. ("batch=1..8",)) or torch.export's {input: {axis: Dim}}; None: fixed shapes
    dynamic_shapes: Any = None
    # edgekit.budget: the most a quantized artifact may cost vs FP32 ("agreement>=0.99", {"sqnr": 30}, a Budget);
    # recorded in the manifest and checked on every quantized artifact, by export and by verify
    budget: Any = None
    # int8: quantization-aware training steps (edgekit.quant.qat) on the calibration part before every
    # target quantizes; the learned weights and input ranges go to every target whose int8 grid the student
    # simulates. 0: post-training only; None: the built-in model's measured setting, else 0
    qat_steps: int | None = None

    def __post_init__(self):
        """Validated at construction (a run config is untrusted input): E-ARGS names the field."""
        for name, kinds in _JOB_TYPES.items():
            value = getattr(self, name)
            if not _has_type(value, kinds):
                want = " or ".join(k.__name__ if k is not type(None) else "none" for k in kinds)
                raise UserError("E-ARGS", f"{name} = {value!r:.80} is a {type(value).__name__}, not {want}",
                                f"give {name} as {want}")
        check_model_arg(self.model)
        if self.compress is not None and type(self.compress).__name__ != "CompressConfig":
            raise UserError("E-ARGS", f"compress is a {type(self.compress).__name__}, not an edgekit.compress.CompressConfig",
                            "pass compress=CompressConfig(steps=(...), ...)")
        if self.data is not None and (isinstance(self.data, (bool, int, float)) or not (
                isinstance(self.data, (str, os.PathLike)) or hasattr(self.data, "__iter__") or hasattr(self.data, "__array__"))):
            raise UserError("E-ARGS", f"data = {self.data!r:.80} is a {type(self.data).__name__}, not a folder, arrays or an iterable",
                            "pass a folder path, a numpy array (first axis = samples), a list of arrays, a dict of "
                            "arrays keyed by input name, or a DataLoader")
        if isinstance(self.targets, tuple) and not all(isinstance(t, str) for t in self.targets):
            raise UserError("E-ARGS", f"targets {self.targets!r:.80} must be names (strings)", "e.g. targets = [\"tflite\", \"onnx\"]")
        if not all(isinstance(k, str) for k in self.keep_float):
            raise UserError("E-ARGS", f"keep_float {self.keep_float!r:.80} must be layer names (strings)", "e.g. keep_float = [\"classifier\"]")
        if self.percentile is not None and not 0 < self.percentile <= 100:
            raise UserError("E-ARGS", f"percentile {self.percentile} is outside (0, 100]", "pass e.g. --percentile 99.99")
        check_samples(self.samples)
        check_timeout(self.timeout_s)
        if self.qat_steps:
            from edgekit.quant.qat import QATSettings

            QATSettings(steps=self.qat_steps)  # E-ARGS for a count out of range, before any work
        if self.task is not None:
            parse_task(self.task)  # E-ARGS: an unknown task or option, before any work
        if self.budget is not None:
            from edgekit.budget import Budget

            object.__setattr__(self, "budget", Budget.of(self.budget))  # E-ARGS for a malformed budget, before any work
            if self.quant == "fp32":
                raise UserError("E-ARGS", f"--budget {self.budget.describe()} bounds what quantization costs, and "
                                "--quant is fp32", "add --quant int8 (or fp16, dynamic), or drop --budget")
        if self.dynamic_shapes is not None and not isinstance(self.dynamic_shapes, (str, tuple, list, dict)):
            raise UserError("E-ARGS", f"dynamic_shapes is a {type(self.dynamic_shapes).__name__}, not --dynamic strings "
                            "or torch.export's dynamic_shapes", "pass e.g. ('batch=1..8',) or {'x': {0: Dim('batch', min=1, max=8)}}")


_JOB_TYPES: dict[str, tuple[type, ...]] = {
    "targets": (str, tuple), "out": (str, type(None)),
    "samples": (int,), "timeout_s": (int, float), "quant": (str,), "calibrator": (str, type(None)),
    "percentile": (int, float, type(None)), "keep_float": (tuple,), "equalize": (bool,), "bias_correction": (bool, type(None)),
    "float_io": (bool,), "rounding": (str, type(None)), "minmax_output": (bool, type(None)),
    "float_share": (int, float, type(None)), "task": (str, type(None)),
    "qat_steps": (int, type(None)),
}


def _has_type(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to a user
        return False
    return isinstance(value, kinds)


MAX_SAMPLES = 100_000  # verification samples: far beyond what parity needs, small enough to hold in memory
MAX_TIMEOUT_S = 24 * 3600.0


def check_samples(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise UserError("E-ARGS", f"--samples {n!r} is not a whole number in 1..{MAX_SAMPLES}",
                        f"pass --samples between 1 and {MAX_SAMPLES}")


def check_timeout(seconds, flag: str = "--timeout") -> None:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise UserError("E-ARGS", f"{flag} {seconds!r} is not a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]",
                        f"pass {flag} with a positive number of seconds, at most {MAX_TIMEOUT_S:.0f}")
