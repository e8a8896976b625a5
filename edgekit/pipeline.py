"""The export and verify pipelines: model -> reference -> every target -> parity -> bundle + report."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgekit import bundle as B
from edgekit import destination as D
from edgekit import manifest as M
from edgekit.converters import Artifact, Converter, all_converters, get, resolve_targets
from edgekit.data import DEFAULT_SAMPLES, CalibrationSet, load_samples
from edgekit.dynamic import export_example, torch_shapes
from edgekit.dynamic import resolve as resolve_dynamic
from edgekit.capture import MAX_LOG_CHARS, captured
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.isolate import DEFAULT_TIMEOUT_S, run_artifact
from edgekit.model_source import check_model_arg, load_model
from edgekit.parity import NOT_RUNNABLE, UNSUPPORTED, ParityResult, compare, cost_metrics
from edgekit.progress import QUIET, Progress
from edgekit.reference import export_program, load_reference, run_reference, save_reference
from edgekit.html_report import write_html
from edgekit.size_probes import check_sizes, size_probes
from edgekit.report import abs_errors, build_report, markdown, report_key
from edgekit.spec import ModelSpec, TextPreprocess
from edgekit.tasks import parse as parse_task
from edgekit.tasks import resolve as resolve_task

if TYPE_CHECKING:
    from edgekit.compress.stage import CompressConfig

PER_LAYER_SAMPLES = 4  # quantized artifacts: samples the layer-by-layer fidelity view runs on


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
    bias_correction: bool = False  # int8: empirical bias correction
    float_io: bool = False  # int8 tflite: float32 model I/O instead of int8
    rounding: str | None = None  # int8 weights: "nearest" or "adaround" (default: the model's measured setting, else nearest)
    minmax_output: bool | None = None  # int8: model outputs ranged by min/max, never clipped (default: the model's measured setting, else off)
    compress: "CompressConfig | None" = None  # edgekit.compress.stage run on the model before export ([compress] of a run config)
    example_inputs: Any = None  # a tensor or a tuple of tensors, for a model given as an nn.Module
    task: str | None = None  # edgekit.tasks: classification, segmentation, detection[:...], regression, embedding; None: inferred
    # edgekit.dynamic: "--dynamic" strings (e.g. ("batch=1..8",)) or torch.export's {input: {axis: Dim}}; None: fixed shapes
    dynamic_shapes: Any = None

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
        _check_samples(self.samples)
        check_timeout(self.timeout_s)
        if self.task is not None:
            parse_task(self.task)  # E-ARGS: an unknown task or option, before any work
        if self.dynamic_shapes is not None and not isinstance(self.dynamic_shapes, (str, tuple, list, dict)):
            raise UserError("E-ARGS", f"dynamic_shapes is a {type(self.dynamic_shapes).__name__}, not --dynamic strings "
                            "or torch.export's dynamic_shapes", "pass e.g. ('batch=1..8',) or {'x': {0: Dim('batch', min=1, max=8)}}")


_JOB_TYPES: dict[str, tuple[type, ...]] = {
    "targets": (str, tuple), "out": (str, type(None)),
    "samples": (int,), "timeout_s": (int, float), "quant": (str,), "calibrator": (str, type(None)),
    "percentile": (int, float, type(None)), "keep_float": (tuple,), "equalize": (bool,), "bias_correction": (bool,),
    "float_io": (bool,), "rounding": (str, type(None)), "minmax_output": (bool, type(None)), "task": (str, type(None)),
}


def _has_type(value, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in kinds:  # True is an int to Python, not to a user
        return False
    return isinstance(value, kinds)


@dataclass
class Outcome:
    bundle: Path
    report: dict
    results: list[ParityResult] = field(default_factory=list)
    errors: dict[str, np.ndarray] = field(default_factory=dict)  # per result key: |artifact - reference|

    @property
    def exit_code(self) -> int:
        return 0 if self.report["summary"]["status"] == "pass" else 1


MAX_SAMPLES = 100_000  # verification samples: far beyond what parity needs, small enough to hold in memory
MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_TOTAL_TIMEOUT_S = 4 * 3600.0  # a whole verify, ARM emulation included


def _check_samples(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise UserError("E-ARGS", f"--samples {n!r} is not a whole number in 1..{MAX_SAMPLES}",
                        f"pass --samples between 1 and {MAX_SAMPLES}")


def check_timeout(seconds, flag: str = "--timeout") -> None:
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise UserError("E-ARGS", f"{flag} {seconds!r} is not a number of seconds in (0, {MAX_TIMEOUT_S:.0f}]",
                        f"pass {flag} with a positive number of seconds, at most {MAX_TIMEOUT_S:.0f}")


@dataclass
class Checked:
    """One artifact run and judged: the result, the artifact's outputs, the fidelity reference."""

    result: ParityResult
    outputs: list[np.ndarray] | None  # None on error or when not runnable here
    reference: list[np.ndarray]


def fidelity_reference(art: Artifact, root: Path, vset: CalibrationSet, fp32_reference: list[np.ndarray]) -> list[np.ndarray]:
    """What the artifact must compute: the FP32 reference, or for a quantized artifact the PyTorch
    float simulation of exactly its quantization (the program named in meta["reference"])."""
    if not art.meta.get("reference"):
        return fp32_reference
    from edgekit.quant.reference import load_quantized_reference

    path = root / art.meta["reference"]
    try:
        program = load_quantized_reference(path)
    except UserError:
        raise
    except Exception as exc:  # a damaged program file: the check cannot run, say which file
        raise UserError("E-BUNDLE-INVALID", f"cannot load the quantized reference {path.name}: {type(exc).__name__}: {str(exc)[:300]}",
                        "re-export the bundle") from exc
    return run_reference(program.module(), vset.samples)


def localisation(art: Artifact, root: Path, vset: CalibrationSet, float_model) -> dict:
    """Per-layer SQNR of the artifact's quantized reference vs FP32 and the --keep-float suggestion
    (edgekit.quant.localise), on the first few verification samples."""
    from edgekit.quant.localise import localise, suggest_keep_float
    from edgekit.quant.reference import load_quantized_reference

    try:
        gm = load_quantized_reference(root / art.meta["reference"]).module()
        rows = localise(gm, float_model, vset.samples[:PER_LAYER_SAMPLES])
    except Exception as exc:  # diagnostics only: the report says it could not be computed, and why
        return {"rows": [], "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return {"rows": rows, "suggest": suggest_keep_float(rows)}


def verify_artifact(conv: Converter, art: Artifact, root: Path, vset: CalibrationSet,
                    fp32_reference: list[np.ndarray], spec: ModelSpec, timeout_s: float, float_model=None,
                    probes: list = ()) -> Checked:
    """Run one artifact in its runtime subprocess; judge conversion fidelity against its reference
    and, for a quantized artifact, report compression cost against the FP32 original apart (with
    ``float_model``, also layer by layer: where the precision is lost). ``probes``: a model with
    dynamic shapes is also judged at those sizes (edgekit.size_probes)."""
    info = conv.info
    shipped = [f for f in art.files if f != art.meta.get("reference")]  # the reference is edgekit's, not the app's
    size = sum((root / f).stat().st_size for f in shipped if (root / f).is_file())
    notes = [f"deprecated: {info.deprecated}"] if info.deprecated else []
    notes += [f"quantization: {n}" for n in (art.meta.get("recipe_summary"), *art.meta.get("quant_notes", ())) if n]
    if info.not_runnable:
        return Checked(ParityResult(info.name, art.precision, NOT_RUNNABLE, art.path, size, notes=[info.not_runnable, *notes]),
                       None, fp32_reference)
    try:
        reference = fidelity_reference(art, root, vset, fp32_reference)
    except UserError as exc:
        return Checked(ParityResult(info.name, art.precision, "error", art.path, size, error=exc.to_dict(), notes=notes),
                       None, fp32_reference)
    outcome = run_artifact(info.name, art.to_dict(), root, vset.stacked(), timeout_s=timeout_s,
                           per_layer=PER_LAYER_SAMPLES if art.meta.get("reference") else 0)
    if outcome.error:
        res = ParityResult(info.name, art.precision, "error", art.path, size, None, len(vset),
                           info.tolerances.get(art.precision), error=outcome.error, notes=notes, log=outcome.log)
        res.extra["confinement"] = {"confined": outcome.confined, "note": outcome.confinement_note}
        return Checked(res, None, reference)
    task = spec.task_spec
    if not outcome.confined:  # never silent: the report and the console say the runtime ran unconfined
        notes.append(f"security: the runtime ran {outcome.confinement_note}")
    res = compare(info.name, art.precision, reference, outcome.outputs, spec.output_names, info.tolerances[art.precision],
                  task, art.meta.get("output_scales"), file=art.path, size_bytes=size,
                  latency_ms=outcome.latency_ms, notes=notes)
    if reference is not fp32_reference:
        res.extra["compression"] = cost_metrics(fp32_reference, outcome.outputs, spec.output_names, task)
        if float_model is not None:
            res.extra["localisation"] = localisation(art, root, vset, float_model)
    res.extra["confinement"] = {"confined": outcome.confined, "note": outcome.confinement_note}
    for key in ("per_layer", "per_layer_error"):
        if key in outcome.extra:
            res.extra[key] = outcome.extra[key]
    if probes:
        _judge_sizes(res, info, art, root, probes, spec, timeout_s)
    flagged = [layer["layer"] for layer in outcome.extra.get("per_layer", []) if layer.get("flagged")]
    if flagged:
        res.status = "fail"
        res.failures.append(f"per-layer fidelity: layer(s) {', '.join(flagged)} do not compute their quantized "
                            "reference (a conversion or runtime fault localised to them)")
    return Checked(res, outcome.outputs, reference)


def _judge_sizes(res: ParityResult, info, art: Artifact, root: Path, probes: list, spec: ModelSpec, timeout_s: float) -> None:
    """The artifact at the other sizes of its dynamic dimensions: wrong numbers fail it, a crash is an error."""
    sizes = check_sizes(info.name, art.to_dict(), root, probes, spec, info.tolerances[art.precision], timeout_s)
    res.extra["dynamic"] = sizes
    res.failures.extend(sizes["failures"])
    if sizes["errors"] and res.status == "pass":
        res.status = "error"
        res.error = {"code": "E-DYNAMIC-SIZE", "message": "the runtime failed at sizes inside the declared range: "
                     + "; ".join(sizes["errors"])[:1500], "fix": "export a narrower --dynamic range, or a fixed shape"}
    elif sizes["failures"] and res.status == "pass":
        res.status = "fail"


def _with_dynamic(spec: ModelSpec, given, example: tuple) -> ModelSpec:
    """The spec with the job's dynamic dimensions (edgekit.dynamic), checked against the model's inputs."""
    if not given:
        return spec
    return dataclasses.replace(spec, dynamic=resolve_dynamic(given, spec.input_names, example))


def _error_result(conv: Converter, precision: str, exc: Exception, program=None) -> ParityResult:
    """A target whose export raised: ``unsupported`` (the target cannot express an operator: named,
    with the user's source line and the way out) or ``error`` (the toolchain failed otherwise)."""
    notes = [f"deprecated: {conv.info.deprecated}"] if conv.info.deprecated else []
    if isinstance(exc, UnsupportedOpError):
        from edgekit.source_line import locate

        where = locate(program, exc.op, exc.node) or exc.source
        err = {**exc.to_dict(), "op": exc.op, "node": exc.node, "source": where}
        if where:
            err["message"] += f", from {where}"
        return ParityResult(conv.info.name, precision, UNSUPPORTED, error=err, notes=notes)
    err = exc.to_dict() if isinstance(exc, UserError) else {
        "code": "E-EXPORT-FAILED", "message": f"{type(exc).__name__}: {str(exc)[:1500]}",
        "fix": f"the {conv.info.name} toolchain failed on this model; drop the target or report the message"}
    return ParityResult(conv.info.name, precision, "error", error=err, notes=notes)


# Files the pipeline itself writes into a bundle: no target may write one of these names.
BUNDLE_FILES = ("manifest.json", "report.json", "report.md", "report.html")


def _export_target(conv: Converter, module, spec: ModelSpec, recipe, stage: Path, example: tuple, extra: dict,
                   program, owned: dict[str, str]):
    """Export one target with its toolchain's console output captured (edgekit.capture, kept in the
    report for that target) into a folder of its own, then move the files its Artifact lists into
    the bundle (``_place``: a file another target or the bundle owns is refused, never overwritten,
    and nothing unlisted ships). -> (the unsupported/error result or None, the Artifact or None, log)."""
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{conv.info.name}-", dir=stage))
    try:
        with captured() as log:
            try:
                art = conv.export(module, spec, recipe, scratch, example, **extra)
                failed = _place(art, scratch, stage, owned)
            except Exception as exc:  # one target's toolchain failing must not stop the others
                art, failed = None, exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failed is None:
        return None, art, log.text
    return _error_result(conv, "fp32" if recipe is None else recipe.scheme, failed, program), None, log.text


def _place(art: Artifact, scratch: Path, stage: Path, owned: dict[str, str]) -> UserError | None:
    """Move an artifact's files from its export folder into the bundle and record their owner."""
    for f in art.files:
        if f in owned:
            return UserError("E-ARTIFACT-CLASH", f"target {art.target} wrote {f}, a file that {owned[f]} owns in the "
                             "bundle", f"give {art.target}'s files names of their own (e.g. a target-specific suffix)")
        try:
            written = M.inside(scratch, f, f"{art.target}'s file").is_file()
        except UserError:
            written = False
        if not written:
            return UserError("E-EXPORT-FAILED", f"target {art.target} lists {f} among its files but did not write it "
                             "in its folder", f"report it: {art.target}'s export must write every file it lists")
    for f in art.files:
        (stage / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(scratch / f, stage / f)
        owned[f] = f"target {art.target}"
    return None


def _coverage(result: ParityResult, stage: Path, art: Artifact) -> None:
    from edgekit.converters import Converter, get

    if type(get(art.target)).coverage is not Converter.coverage:  # the target analyses its files
        meta = {**art.meta, "target": art.target, "precision": art.precision}
        result.extra["coverage"] = coverage(stage, art.path, meta)


def _bundle_spec(spec: ModelSpec, stage: Path) -> ModelSpec:
    """Copy assets the spec points to (the tokenizer) into the bundle; the bundle's spec names them relatively."""
    pre = spec.preprocess
    if isinstance(pre, TextPreprocess) and Path(pre.tokenizer).is_absolute():
        dest = stage / "tokenizer"
        dest.mkdir()
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(pre.tokenizer) / name).is_file():
                shutil.copy2(Path(pre.tokenizer) / name, dest / name)
        return dataclasses.replace(spec, preprocess=TextPreprocess("tokenizer", pre.max_length))
    return spec


def coverage(root: Path, rel: str, meta: dict, timeout_s: float = 300) -> dict:
    """Delegate coverage of the artifact ``root/rel`` (edgekit.inspect), computed in a subprocess run
    in ``root`` (so the report names the file as the bundle does); never raises."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix=f"edgekit-inspect-{os.getpid()}-") as tmp:
        out = Path(tmp) / "coverage.json"
        try:
            proc = subprocess.run([sys.executable, "-m", "edgekit.inspect", rel, json.dumps(meta), str(out)],
                                  cwd=root, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": {"code": "E-RUNTIME-CRASH", "message": f"coverage analysis timed out after {timeout_s:.0f} s",
                              "fix": "run `edgekit inspect` on the file to see where it stalls"}}
        if proc.returncode != 0 or not out.is_file():
            return {"error": {"code": "E-RUNTIME-CRASH", "message": f"coverage analysis failed: {proc.stderr.strip()[-500:]}",
                              "fix": "run `edgekit inspect` on the file for the full message"}}
        return json.loads(out.read_text())


def _with_task(spec: ModelSpec, given: str | None) -> tuple[ModelSpec, list[str]]:
    """The spec with the job's task (fitted to the outputs, E-ARGS when it does not fit) or the inferred one."""
    task, note = resolve_task(given, spec.task, [(t.name, t.shape) for t in spec.outputs])
    spec = dataclasses.replace(spec, task=task.name, task_options=tuple(task.options().items()))
    return spec, [note] if note else []


def _recipe(job: ExportJob):
    """The job's QuantRecipe (None for FP32); options that do not apply to the precision are refused."""
    from edgekit.quant.recipe import SCHEMES, WEIGHT_ONLY_SCHEMES

    calibration_only = [f for f, v in (("--calibrator", job.calibrator), ("--percentile", job.percentile),
                                       ("--equalize", job.equalize), ("--bias-correction", job.bias_correction),
                                       ("--float-io", job.float_io), ("--rounding", job.rounding),
                                       ("--minmax-output", job.minmax_output is not None)) if v]
    if job.quant == "fp32":
        given = calibration_only + (["--keep-float"] if job.keep_float else [])
        if given:
            raise UserError("E-ARGS", f"{', '.join(given)} only apply to a quantized export", "add --quant int8, or drop them")
        return None
    if job.quant not in SCHEMES:
        raise UserError("E-TARGET-PRECISION", f"unknown precision {job.quant!r}",
                        f"pass --quant with one of fp32, {', '.join(SCHEMES)}")
    from edgekit.quant import QuantRecipe, check

    if job.quant in WEIGHT_ONLY_SCHEMES:
        given = calibration_only + (["--keep-float"] if job.keep_float and job.quant == "fp16" else [])
        if given:
            raise UserError("E-ARGS", f"{', '.join(given)} do(es) not apply to --quant {job.quant} (weights only, no calibration)",
                            "drop them, or use --quant int8")
        return check(QuantRecipe(scheme=job.quant, keep_float=tuple(job.keep_float)))
    chosen = {k: v for k, v in (("calibrator", job.calibrator), ("percentile", job.percentile),
                                ("rounding", job.rounding), ("minmax_output", job.minmax_output)) if v is not None}
    return check(QuantRecipe(keep_float=tuple(job.keep_float), equalize=job.equalize,
                             bias_correction=job.bias_correction, io="float" if job.float_io else "int8", **chosen))


def _model_defaults(job: ExportJob, recipe, loaded):
    """A built-in model's measured int8 settings fill in what the user left unset (never what they set)."""
    defaults = loaded.int8_defaults
    if recipe is None or recipe.scheme != "int8" or not defaults:
        return recipe, []
    unset = {k: v for k, v in defaults.items()
             if (k == "calibrator" and job.calibrator is None and job.percentile is None)
             or (k == "keep_float" and not job.keep_float)
             or (k in ("rounding", "minmax_output") and getattr(job, k) is None)}
    if not unset:
        return recipe, []
    said = ", ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in unset.items())
    return recipe.with_(**unset), [f"int8 settings measured best for {loaded.spec.name} (the user set none of them): {said}"]


def _all_with_precision(targets, convs: list[Converter], precision: str) -> tuple[list[Converter], list[str]]:
    """``--targets all`` means every target that exports this precision (the report names the others);
    a target the user named explicitly is never dropped (``_check_precision`` refuses it instead)."""
    named = targets if isinstance(targets, str) else ",".join(targets)
    if named.strip() != "all" or precision == "fp32":
        return convs, []
    able = [c for c in convs if precision in c.info.precisions]
    left = [c.info.name for c in convs if c not in able]
    return able, [f"--targets all with {precision}: {', '.join(c.info.name for c in able)} "
                  f"({', '.join(left)} export no {precision})"] if left else []


def _check_precision(convs: list[Converter], precision: str) -> None:
    lacking = [c.info.name for c in convs if precision not in c.info.precisions]
    if lacking:
        able = [c.info.name for c in all_converters() if precision in c.info.precisions]
        raise UserError("E-TARGET-PRECISION", f"{', '.join(lacking)} cannot export {precision}",
                        f"targets with {precision}: {', '.join(able) or 'none'} (see `edgekit targets`)")


def _split(data: CalibrationSet, recipe, samples: int, train: bool = False
           ) -> tuple[CalibrationSet | None, CalibrationSet | None, CalibrationSet, list[str]]:
    """-> (calibration set, training set, verification set, notes). A quantized export calibrates on
    the first two thirds and verifies on the held-out last third, so fidelity and cost use unseen
    data; a compressing job (``train``) trains on the same first part, never on what verifies it.
    Weight-only precisions (fp16, dynamic) calibrate nothing: they verify on the first N, as FP32."""
    from edgekit.quant.recipe import WEIGHT_ONLY_SCHEMES

    calibrated = recipe is not None and recipe.scheme not in WEIGHT_ONLY_SCHEMES
    if not calibrated and not train:
        notes = [] if recipe is None else [f"{recipe.scheme}: weights only, no calibration; verified on {min(samples, len(data))} samples"]
        if samples > len(data):
            notes.append(f"verified on all {len(data)} samples of the data (fewer than --samples {samples})")
        return None, None, data.head(samples), notes
    n = len(data)
    hold = n // 3 if n >= 3 else 0
    first = data.slice(0, n - hold)
    vset = data.slice(n - hold).head(samples) if hold else data.head(samples)
    cal = first.head(recipe.max_samples) if calibrated else None
    used = " and ".join(w for w, on in (("calibrated", calibrated), ("trained", train)) if on)
    notes = [f"{used} on {len(cal or first)} samples (the first of {n}); verified on "
             + (f"{len(vset)} held-out samples" if hold else f"{len(vset)} of the same samples (too few to hold any out)")]
    if calibrated and len(cal) < 16:
        notes.append(f"WARNING: only {len(cal)} calibration samples (< 16): activation ranges may not represent real inputs")
    return cal, first if train else None, vset, notes


def _optional(targets, convs: list[Converter]) -> frozenset[str]:
    """The targets `--targets all` chose by itself (none when the user named them)."""
    named = targets if isinstance(targets, str) else ",".join(targets)
    return frozenset(c.info.name for c in convs) if named.strip() == "all" else frozenset()


def describe_model(model) -> str:
    return model if isinstance(model, str) else str(model) if isinstance(model, os.PathLike) else type(model).__name__


def _load_data(data, loaded) -> CalibrationSet:
    """The job's samples: a folder (or the built-in model's default folder), or in-memory arrays."""
    from edgekit.data import samples_from

    if data is None:
        if loaded.default_data is None:
            raise UserError("E-DATA-EMPTY", f"model {loaded.source} has no default data",
                            "pass data (a folder, arrays or a DataLoader; --data DIR on the command line)")
        data = loaded.default_data
    if isinstance(data, (str, os.PathLike)):
        return load_samples(data, loaded.spec)
    return samples_from(data, loaded.spec)


def plan(job: ExportJob) -> tuple[list[Converter], object, str, list[str], list[ParityResult]]:
    """Everything about a job that can be refused before any work: -> (converters, recipe or None,
    precision, notes, results of the targets `--targets all` cannot take). Raises only coded UserErrors."""
    convs = resolve_targets(job.targets)
    recipe = _recipe(job)
    precision = "fp32" if recipe is None else recipe.scheme
    convs, all_notes = _all_with_precision(job.targets, convs, precision)
    _check_precision(convs, precision)
    convs, fixed = _dynamic_targets(job, convs, precision)
    return convs, recipe, precision, all_notes, fixed


def _dynamic_targets(job: ExportJob, convs: list[Converter], precision: str) -> tuple[list[Converter], list[ParityResult]]:
    """With dynamic shapes: the targets that export them. A target the user named that cannot is
    refused before any work (E-DYNAMIC-UNSUPPORTED); `--targets all` reports it as unsupported."""
    if not job.dynamic_shapes:
        return convs, []
    able = [c.info.name for c in all_converters() if c.info.dynamic]
    if precision != "fp32":
        raise UserError("E-DYNAMIC-UNSUPPORTED", f"dynamic shapes with --quant {precision}: edgekit exports dynamic "
                        "shapes in fp32 only (its quantized references are captured at one shape)",
                        "export the quantized model at a fixed shape, or the fp32 model with --dynamic")
    fixed = [c for c in convs if not c.info.dynamic]
    if not fixed:
        return convs, []
    err = lambda names: UserError("E-DYNAMIC-UNSUPPORTED", f"{names} export(s) fixed shapes only",
                                  f"targets with dynamic shapes: {', '.join(able)}; export a fixed shape for the others")
    if not _optional(job.targets, convs):
        raise err(", ".join(c.info.name for c in fixed))
    results = [ParityResult(c.info.name, precision, UNSUPPORTED, error={**err(c.info.name).to_dict(), "op": "dynamic shapes"},
                            notes=[f"deprecated: {c.info.deprecated}"] if c.info.deprecated else [])
               for c in fixed]
    return [c for c in convs if c.info.dynamic], results


def export_bundle(job: ExportJob, progress: Progress = QUIET, command: str = "") -> Outcome:
    convs, recipe, precision, all_notes, fixed = plan(job)
    for conv in convs:
        conv.check_available()
    if job.out:
        D.check_replaceable(Path(job.out))  # before any heavy work; checked again under the lock
    progress(f"loading model {describe_model(job.model)}")
    with captured() as model_log:  # a model package's import-time logs and download bars: into the report
        loaded = load_model(job.model, job.example_inputs)
    spec, task_notes = _with_task(loaded.spec, job.task)
    spec = _with_dynamic(spec, job.dynamic_shapes, loaded.example_inputs)
    recipe, default_notes = _model_defaults(job, recipe, loaded)
    if recipe is not None and recipe.keep_float:
        from edgekit.quant.recipe import keep_float_modules

        keep_float_modules(loaded.module, recipe)  # a name that matches no layer: E-ARGS before any export
    out = Path(job.out or f"bundles/{spec.name}")
    with D.locked(out):  # one export per destination; leftovers of a crashed run are cleaned first
        data = _load_data(job.data, loaded)
        cal, train, vset, split_notes = _split(data, recipe, job.samples, train=job.compress is not None)
        split_notes = all_notes + default_notes + task_notes + split_notes
        example = tuple(torch.from_numpy(a) for a in (export_example(spec.dynamic, spec.input_names, data.samples)
                                                      if spec.dynamic else data.samples[0]))
        compression = None
        if job.compress is not None:  # the compressed model becomes the FP32 model every target exports
            from edgekit.compress.stage import compress, from_calibration

            source = train
            progress(f"compressing ({', '.join(job.compress.steps)}) on {len(source)} samples")
            loaded.module, compression = compress(loaded.module, example, job.compress, from_calibration(source))
        progress("capturing the FP32 reference with torch.export")
        with captured() as reference_log:
            program = export_program(loaded.module, example, spec.name, torch_shapes(spec.dynamic, spec.input_names))
        with B.staging(out) as stage:
            bspec = _bundle_spec(spec, stage)
            save_reference(program, bspec, stage / B.REFERENCE)
            B.save_inputs(stage / B.VERIFY_INPUTS, vset.stacked(), spec.input_names)
            if spec.labels:
                B.write_text(stage / "labels.txt", "\n".join(spec.labels) + "\n")
            progress(f"reference outputs on {len(vset)} samples")
            reference = run_reference(program.module(), vset.samples)
            probes = size_probes(spec, vset, program.module())
            run = _TargetRun(job, loaded.module, spec, recipe, stage, example, cal, vset, reference, program, progress, probes)
            results, artifacts, errors = run.all(convs, precision)
            results += fixed
            env = B.environment({k: v for conv in convs for k, v in conv.versions().items()})
            manifest = {
                "format": B.FORMAT, "format_version": B.FORMAT_VERSION, "created": B.now(),
                "model": {"name": spec.name, "source": loaded.source, "spec": bspec.to_dict()},
                "reference": {"file": B.REFERENCE, "sha256": B.sha256_file(stage / B.REFERENCE)},
                "verification_inputs": {"file": B.VERIFY_INPUTS, "file_sha256": B.sha256_file(stage / B.VERIFY_INPUTS),
                                        **vset.describe()},
                "data": data.describe(),
                "quantization": None if recipe is None else {"recipe": recipe.to_dict(), "calibration": None if cal is None else cal.describe(),
                                                             "notes": split_notes},
                "artifacts": [_manifest_entry(stage, conv, art) for conv, art in artifacts],
                "versions": env,
                "compression": None if compression is None else compression.to_dict(),
            }
            B.write_json(stage / B.MANIFEST, manifest)
            model_info = {"name": spec.name, "source": loaded.source, "task": str(spec.task_spec)}
            report = build_report("export", model_info, vset.describe(), results,
                                  env, command or f"edgekit export {describe_model(job.model)}", manifest["created"], split_notes,
                                  optional=_optional(job.targets, convs))
            report["model_log"] = (model_log.text + reference_log.text)[-MAX_LOG_CHARS:]
            _write_reports(stage, report, errors, compression)
        return Outcome(out, report, results, errors)


@dataclass
class _TargetRun:
    """The target loop of an export: each target exported into its own folder, its files placed in
    the bundle, then verified in its runtime and its coverage analysed."""

    job: ExportJob
    module: Any
    spec: ModelSpec
    recipe: Any
    stage: Path
    example: tuple
    cal: CalibrationSet | None
    vset: CalibrationSet
    reference: list
    program: Any
    progress: Progress
    probes: list  # edgekit.size_probes.SizeProbe: the other sizes a model with dynamic shapes is verified at

    def all(self, convs, precision: str) -> tuple[list, list, dict]:
        owned = {str(p.relative_to(self.stage)): "edgekit" for p in self.stage.rglob("*") if p.is_file()}
        owned.update({name: "edgekit" for name in BUNDLE_FILES})
        results, artifacts, errors = [], [], {}
        for conv in convs:
            self.progress("exporting" if self.cal is None else f"calibrating on {len(self.cal)} samples and exporting "
                          f"{precision}", conv.info.name)
            res, art, outputs = self.one(conv, owned)
            if art is not None:
                artifacts.append((conv, art))
            if outputs is not None:
                errors[report_key(res)] = outputs
            results.append(res)
            self.progress(res.status if art is not None else f"{res.status}: {res.error['code']}", conv.info.name)
        return results, artifacts, errors

    def one(self, conv: Converter, owned: dict):
        """-> (its result, its Artifact or None, its absolute errors for the report or None)."""
        extra = {} if self.cal is None else {"calibration": self.cal}
        res, art, export_log = _export_target(conv, self.module, self.spec, self.recipe, self.stage, self.example, extra,
                                              self.program, owned)
        errors = None
        if art is not None:
            self.progress("running in the host runtime (subprocess)", conv.info.name)
            with captured() as log:
                checked = verify_artifact(conv, art, self.stage, self.vset, self.reference, self.spec,
                                          self.job.timeout_s, self.module, self.probes)
                _coverage(checked.result, self.stage, art)
            res, export_log = checked.result, export_log + log.text
            if checked.outputs is not None:
                errors = abs_errors(checked.reference, checked.outputs)
        res.extra["export_log"] = export_log
        return res, art, errors


def _manifest_entry(stage: Path, conv: Converter, art: Artifact) -> dict:
    return {**art.to_dict(), "files": B.file_entries(stage, art.files), "runtime": conv.info.runtime,
            "exporter": conv.info.exporter, "delegates": list(conv.info.delegates), "deprecated": conv.info.deprecated}


def _write_reports(stage: Path, report: dict, errors: dict, compression) -> None:
    if compression is not None:
        report["compression_stage"] = {**compression.to_dict(), "markdown": compression.markdown()}
    B.write_json(stage / "report.json", report)
    B.write_text(stage / "report.md", markdown(report))
    write_html(stage / "report.html", report, errors)


def verify_bundle(bundle: str | Path, data: str | None = None, samples: int | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, progress: Progress = QUIET, command: str = "",
                  arm: tuple[str, ...] = (), total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S) -> Outcome:
    """Re-run every artifact of a bundle against the bundle's reference; never writes into the bundle.

    timeout_s bounds each runtime subprocess, total_timeout_s the runs of the whole verify (targets
    left when it runs out are errors that say so). The bundle is untrusted input (edgekit.manifest, edgekit.safe_load): its manifest and paths are
    checked first, every file's sha256 before the file is opened, and nothing in it is loaded by a
    loader that can run code; runtimes run confined (edgekit.confine).
    arm: emulated CPUs (e.g. cortex-a53, cortex-a76) to also run the ARM-capable artifacts on.
    """
    check_timeout(timeout_s)
    check_timeout(total_timeout_s, "--total-timeout")
    deadline = time.monotonic() + total_timeout_s
    if samples is not None:
        _check_samples(samples)
    arm_env = _arm_env(arm)
    m = M.read(Path(bundle))
    root, spec = m.root, m.spec
    _check_unchanged(m, m.reference, "the FP32 reference")
    program = load_reference(m.path(m.reference.path))[0]
    if isinstance(data, (str, os.PathLike)):
        calib = load_samples(data, spec, base=root, limit=samples)
    elif data is not None:
        from edgekit.data import samples_from

        calib = samples_from(data, spec)
    else:
        if m.inputs is not None:
            _check_unchanged(m, m.inputs, "the verification inputs")
        calib = B.load_verify_inputs(m)
    if samples is not None:
        calib = calib.head(samples)
    progress(f"reference outputs on {len(calib)} samples")
    reference = run_reference(program.module(), calib.samples)
    probes = size_probes(spec, calib, program.module())
    results, errors = [], {}
    for entry, files in m.artifacts:
        left = deadline - time.monotonic()
        checked, conv, art = check_entry(m, entry, files, calib, reference, min(timeout_s, left), progress, probes)
        results.append(checked.result)
        if checked.outputs is not None:
            errors[report_key(checked.result)] = abs_errors(checked.reference, checked.outputs)
        if arm_env is not None and conv is not None and conv.info.arm and checked.outputs is not None:
            from edgekit.arm.verify import arm_results

            progress(f"running on emulated {', '.join(arm)} (qemu-user; slow)", art.target)
            results.extend(arm_results(arm_env, list(arm), conv, art, root, calib.stacked(), checked.reference,
                                       checked.outputs, spec.output_names, spec.task_spec))
    env = B.environment({k: v for r in results for k, v in _versions(r.target.split("@")[0]).items()})
    model_info = {"name": spec.name, "source": m.raw["model"].get("source"), "task": str(spec.task_spec)}
    report = build_report("verify", model_info, calib.describe(),
                          results, env, command or f"edgekit verify {root}", B.now())
    return Outcome(root, report, results, errors)


def _check_unchanged(m: "M.Manifest", entry: "M.FileEntry", what: str) -> None:
    """A file every target depends on must be the one the manifest hashed, before it is opened."""
    path = m.path(entry.path)
    if not path.is_file():
        raise UserError("E-BUNDLE-INVALID", f"{what} {entry.path} is missing from {m.root}", "copy the whole bundle folder, or re-export it")
    if B.sha256_file(path) != entry.sha256:
        raise UserError("E-ARTIFACT-CHANGED", f"{what} {entry.path} differs from the sha256 in the manifest",
                        "re-export the bundle; a bundle's files must not change after export")


def check_entry(m: "M.Manifest", entry: dict, files: tuple, vset: CalibrationSet, reference: list[np.ndarray],
                timeout_s: float, progress: Progress = QUIET, probes: list = ()):
    """Judge one manifest artifact of a checked bundle: an unknown target or a missing file is an error,
    a file whose sha256 differs from the manifest fails without being opened, then the converter's
    static screen (e.g. TorchScript operators) and the confined run. -> (Checked, converter, Artifact)."""
    art = Artifact.from_dict({**entry, "files": [f.path for f in files]})
    if timeout_s <= 0:
        return (Checked(ParityResult(art.target, art.precision, "error", art.path, error={
            "code": "E-RUNTIME-CRASH", "message": "not run: verify's overall time budget ran out before this target",
            "fix": "raise --total-timeout, or verify fewer targets"}), None, reference), None, art)
    fail = lambda status, err: (Checked(ParityResult(art.target, art.precision, status, art.path, error=err), None, reference), None, art)
    try:
        conv = get(art.target)
    except UserError as exc:
        return fail("error", exc.to_dict())
    if art.precision not in conv.info.precisions:
        return fail("error", {"code": "E-TARGET-PRECISION", "message": f"the manifest says {art.target} {art.precision!r:.40}, "
                              f"which {art.target} does not export (it has {', '.join(conv.info.precisions)})",
                              "fix": "re-export the bundle; do not edit manifest.json by hand"})
    missing = [f.path for f in files if not m.path(f.path).is_file()]
    if missing:
        return fail("error", {"code": "E-ARTIFACT-CORRUPT", "message": f"missing file(s) {', '.join(missing)}",
                              "fix": "copy the whole bundle folder, or re-export it"})
    changed = [f.path for f in files if B.sha256_file(m.path(f.path)) != f.sha256]
    if changed:
        checked, conv, art = fail("fail", {"code": "E-ARTIFACT-CHANGED", "message": f"file(s) changed since export: {', '.join(changed)}",
                                           "fix": "re-export the bundle; a bundle's files must not change after export"})
        checked.result.failures.append(f"E-ARTIFACT-CHANGED: {', '.join(changed)} differ(s) from the sha256 in the manifest; not run")
        return checked, None, art
    try:
        conv.screen(art, m.root)
    except UserError as exc:
        return fail("error", exc.to_dict())
    progress("running in the host runtime (subprocess)", art.target)
    checked = verify_artifact(conv, art, m.root, vset, reference, m.spec, timeout_s, probes=probes)
    progress(checked.result.status, art.target)
    return checked, conv, art


def _arm_env(cpus: tuple[str, ...]):
    """The prepared ARM environment when CPUs are asked for (coded error with the setup command if absent)."""
    if not cpus:
        return None
    from edgekit.arm import check_cpu, find

    for cpu in cpus:
        check_cpu(cpu)
    return find()


def _versions(target: str) -> dict:
    try:
        return get(target).versions()
    except UserError:
        return {}
