"""QuantRecipe: the one static INT8 recipe every target applies (frozen; validated by ``check``).

Scheme (the TFLite / XNNPACK int8 scheme, which every target here can run):
- weights: int8, symmetric, one scale per output channel (quant range -127..127);
- activations: int8, asymmetric, one scale and zero point per tensor, the range chosen by one of
  edgekit's calibrators (``edgekit.quant.calibrators.CALIBRATORS``) from the calibration set;
- bias: int32 with scale = input scale x weight scale.
Scheme ``int16x8`` (TFLite's "16x8" mode) keeps those int8 weights and makes every activation int16,
symmetric, zero point 0 (quant range -32767..32767, what TFLite's 16x8 kernels require), ranged by the
same calibrators; biases are int64 (scale = input scale x weight scale). Only a runtime with 16x8
integer kernels takes it (TFLite's builtin kernels; the other runtimes here have none: a target
lists it in its precisions or refuses it).
The calibrated ranges are per tensor and target-neutral (``ActivationRanges``): a PT2E target feeds
them to its observers, an ncnn/ptl writer can turn them into its own table.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, replace

from edgekit.errors import UserError

# Smallest per-channel weight scale (the eps of the PT2E weight observers of litert-torch and XNNPACK):
# a channel with max|w| < 127 * 2^-12 is quantized on this coarser grid. ptl and ncnn apply the same
# floor, so every target stores the same integers (and learned rounding, adaround.py, targets them).
WEIGHT_SCALE_FLOOR = 2.0 ** -12
SCHEMES = ("int8", "int16x8", "fp16", "dynamic")
# What each scheme stores and computes (CLI help, describe(), docs).
SCHEME_HELP = {
    "int8": "static INT8: int8 weights (per-channel) and int8 activations with calibrated ranges",
    "int16x8": "static 16x8: int8 weights (per-channel) and int16 activations (symmetric, zero point 0) with "
               "calibrated ranges; far less activation noise than int8, slower (no XNNPACK kernels)",
    "fp16": "fp16 weights (half the FP32 size); no calibration; the runtime computes in FP32 or FP16",
    "dynamic": "weight-only INT8: int8 weights (per-channel symmetric), no calibration; hybrid kernels "
               "quantize activations at run time",
}
WEIGHT_ONLY_SCHEMES = ("fp16", "dynamic")  # no calibration set, no activation ranges
# Integer activation grid of each calibrated scheme: (torch dtype name, quant_min, quant_max, symmetric).
ACTIVATION_GRID = {"int8": ("int8", -128, 127, False), "int16x8": ("int16", -32767, 32767, True)}
IO_DTYPES = ("int8", "float")  # the artifact's input/output tensors (where a target offers the choice)
# How conv/linear weights go to their int8 grid (edgekit.quant.adaround); the same integers for every target.
ROUNDINGS = {
    "nearest": "round to nearest (max|w|/127 per channel)",
    "adaround": "learned rounding (AdaRound, layer-wise reconstruction on the calibration set; BatchNorm folded)",
}


@dataclass(frozen=True)
class QuantRecipe:
    scheme: str = "int8"
    calibrator: str = "percentile"  # a name in CALIBRATORS; percentile 99.99 measured best on MobileNetV2 (bench/results)
    percentile: float = 99.99  # the percentile calibrator's clip point (both tails)
    bins: int = 2048  # histogram bins per sign of each activation (entropy / mse / percentile)
    keep_float: tuple[str, ...] = ()  # module names ("classifier.1", prefixes match) or class names ("Linear")
    equalize: bool = False  # cross-layer equalization (Nagel et al. 2019; ReLU6 between pairs becomes ReLU)
    bias_correction: bool = False  # empirical bias correction: per-channel mean error vs the float model removed
    fuse_relu6: bool = True  # conv+ReLU6 quantized as one op: the range is capped at 6 instead of a float clamp
    io: str = "int8"  # "int8": the file takes/returns integer tensors (int8; int16 for int16x8; the runner converts); "float": float I/O
    max_samples: int = 256  # calibration samples used at most (the first N of the set)
    minmax_output: bool = False  # model outputs (logits) ranged by min/max, never clipped by the calibrator
    rounding: str = "nearest"  # a name in ROUNDINGS; "adaround": learned weight rounding before any target quantizes
    # Quantization-aware training's learned ranges (edgekit.quant.qat, --qat-steps): (conv/linear layer, lo, hi)
    # of each layer's input; every target's calibration takes them for the tensors those layers read
    learned_ranges: tuple[tuple[str, float, float], ...] = ()
    # mixed precision by sensitivity (edgekit.quant.mixed): conv/linear layers whose int8 error is far out of
    # proportion to their size stay float, within this share of the int8 weight bytes (0: off)
    float_share: float = 0.0

    def __post_init__(self):
        check(self)  # a recipe that exists is valid: coded E-ARGS at construction, never later in a target

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        d["learned_ranges"] = [list(r) for r in self.learned_ranges]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantRecipe":
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise UserError("E-ARGS", f"unknown quantization recipe keys {unknown}",
                            f"use only {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        if "keep_float" in d:
            d["keep_float"] = tuple(d["keep_float"])
        if isinstance(d.get("learned_ranges"), list):
            d["learned_ranges"] = tuple(tuple(r) if isinstance(r, list) else r for r in d["learned_ranges"])
        return cls(**d)

    def input_ranges(self) -> dict[str, tuple[float, float]]:
        """Layer name -> its input's learned (lo, hi) (empty without quantization-aware training)."""
        return {name: (float(lo), float(hi)) for name, lo, hi in self.learned_ranges}

    def with_(self, **changes) -> "QuantRecipe":
        return replace(self, **changes)

    def describe(self) -> str:
        if self.scheme == "fp16":
            return "fp16 weights (Linear/Conv weights stored as float16; no calibration)"
        if self.scheme == "dynamic":
            kept = f", float: {', '.join(self.keep_float)}" if self.keep_float else ""
            return ("dynamic (weight-only int8: Linear/Conv weights int8 per-channel symmetric, -127..127; "
                    f"activations quantized at run time by hybrid kernels where the runtime has them{kept})")
        levers = [n for n, on in (("CLE", self.equalize), ("bias correction", self.bias_correction),
                                  ("AdaRound weights", self.rounding == "adaround"),
                                  (f"QAT ranges of {len(self.learned_ranges)} layer inputs", self.learned_ranges),
                                  ("min/max output range", self.minmax_output),
                                  (f"sensitive layers float within {self.float_share:g} of the weight bytes", self.float_share),
                                  ("conv+ReLU6 fused", self.fuse_relu6)) if on]
        cal = f"{self.calibrator}" + (f" {self.percentile}" if self.calibrator == "percentile" else "")
        kept = f", float: {', '.join(self.keep_float)}" if self.keep_float else ""
        if self.scheme == "int16x8":
            return (f"int16x8 static (w: int8 per-channel sym, a: int16 per-tensor sym, calibrator {cal}; "
                    f"{', '.join(levers) or 'no levers'}{kept})")
        return f"int8 static (w: per-channel sym, a: per-tensor, calibrator {cal}; {', '.join(levers) or 'no levers'}{kept})"


def check(recipe: QuantRecipe) -> QuantRecipe:
    """Validate a recipe (values a user typed): coded errors that name the valid choices. Runs when a
    QuantRecipe is built; a target calls it on what it is handed to refuse anything else (E-TARGET-PRECISION)."""
    from .calibrators import CALIBRATORS

    if not isinstance(recipe, QuantRecipe):
        raise UserError("E-TARGET-PRECISION", f"a quantization recipe must be an edgekit QuantRecipe, not {type(recipe).__name__}",
                        "build it with edgekit.quant.QuantRecipe(...) or --quant int8")
    if recipe.scheme not in SCHEMES:
        raise UserError("E-ARGS", f"quantization scheme {recipe.scheme!r} is not supported", f"use one of {', '.join(SCHEMES)}")
    if recipe.scheme in WEIGHT_ONLY_SCHEMES:
        _check_weight_only(recipe)
    if recipe.scheme == "int16x8" and recipe.io != "int8":
        raise UserError("E-ARGS", "float model I/O is offered for the int8 scheme only (int16x8 files take and return "
                        "int16 tensors; the runner converts)", "drop --float-io (io='float'), or use --quant int8")
    if recipe.calibrator not in CALIBRATORS:
        raise UserError("E-ARGS", f"unknown calibrator {recipe.calibrator!r}",
                        f"use one of {', '.join(sorted(CALIBRATORS))}")
    if not 50.0 < recipe.percentile <= 100.0:
        raise UserError("E-ARGS", f"percentile {recipe.percentile} is outside (50, 100]", "pass e.g. 99.99")
    if not 128 <= recipe.bins <= 65536:
        raise UserError("E-ARGS", f"bins {recipe.bins} is outside [128, 65536]", "pass e.g. 2048")
    if recipe.io not in IO_DTYPES:
        raise UserError("E-ARGS", f"model I/O {recipe.io!r} is not one of {IO_DTYPES}", "use int8 or float")
    if recipe.rounding not in ROUNDINGS:
        raise UserError("E-ARGS", f"unknown weight rounding {recipe.rounding!r}", f"use one of {', '.join(ROUNDINGS)}")
    if recipe.max_samples < 1:
        raise UserError("E-ARGS", f"max_samples {recipe.max_samples} is not positive", "pass 1 or more")
    if not isinstance(recipe.keep_float, tuple) or not all(isinstance(k, str) and k for k in recipe.keep_float):
        raise UserError("E-ARGS", f"keep_float {recipe.keep_float!r} is not a tuple of names", "pass module or class names")
    _check_learned_ranges(recipe.learned_ranges)
    if not (isinstance(recipe.float_share, (int, float)) and not isinstance(recipe.float_share, bool)
            and 0.0 <= recipe.float_share <= 0.25):
        raise UserError("E-ARGS", f"float_share {recipe.float_share!r} is outside [0, 0.25]",
                        "pass a share of the int8 weight bytes, e.g. 0.005 (0 switches mixed precision off)")
    return recipe


def _check_learned_ranges(entries) -> None:
    """(layer name, lo, hi) triples with lo <= 0 <= hi, finite (a manifest is untrusted input)."""
    def ok(e) -> bool:
        return (isinstance(e, tuple) and len(e) == 3 and isinstance(e[0], str) and e[0]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in e[1:])
                and e[1] <= 0.0 <= e[2] and e[1] < e[2])
    if not isinstance(entries, tuple) or not all(ok(e) for e in entries):
        raise UserError("E-ARGS", f"learned_ranges {entries!r:.120} is not a tuple of (layer, lo, hi) with lo <= 0 <= hi",
                        "let --qat-steps set them (edgekit.quant.qat)")


def _check_weight_only(recipe: QuantRecipe) -> None:
    """fp16/dynamic have no activation quantization: calibration levers are refused, not ignored."""
    given = [name for name, on in (("equalize", recipe.equalize), ("bias_correction", recipe.bias_correction),
                                   ("rounding=adaround", recipe.rounding == "adaround"),
                                   ("minmax_output", recipe.minmax_output),
                                   ("learned_ranges", recipe.learned_ranges), ("float_share", recipe.float_share)) if on]
    if recipe.scheme == "fp16" and recipe.keep_float:
        given.append("keep_float")
    if given:
        raise UserError("E-ARGS", f"{', '.join(given)} do(es) not apply to the {recipe.scheme} scheme "
                        "(no calibrated activations)", "drop them, or use the int8 scheme")


def _matches(name: str, class_name: str, entry: str) -> bool:
    """A keep_float entry names a module ("classifier.1"; its children match too), a module class
    ("Linear"), or a pattern over module names whose wildcards stay within one dotted part
    ("encoder.layer.*.output.dense" matches layer 3's output.dense, not its attention.output.dense)."""
    if name == entry or name.startswith(entry + ".") or class_name == entry:
        return True
    if not any(c in entry for c in "*?["):
        return False
    want, parts = entry.split("."), name.split(".")
    return len(parts) >= len(want) and all(fnmatch.fnmatchcase(p, w) for p, w in zip(parts, want))


def keep_float_modules(model, recipe: QuantRecipe) -> dict[str, str]:
    """Module name -> the keep_float entry it matched. An entry that matches nothing is an error:
    a typo must not silently quantize the layer the user meant to keep."""
    matched: dict[str, str] = {}
    used = set()
    for name, mod in model.named_modules():
        if not name:
            continue
        for entry in recipe.keep_float:
            if _matches(name, type(mod).__name__, entry):
                matched[name] = entry
                used.add(entry)
    unused = [e for e in recipe.keep_float if e not in used]
    if unused:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise UserError("E-ARGS", f"--keep-float {', '.join(unused)} matches no module of the model",
                        f"name a module (e.g. {', '.join(names)}) or a module class (e.g. Linear, Conv2d)")
    return matched
