"""The Python API: ``edgekit.export(...)`` and ``edgekit.verify(...)`` return an ``edgekit.Bundle``.

The command line is a thin layer over these two functions (edgekit.cli): every option of
``edgekit export`` / ``edgekit verify`` is a keyword here with the same meaning.

    import edgekit
    bundle = edgekit.export(model, example_inputs, targets=["tflite", "onnx"], data=arrays, out="bundles/m")
    bundle.passed                      # every requested target passed
    bundle.results["tflite"].status    # "pass" | "fail" | "error" | "unsupported" | "not runnable on host"
    bundle.results["tflite"].metrics   # max_abs, sqnr_db, top1_agreement, ... (as in report.json)
    outs = bundle.run("tflite", x)     # the exported file in its runtime (confined subprocess)
    edgekit.verify("bundles/m", data=other)   # -> Bundle
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.errors import UserError


@dataclass(frozen=True)
class TargetResult:
    """One target's verdict, as report.json holds it (``raw``), with the fields users read most."""

    key: str  # "tflite", or "tflite:int8" for a quantized artifact
    target: str
    precision: str
    status: str
    metrics: dict
    error: dict | None
    failures: tuple[str, ...]
    notes: tuple[str, ...]
    file: str | None
    raw: dict = field(repr=False)

    @classmethod
    def from_report(cls, key: str, d: dict) -> "TargetResult":
        return cls(key, key.split(":")[0].split("@")[0], d.get("precision", "fp32"), d["status"], d.get("metrics") or {},
                   d.get("error"), tuple(d.get("failures") or ()), tuple(d.get("notes") or ()), d.get("file"), d)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class Results(dict):
    """report key -> TargetResult; a plain target name also finds its only artifact ("tflite" for
    "tflite:int8" when the bundle has one tflite artifact)."""

    def __missing__(self, name: str) -> TargetResult:
        hits = [r for r in self.values() if r.target == name]
        if len(hits) == 1:
            return hits[0]
        raise KeyError(f"{name!r}: the results hold {', '.join(self) or 'nothing'}")


class Bundle:
    """A bundle folder and its verdict: what ``export`` wrote or ``verify`` checked."""

    def __init__(self, path: Path, report: dict, errors: dict | None = None):
        self.path = Path(path)
        self.report = report
        self.results = Results((k, TargetResult.from_report(k, v)) for k, v in report["targets"].items())
        self._errors = errors or {}

    def __repr__(self) -> str:
        s = self.report["summary"]
        return f"<edgekit.Bundle {self.path} {s['status']}: " + ", ".join(f"{k} {r.status}" for k, r in self.results.items()) + ">"

    @property
    def passed(self) -> bool:
        """True when every target that had to pass passed (see the README's exit-code policy)."""
        return self.report["summary"]["status"] == "pass"

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def manifest(self) -> dict:
        from edgekit import bundle as B

        return B.read_manifest(self.path)

    def run(self, target: str, *inputs, timeout_s: float | None = None, **named) -> list[np.ndarray]:
        """Run the bundle's artifact for ``target`` (a name or a report key) on ``inputs`` (one array or
        tensor per model input, with the ModelSpec's shape, or N samples stacked along the batch
        axis; or by input name: ``run("onnx", input_ids=ids, attention_mask=mask)``) in its runtime,
        in a confined subprocess; -> one numpy array per output."""
        from edgekit import manifest as M
        from edgekit.isolate import DEFAULT_TIMEOUT_S, run_artifact

        m = M.read(self.path)
        entry = _artifact(m, target)
        stacked = _stack_inputs(m.spec, _positional(m.spec, inputs, named))
        outcome = run_artifact(entry["target"], {**entry, "files": [f["path"] for f in entry["files"]]}, self.path,
                               stacked, timeout_s=timeout_s or DEFAULT_TIMEOUT_S, warmup=0)
        if outcome.error:
            raise UserError(outcome.error["code"], outcome.error["message"], outcome.error["fix"])
        return [o.reshape((-1, *o.shape[2:])) for o in outcome.outputs]


def _artifact(m, target: str) -> dict:
    entries = [e for e, _ in m.artifacts]
    keys = {(e["target"] if e["precision"] == "fp32" else f"{e['target']}:{e['precision']}"): e for e in entries}
    if target in keys:
        return keys[target]
    hits = [e for e in entries if e["target"] == target]
    if len(hits) == 1:
        return hits[0]
    raise UserError("E-TARGET-UNKNOWN", f"the bundle has no single artifact for {target!r}",
                    f"pass one of {', '.join(keys) or '(none)'}")


def _positional(spec, inputs: tuple, named: dict) -> tuple:
    """The inputs in the spec's order, given positionally or by name (not both)."""
    if not named:
        return inputs
    unknown = sorted(set(named) - set(spec.input_names))
    if inputs or unknown or len(named) != len(spec.inputs):
        raise UserError("E-ARGS", f"inputs by name must be exactly the model's ({', '.join(spec.input_names)}); got "
                        f"{len(inputs)} positional and {', '.join(sorted(named))}", "pass every input by name, or all positionally")
    return tuple(named[n] for n in spec.input_names)


def _stack_inputs(spec, inputs) -> list[np.ndarray]:
    if len(inputs) != len(spec.inputs):
        raise UserError("E-ARGS", f"the model takes {len(spec.inputs)} input(s) ({', '.join(spec.input_names)}), "
                        f"{len(inputs)} given", "pass one array per model input")
    arrays = [_as_array(x, t.name) for t, x in zip(spec.inputs, inputs)]
    if spec.dynamic:  # one sample at another size of the model's ranges (e.g. a batch of 3)
        from edgekit.dynamic import meta, shape_problem

        if not any(shape_problem(meta(spec.dynamic), t.name, t.shape, a.shape) or np.dtype(a.dtype) != np.dtype(t.dtype)
                   for t, a in zip(spec.inputs, arrays)):
            return [a[None] for a in arrays]
    out = []
    for t, a in zip(spec.inputs, arrays):
        sample = tuple(t.shape[1:])
        if a.shape[1:] != sample or np.dtype(a.dtype) != np.dtype(t.dtype):
            raise UserError("E-DATA-SHAPE", f"input {t.name!r} has shape {a.shape} and dtype {a.dtype}; the model "
                            f"takes (N, {', '.join(map(str, sample))}) {t.dtype}", f"pass {t.dtype} arrays of that shape")
        out.append(a.reshape(len(a), *t.shape))
    return out


def _as_array(x, name: str) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise UserError("E-ARGS", f"input {name!r} is a {type(x).__name__}, not an array or a tensor",
                        "pass numpy arrays or torch tensors")
    return np.ascontiguousarray(x)


def export(model: Any, example_inputs: Any = None, *, targets: str | list[str] | tuple[str, ...] = "all",
           data: Any = None, quant: str = "fp32", out: str | Path | None = None, samples: int | None = None,
           timeout_s: float | None = None, calibrator: str | None = None, percentile: float | None = None,
           keep_float: str | list[str] | tuple[str, ...] = (), equalize: bool = False, bias_correction: bool | None = None,
           float_io: bool = False, rounding: str | None = None, minmax_output: bool | None = None,
           float_share: float | None = None, compress=None, task=None, dynamic_shapes=None, budget=None,
           qat_steps: int | None = None, progress: bool | Callable = False, command: str = "") -> Bundle:
    """Export ``model`` to ``targets``, run every file in its runtime against its reference on ``data``,
    and write the bundle to ``out``; -> the Bundle (``.passed``, ``.results``, ``.run``).

    model: an nn.Module (with example_inputs: a tensor or a tuple of tensors), a
    torch.export.ExportedProgram, a path to a .pt2 file, "file.py:factory", or a built-in name.
    data: a folder of samples, a numpy array (first axis = samples), a list of arrays or of tuples of
    arrays (one per input), or an iterable such as a torch DataLoader (batches are split into samples;
    extra items such as labels are ignored). Default: the built-in model's calibration_data/ folder.
    task: what the outputs mean, so how parity judges them (edgekit.tasks): "classification",
    "segmentation", "detection" (or "detection:boxes=NAME,scores=NAME[,format=cxcywh][,min_score=X]"),
    "regression", "embedding", or an edgekit.tasks.Task. Default: inferred from the outputs.
    dynamic_shapes: axes whose size varies (edgekit.dynamic), in torch.export's notation
    ({"x": {0: Dim("batch", min=1, max=8)}}) or as --dynamic strings ("batch=1..8", "x.2=160..320/32");
    the manifest records the ranges and every target is verified at their bounds and middle.
    budget: the most a quantized artifact may cost vs FP32 (edgekit.budget): "agreement>=0.99",
    "sqnr>=30", "accuracy_drop<=0.5" (labelled data), a dict {"sqnr": 30} or a Budget; recorded in the
    manifest, a quantized artifact that misses it fails (here and in every later verify).
    float_share: with quant="int8", mixed precision (edgekit.quant.mixed): the layers whose int8 error
    is far out of proportion to their size stay float, within this share of the int8 weight bytes
    (0: off; None: the built-in model's measured setting, else off).
    qat_steps: with quant="int8", N steps of quantization-aware training (edgekit.quant.qat) on the
    calibration part: the fake-quant model is distilled from the FP32 one, and its learned weights and
    input ranges go to every target whose int8 grid the student simulates (not ncnn, which exports the
    model before training). 0: post-training quantization only; None: the built-in model's measured
    setting (mobilenet_v2: 24 steps), else 0. Cached by content hash, like AdaRound.
    progress: True prints progress lines on stderr; a callable receives (stage, target).
    Wrong types and values raise edgekit.errors.UserError with the same codes as the CLI.
    """
    from edgekit.data import DEFAULT_SAMPLES
    from edgekit.isolate import DEFAULT_TIMEOUT_S
    from edgekit.job import ExportJob
    from edgekit.pipeline import export_bundle

    job = ExportJob(model=model, example_inputs=example_inputs, targets=_names(targets, "targets"), data=data,
                    out=None if out is None else str(out), samples=DEFAULT_SAMPLES if samples is None else samples,
                    timeout_s=DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s, quant=quant, calibrator=calibrator,
                    percentile=percentile, keep_float=_names(keep_float, "keep_float", split=True), equalize=equalize,
                    bias_correction=bias_correction, float_io=float_io, rounding=rounding, minmax_output=minmax_output,
                    float_share=float_share, compress=compress, task=_task(task), dynamic_shapes=dynamic_shapes,
                    budget=budget, qat_steps=qat_steps)
    outcome = export_bundle(job, _progress(progress), command)
    return Bundle(outcome.bundle, outcome.report, outcome.errors)


def verify(bundle: str | Path | Bundle, *, data: Any = None, samples: int | None = None, timeout_s: float | None = None,
           total_timeout_s: float | None = None, arm: str | list[str] | tuple[str, ...] = (), budget=None,
           progress: bool | Callable = False, command: str = "") -> Bundle:
    """Re-run every artifact of ``bundle`` against the bundle's own reference (on its stored inputs,
    or on ``data``) without writing into it; -> the Bundle with this run's verdict. The bundle is
    treated as untrusted input (README: Security model). budget: as in ``export``, judged instead
    of the one the manifest records."""
    from edgekit.isolate import DEFAULT_TIMEOUT_S
    from edgekit.verification import DEFAULT_TOTAL_TIMEOUT_S, verify_bundle

    path = bundle.path if isinstance(bundle, Bundle) else bundle
    if not isinstance(path, (str, Path)):
        raise UserError("E-BUNDLE-INVALID", f"bundle is a {type(path).__name__}, not a folder path", "pass the folder export wrote")
    cpus = _names(arm, "arm", split=True) if arm else ()
    outcome = verify_bundle(path, data, samples, DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s, _progress(progress),
                            command, tuple(cpus), total_timeout_s=DEFAULT_TOTAL_TIMEOUT_S if total_timeout_s is None else total_timeout_s,
                            budget=budget)
    return Bundle(outcome.bundle, outcome.report, outcome.errors)


def _names(value, what: str, split: bool = False) -> str | tuple[str, ...]:
    """A comma-separated string or a list of names -> what ExportJob takes (targets keeps "all")."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip()) if split else value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UserError("E-ARGS", f"{what} is a {type(value).__name__}, not a name or a list of names",
                    f"pass {what} as a string (comma-separated) or a list of strings")


def _task(task) -> str | None:
    """A Task as its string (what ExportJob and a run config hold); anything else as given (ExportJob checks it)."""
    from edgekit.tasks import Task

    return str(task) if isinstance(task, Task) else task


def _progress(progress):
    from edgekit.progress import QUIET, Progress

    if progress is True:
        return Progress()
    if progress is False or progress is None:
        return QUIET
    if callable(progress):
        return progress
    raise UserError("E-ARGS", f"progress is a {type(progress).__name__}", "pass True, False or a callable(stage, target)")


def run(config: str | Path | None = None, *, task=None, progress: bool | Callable = False, command: str = "") -> Bundle:
    """Run the job of a TOML run config ([export] table, optional [compress]); None: the shipped
    default (MobileNetV2 on every target). task: as in ``export``, replacing the config's. -> the Bundle."""
    import dataclasses

    from edgekit.config import load_config
    from edgekit.pipeline import export_bundle

    job = load_config(config)
    if task is not None:
        job = dataclasses.replace(job, task=_task(task))
    outcome = export_bundle(job, _progress(progress), command)
    return Bundle(outcome.bundle, outcome.report, outcome.errors)
