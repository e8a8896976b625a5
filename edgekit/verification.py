"""Judging artifacts: one file run in its runtime subprocess against its reference (and, with
dynamic shapes, at the other sizes of its ranges), and `edgekit verify` of a whole bundle, which is
untrusted input (edgekit.manifest, edgekit.safe_load)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import bundle as B
from edgekit import manifest as M
from edgekit.accuracy import accuracy
from edgekit.converters import Artifact, Converter, get
from edgekit.data import CalibrationSet, load_samples
from edgekit.errors import UserError
from edgekit.isolate import DEFAULT_TIMEOUT_S, run_artifact
from edgekit.job import check_samples, check_timeout
from edgekit.parity import NOT_RUNNABLE, ParityResult, compare, cost_metrics
from edgekit.progress import QUIET, Progress
from edgekit.reference import load_reference, run_reference
from edgekit.report import abs_errors, build_report, report_key
from edgekit.size_probes import check_sizes, size_probes
from edgekit.spec import ModelSpec



@dataclass
class Outcome:
    bundle: Path
    report: dict
    results: list[ParityResult] = field(default_factory=list)
    errors: dict[str, np.ndarray] = field(default_factory=dict)  # per result key: |artifact - reference|

    @property
    def exit_code(self) -> int:
        return 0 if self.report["summary"]["status"] == "pass" else 1

PER_LAYER_SAMPLES = 4  # quantized artifacts: samples the layer-by-layer fidelity view runs on
DEFAULT_TOTAL_TIMEOUT_S = 4 * 3600.0  # a whole verify, ARM emulation included


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
                    probes: list = (), budget=None) -> Checked:
    """Run one artifact in its runtime subprocess; judge conversion fidelity against its reference
    and, for a quantized artifact, report compression cost against the FP32 original apart (with
    ``float_model``, also layer by layer: where the precision is lost) and fail it when the cost
    exceeds ``budget`` (edgekit.budget). ``probes``: a model with dynamic shapes is also judged at
    those sizes (edgekit.size_probes). Labelled samples (``vset.labels``) add top-1 accuracy."""
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
    if res.status == "fail" and reference is not fp32_reference:
        res = _judge_against_noise(res, art, root, vset, reference, outcome.outputs, spec, outcome.extra.get("per_layer"),
                                   outcome.extra.get("per_layer_error"))
    if reference is not fp32_reference:
        res.extra["compression"] = cost_metrics(fp32_reference, outcome.outputs, spec.output_names, task)
        if float_model is not None:
            res.extra["localisation"] = localisation(art, root, vset, float_model)
    scored = accuracy(fp32_reference, outcome.outputs, vset.labels, spec)
    if scored is not None:
        res.extra["accuracy"] = scored
    if budget is not None and art.precision != "fp32":
        _judge_budget(res, budget, cost_metrics(fp32_reference, outcome.outputs, spec.output_names, task), scored)
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


def _judge_against_noise(res: ParityResult, art: Artifact, root: Path, vset: CalibrationSet, reference: list[np.ndarray],
                         outputs: list[np.ndarray], spec: ModelSpec, per_layer: list | None,
                         per_layer_error: str | None = None) -> ParityResult:
    """A quantized artifact that missed its fixed bound, judged again against its reference's own
    rounding noise (edgekit.quant.noise): twins of the reference set how far a valid computation lands.
    It passes only when it is within that noise *and* the target's per-layer view ran and found every
    layer computing its reference (``per_layer``: its rows): end to end, a fault on an ill-conditioned
    model can hide in the noise. The twins also flip, at each layer, the fraction of values the view
    measured the target's kernel rounding the other way (at most noise.FLIP_CAP). The figures go to
    extra["reference_noise"] either way."""
    from edgekit.quant.noise import FLIP_CAP, TWIN_SEEDS, flip_rates, noise_figures, noise_tolerance, twin_outputs
    from edgekit.quant.reference import load_quantized_reference

    def judged(tol, outs, task_tol=None, **fields):
        return compare(res.target, res.precision, reference, outs, spec.output_names, tol, spec.task_spec,
                       art.meta.get("output_scales"), task_tol, **fields)

    try:
        module = load_quantized_reference(root / art.meta["reference"]).module()
        flips = flip_rates(module, per_layer or [])  # each layer's measured rate of kernel rounding flips
        twins = [judged(res.tolerance, twin_outputs(module, vset.samples, seed, flips=flips)) for seed in TWIN_SEEDS]
    except Exception as exc:  # noqa: BLE001 - a diagnostic: the fixed-bound verdict stands, with the reason
        res.notes.append(f"the reference's rounding noise could not be measured: {type(exc).__name__}: {str(exc)[:200]}")
        return res
    widened, task_widened = noise_tolerance(res.tolerance, twins)
    figures = noise_figures(res.tolerance, (widened, task_widened), twins)
    figures["flips"] = {"layers": len(flips), "max_rate": max(flips.values(), default=0.0), "cap": FLIP_CAP}
    again = judged(widened, outputs, task_widened, file=res.file, size_bytes=res.size_bytes, latency_ms=res.latency_ms,
                   notes=res.notes, log=res.log, extra=res.extra)
    layers_clean = bool(per_layer) and not any(row.get("flagged") for row in per_layer)
    within = (f"{len(twins)} runs of the reference itself, each op rounded differently (edgekit.quant.noise), land up "
              f"to {figures['twin_max_abs_rel']:.3g} x max|reference| away (lowest cosine {figures['twin_cosine_min']:.4f}), "
              f"and the artifact is within {figures['margin']:g}x that: the quantized model is ill-conditioned, its "
              "rounding flips cascade with depth (its INT8 cost against FP32 is the figure to act on)")
    if again.passed and layers_clean:
        again.extra["reference_noise"] = {**figures, "verdict": "pass", "fixed_bound_failures": res.failures}
        again.notes.append(f"fidelity judged against the reference's own rounding noise: the fixed bound was missed "
                           f"({res.failures[0]}), but {within}; the per-layer view found each of its {len(per_layer)} "
                           "layers within its step bound")
        return again
    res.extra["reference_noise"] = {**figures, "verdict": "fail"}
    if again.passed and not per_layer:
        missing = (f"its per-layer view could not run ({per_layer_error[:300]})" if per_layer_error
                   else f"{res.target} has no per-layer view")
        res.notes.append(f"the fixed-bound miss may be rounding noise: {within}; but {missing} "
                         "to show every layer computes its reference, and a fault can hide in that noise, so the miss stands")
    return res


def _judge_budget(res: ParityResult, budget, cost: dict, scored: dict | None) -> None:
    """The artifact's cost against FP32 vs the user's budget: a miss fails it (apart from its fidelity)."""
    from edgekit.budget import measured

    got = measured(cost, scored)
    missed = budget.missed(got)
    res.extra["budget"] = {"budget": budget.to_dict(), "measured": got, "met": not missed}
    res.failures.extend(missed)
    if missed and res.status == "pass":
        res.status = "fail"


def _judge_sizes(res: ParityResult, info, art: Artifact, root: Path, probes: list, spec: ModelSpec, timeout_s: float) -> None:
    """The artifact at the other sizes of its dynamic dimensions: wrong numbers fail it, a crash is an error."""
    sizes = check_sizes(info.name, art.to_dict(), root, probes, spec, info.tolerances[art.precision], timeout_s)
    res.extra["dynamic"] = sizes
    res.failures.extend(sizes["failures"])
    if sizes["errors"] and res.status == "pass":
        res.status = "error"
        res.error = {"code": "E-DYNAMIC-SIZE", "message": "the runtime failed at sizes inside the declared range: "
                     + "; ".join(sizes["errors"])[:1500], "fix": "export a narrower --dynamic range, or a fixed shape"}
        return
    res.failures.extend(f"the runtime failed {e}" for e in sizes["errors"])  # already failing: said, not hidden
    if res.failures and res.status == "pass":
        res.status = "fail"


def verify_bundle(bundle: str | Path, data: str | None = None, samples: int | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S, progress: Progress = QUIET, command: str = "",
                  arm: tuple[str, ...] = (), total_timeout_s: float = DEFAULT_TOTAL_TIMEOUT_S, budget=None) -> Outcome:
    """Re-run every artifact of a bundle against the bundle's reference; never writes into the bundle.

    timeout_s bounds each runtime subprocess, total_timeout_s the runs of the whole verify (targets
    left when it runs out are errors that say so). The bundle is untrusted input (edgekit.manifest, edgekit.safe_load): its manifest and paths are
    checked first, every file's sha256 before the file is opened, and nothing in it is loaded by a
    loader that can run code; runtimes run confined (edgekit.confine).
    arm: emulated CPUs (e.g. cortex-a53, cortex-a76) to also run the ARM-capable artifacts on.
    budget: what a quantized artifact may cost vs FP32 (edgekit.budget); default: the manifest's.
    """
    check_timeout(timeout_s)
    check_timeout(total_timeout_s, "--total-timeout")
    deadline = time.monotonic() + total_timeout_s
    if samples is not None:
        check_samples(samples)
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
    budget = manifest_budget(m, budget)
    if samples is not None:
        calib = calib.head(samples)
    progress(f"reference outputs on {len(calib)} samples")
    reference = run_reference(program.module(), calib.samples)
    probes = size_probes(spec, calib, program.module())
    results, errors = [], {}
    for entry, files in m.artifacts:
        left = deadline - time.monotonic()
        checked, conv, art = check_entry(m, entry, files, calib, reference, min(timeout_s, left), progress, probes, budget)
        results.append(checked.result)
        if checked.outputs is not None:
            errors[report_key(checked.result)] = abs_errors(checked.reference, checked.outputs)
        # a target without an aarch64 runtime gets a row per CPU saying why (never skipped silently)
        if arm_env is not None and conv is not None and (checked.outputs is not None or not conv.info.arm):
            from edgekit.arm.verify import arm_results

            if conv.info.arm:
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


def manifest_budget(m: "M.Manifest", given=None):
    """The budget a verify judges by: the caller's, else the one the manifest records (untrusted)."""
    from edgekit.budget import Budget

    if given is not None:
        return Budget.of(given)
    quant = m.raw.get("quantization")
    return Budget.from_manifest(quant.get("budget")) if isinstance(quant, dict) else None


def check_entry(m: "M.Manifest", entry: dict, files: tuple, vset: CalibrationSet, reference: list[np.ndarray],
                timeout_s: float, progress: Progress = QUIET, probes: list = (), budget=None):
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
    checked = verify_artifact(conv, art, m.root, vset, reference, m.spec, timeout_s, probes=probes, budget=budget)
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
