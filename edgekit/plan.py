"""What a job asks, decided before any work: its targets, its QuantRecipe, the built-in model's
measured settings, and what `--targets all` leaves out (precisions, dynamic shapes). Every refusal is
a coded UserError."""
from __future__ import annotations

from edgekit.converters import Converter, all_converters, resolve_targets
from edgekit.errors import UserError
from edgekit.job import ExportJob
from edgekit.parity import UNSUPPORTED, ParityResult


def quant_recipe(job: ExportJob):
    """The job's QuantRecipe (None for FP32); options that do not apply to the precision are refused."""
    from edgekit.quant.recipe import SCHEMES, WEIGHT_ONLY_SCHEMES

    calibration_only = [f for f, v in (("--calibrator", job.calibrator), ("--percentile", job.percentile),
                                       ("--equalize", job.equalize), ("--bias-correction", job.bias_correction),
                                       ("--float-io", job.float_io), ("--rounding", job.rounding),
                                       ("--minmax-output", job.minmax_output is not None),
                                       ("--float-share", job.float_share is not None)) if v]
    if job.qat_steps:
        _check_qat(job)
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
                                ("rounding", job.rounding), ("minmax_output", job.minmax_output),
                                ("float_share", job.float_share)) if v is not None}
    return check(QuantRecipe(scheme=job.quant, keep_float=tuple(job.keep_float), equalize=job.equalize,
                             bias_correction=bool(job.bias_correction), io="float" if job.float_io else "int8", **chosen))


def _check_qat(job: ExportJob) -> None:
    """--qat-steps learns int8 weights and ranges; levers that would change them afterwards are refused."""
    if job.quant != "int8":
        raise UserError("E-ARGS", f"--qat-steps trains for the int8 scheme, and --quant is {job.quant}",
                        "add --quant int8, or drop --qat-steps")
    clash = [f for f, on in (("--rounding adaround", job.rounding == "adaround"), ("--equalize", job.equalize),
                             ("--bias-correction", job.bias_correction), ("--budget", job.budget is not None)) if on]
    if clash:
        raise UserError("E-ARGS", f"--qat-steps with {', '.join(clash)}: quantization-aware training learns the weights "
                        "and ranges every target exports, and these would change them afterwards (or search without them)",
                        "use --qat-steps alone, or drop --qat-steps")


def qat_steps(job: ExportJob, recipe, loaded) -> int:
    """The job's quantization-aware training steps: what the user set, else the built-in model's measured
    setting for int8, unless the user asked for a lever that changes the weights or ranges afterwards."""
    if job.qat_steps is not None:
        return job.qat_steps
    if recipe is None or recipe.scheme != "int8":
        return 0
    clash = job.rounding == "adaround" or job.equalize or job.bias_correction or job.budget is not None
    return 0 if clash else getattr(loaded, "qat_steps", 0)


def model_defaults(job: ExportJob, recipe, loaded):
    """A built-in model's measured settings for the job's scheme fill in what the user left unset
    (never what they set)."""
    defaults = loaded.quant_defaults.get(recipe.scheme) if recipe is not None else None
    if not defaults:
        return recipe, []
    steps = qat_steps(job, recipe, loaded)
    unset = {k: v for k, v in defaults.items()
             if (k == "calibrator" and job.calibrator is None and job.percentile is None)
             or (k == "keep_float" and not job.keep_float)
             or (k in ("rounding", "minmax_output", "float_share", "bias_correction") and getattr(job, k) is None)}
    if steps:  # quantization-aware training learns the weights: no learned rounding on top
        unset.pop("rounding", None)
        unset.pop("bias_correction", None)
    if not unset:
        return recipe, []
    said = ", ".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in unset.items())
    if steps and job.qat_steps is None:
        said += f", qat_steps={steps}"
    return recipe.with_(**unset), [f"{recipe.scheme} settings measured best for {loaded.spec.name} "
                                   f"(the user set none of them): {said}"]


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


def optional_targets(targets, convs: list[Converter]) -> frozenset[str]:
    """The targets `--targets all` chose by itself (none when the user named them)."""
    named = targets if isinstance(targets, str) else ",".join(targets)
    return frozenset(c.info.name for c in convs) if named.strip() == "all" else frozenset()


def plan(job: ExportJob) -> tuple[list[Converter], object, str, list[str], list[ParityResult]]:
    """Everything about a job that can be refused before any work: -> (converters, recipe or None,
    precision, notes, results of the targets `--targets all` cannot take). Raises only coded UserErrors."""
    convs = resolve_targets(job.targets)
    recipe = quant_recipe(job)
    precision = "fp32" if recipe is None else recipe.scheme
    convs, all_notes = _all_with_precision(job.targets, convs, precision)
    _check_precision(convs, precision)
    convs, fixed = _dynamic_targets(job, convs, precision)
    if job.qat_steps and not any("qat" in c.info.levers for c in convs):
        raise UserError("E-ARGS", f"--qat-steps with only {', '.join(c.info.name for c in convs)}: quantization-aware "
                        "training simulates an int8 grid none of them uses, so each would export the model before training",
                        "drop --qat-steps, or add a target that takes it: "
                        + ", ".join(c.info.name for c in all_converters() if "qat" in c.info.levers))
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
    if not optional_targets(job.targets, convs):
        raise err(", ".join(c.info.name for c in fixed))
    results = [ParityResult(c.info.name, precision, UNSUPPORTED, error={**err(c.info.name).to_dict(), "op": "dynamic shapes"},
                            notes=[f"deprecated: {c.info.deprecated}"] if c.info.deprecated else [])
               for c in fixed]
    return [c for c in convs if c.info.dynamic], results
