"""QuantRecipe: the one static INT8 recipe every target applies (frozen; validated by ``check``).

Scheme (the TFLite / XNNPACK int8 scheme, which every target here can run):
- weights: int8, symmetric, one scale per output channel (quant range -127..127);
- activations: int8, asymmetric, one scale and zero point per tensor, the range chosen by one of
  edgekit's calibrators (``edgekit.quant.calibrators.CALIBRATORS``) from the calibration set;
- bias: int32 with scale = input scale x weight scale.
The calibrated ranges are per tensor and target-neutral (``ActivationRanges``): a PT2E target feeds
them to its observers, an ncnn/ptl writer can turn them into its own table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from edgekit.errors import UserError

SCHEMES = ("int8",)
IO_DTYPES = ("int8", "float")  # the artifact's input/output tensors (where a target offers the choice)


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
    io: str = "int8"  # "int8": the file takes/returns int8 tensors (the runner converts); "float": float I/O
    max_samples: int = 256  # calibration samples used at most (the first N of the set)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
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
        return check(cls(**d))

    def with_(self, **changes) -> "QuantRecipe":
        return check(replace(self, **changes))

    def describe(self) -> str:
        levers = [n for n, on in (("CLE", self.equalize), ("bias correction", self.bias_correction),
                                  ("conv+ReLU6 fused", self.fuse_relu6)) if on]
        cal = f"{self.calibrator}" + (f" {self.percentile}" if self.calibrator == "percentile" else "")
        kept = f", float: {', '.join(self.keep_float)}" if self.keep_float else ""
        return f"int8 static (w: per-channel sym, a: per-tensor, calibrator {cal}; {', '.join(levers) or 'no levers'}{kept})"


def check(recipe: QuantRecipe) -> QuantRecipe:
    """Validate a recipe (values a user typed): coded errors that name the valid choices."""
    from .calibrators import CALIBRATORS

    if not isinstance(recipe, QuantRecipe):
        raise UserError("E-TARGET-PRECISION", f"a quantization recipe must be an edgekit QuantRecipe, not {type(recipe).__name__}",
                        "build it with edgekit.quant.QuantRecipe(...) or --quant int8")
    if recipe.scheme not in SCHEMES:
        raise UserError("E-ARGS", f"quantization scheme {recipe.scheme!r} is not supported", f"use one of {', '.join(SCHEMES)}")
    if recipe.calibrator not in CALIBRATORS:
        raise UserError("E-ARGS", f"unknown calibrator {recipe.calibrator!r}",
                        f"use one of {', '.join(sorted(CALIBRATORS))}")
    if not 50.0 < recipe.percentile <= 100.0:
        raise UserError("E-ARGS", f"percentile {recipe.percentile} is outside (50, 100]", "pass e.g. 99.99")
    if not 128 <= recipe.bins <= 65536:
        raise UserError("E-ARGS", f"bins {recipe.bins} is outside [128, 65536]", "pass e.g. 2048")
    if recipe.io not in IO_DTYPES:
        raise UserError("E-ARGS", f"model I/O {recipe.io!r} is not one of {IO_DTYPES}", "use int8 or float")
    if recipe.max_samples < 1:
        raise UserError("E-ARGS", f"max_samples {recipe.max_samples} is not positive", "pass 1 or more")
    if not isinstance(recipe.keep_float, tuple) or not all(isinstance(k, str) and k for k in recipe.keep_float):
        raise UserError("E-ARGS", f"keep_float {recipe.keep_float!r} is not a tuple of names", "pass module or class names")
    return recipe


def keep_float_modules(model, recipe: QuantRecipe) -> dict[str, str]:
    """Module name -> the keep_float entry it matched. An entry that matches nothing is an error:
    a typo must not silently quantize the layer the user meant to keep."""
    matched: dict[str, str] = {}
    used = set()
    for name, mod in model.named_modules():
        if not name:
            continue
        for entry in recipe.keep_float:
            if name == entry or name.startswith(entry + ".") or type(mod).__name__ == entry:
                matched[name] = entry
                used.add(entry)
    unused = [e for e in recipe.keep_float if e not in used]
    if unused:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise UserError("E-ARGS", f"--keep-float {', '.join(unused)} matches no module of the model",
                        f"name a module (e.g. {', '.join(names)}) or a module class (e.g. Linear, Conv2d)")
    return matched
