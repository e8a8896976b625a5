"""Core ML (target ``coreml``): an ML Program ``.mlpackage`` written by coremltools, for iOS/macOS apps.

coremltools converts on Linux, but Core ML predictions run only on macOS/iOS: this target is NOT
RUNNABLE ON A HOST (``runner`` raises E-HOST-UNRUNNABLE with the reason, never a pass or a fail).
What a host can check, edgekit checks statically (``check.static_check``), once at export (a
failure is an export error) and again at verify, through ``screen``, before the file is trusted
(a failure is an error with its code): the package layout, the spec loads and is an ML Program, its
inputs and outputs have the ModelSpec's names, shapes and dtypes, its weights are stored in the
asked precision, and the weight file holds exactly the blobs the program names. The findings go to
``meta["static_check"]`` in the manifest.

Precisions (edgekit's scheme names, ``--quant``):
- ``fp32``: compute_precision FLOAT32 (fp32 weights, fp32 compute).
- ``fp16``: compute_precision FLOAT16 (fp16 weights and fp16 compute, activations included).
- ``dynamic``: weight-only INT8, the edgekit name of "int8 weights, no calibration": the fp16
  program, then ``coremltools.optimize.coreml.linear_quantize_weights`` (linear_symmetric, int8,
  per output channel, every conv/linear weight: weight_threshold 0). Core ML dequantizes the
  weights (constexpr_affine_dequantize) and computes in fp16; activations are never quantized.
  edgekit's ``int8`` means static activation quantization with calibrated ranges, which this target
  does not offer (``--quant int8`` is refused for coreml, not silently mapped).

Storage: an ``.mlpackage`` is a folder. The artifact lists every file inside it (``files``, each
hashed in the manifest, copied one by one by ``edgekit bundle --ios``, which recreates the folder);
``path`` is the package's own ``Manifest.json`` (the manifest requires the main path to be one of the
hashed files) and ``meta["package"]`` names the folder an app loads.
"""
from __future__ import annotations

import re
from pathlib import Path

from edgekit.errors import UserError

from ..base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

NAME = "coreml"
HOST_RUNNABLE = False
NOT_RUNNABLE_REASON = ("Core ML predictions run only on macOS/iOS (coremltools converts on Linux but cannot run a model "
                       "there); edgekit checks the .mlpackage statically instead: spec, ML Program, input/output names, "
                       "shapes and dtypes, weight precision, weight file")
PRECISIONS = ("fp32", "fp16", "dynamic")
PACKAGE_SUFFIX = ".mlpackage"
PACKAGE_MANIFEST = "Manifest.json"
# "<name>.mlpackage/Manifest.json": the artifact path of a package at the top of the bundle
_MAIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]{0,200}\.mlpackage)/Manifest\.json")

# Unmeasured (nothing runs a Core ML file on a host): the bounds a macOS runner would start from,
# as the other targets' measured ones for the same arithmetic. fp16: fp16 compute throughout, as
# ExecuTorch's fp16 programs (measured there: MobileNetV2 max_abs_rel ~0.02). dynamic: the same fp16
# compute on int8 weights, judged against the FP32 model (no weight simulation is written).
FP16_TOLERANCE = Tolerance(max_abs_rel=0.05, min_cosine=0.995, min_top1=0.9)
DYNAMIC_TOLERANCE = Tolerance(max_abs_rel=0.2, min_cosine=0.95, min_top1=0.75)


class CoremlConverter(Converter):
    info = TargetInfo(
        rank=90,
        name=NAME,
        title="Core ML (iOS/macOS)",
        suffix=PACKAGE_SUFFIX,
        precisions=PRECISIONS,
        tolerances={"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "dynamic": DYNAMIC_TOLERANCE},  # never used on a host
        delegates=("cpu", "gpu", "ane"),
        extra="coreml",
        modules=("coremltools",),
        runtime_modules=(),
        packages=("coremltools",),
        exporter="torch.export + coremltools.convert (mlprogram, iOS16, compute_precision FLOAT32/FLOAT16); "
                 "dynamic: + coremltools.optimize.coreml.linear_quantize_weights (int8, per-channel symmetric)",
        runtime="macOS/iOS only: Core ML (CPU, GPU, Neural Engine); not runnable on a host, checked statically",
        deprecated=None,
        not_runnable=NOT_RUNNABLE_REASON,
        app_platforms=("ios",),
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        return _export(model, spec, None, out_dir, example_inputs)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """fp16 compute, or (dynamic) int8 weights through coremltools' linear_quantize_weights."""
        if recipe.keep_float:
            raise UserError("E-ARGS", f"--keep-float {', '.join(recipe.keep_float)} cannot be honoured by the {NAME} target "
                            "(coremltools names the weights it quantizes after the converted graph, not the PyTorch modules)",
                            f"drop --keep-float, or export {NAME} in a separate run without it")
        return _export(model, spec, recipe, out_dir, example_inputs)

    def screen(self, artifact: Artifact, root: Path) -> None:
        """verify: the static check of the (hashed) package against the bundle's ModelSpec."""
        from edgekit import manifest as M

        from .check import static_check

        package = package_of(artifact)
        static_check(Path(root), package, M.read(Path(root)).spec, artifact.precision, artifact.files)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        raise UserError("E-HOST-UNRUNNABLE", f"{artifact.path} is not runnable on host: {NOT_RUNNABLE_REASON}",
                        "run it in an iOS/macOS app (docs/targets/coreml.md); on a host, verify the other targets")


def package_of(artifact: Artifact) -> str:
    """The package folder an artifact names (``<name>.mlpackage``), from its checked path."""
    found = _MAIN.fullmatch(artifact.path)
    if not found:
        raise UserError("E-BUNDLE-INVALID", f"coreml artifact path {artifact.path!r:.200} is not <name>.mlpackage/Manifest.json",
                        "re-export the bundle; do not edit manifest.json by hand")
    return found.group(1)


def _export(model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
    """The .mlpackage, statically checked against the spec (a package that fails it is an export error)."""
    from .check import static_check
    from .export import export_package

    precision = "fp32" if recipe is None else recipe.scheme
    package, files, notes = export_package(model, spec, precision, out_dir, example_inputs)
    try:
        found = static_check(out_dir, package, spec, precision, files)
    except UserError as exc:  # our own conversion does not pass: the export failed
        raise UserError("E-EXPORT-FAILED", f"the converted {package} fails edgekit's static check: {exc.what}",
                        "report this with the model; drop the coreml target meanwhile") from exc
    meta = {"package": package, "host_runnable": HOST_RUNNABLE, "not_runnable_reason": NOT_RUNNABLE_REASON,
            "inputs": found["inputs"], "outputs": found["outputs"], "io_notes": notes, "static_check": found}
    if recipe is not None:
        meta.update(recipe=recipe.to_dict(), recipe_summary=recipe.describe(), quant_notes=[_weights_note(found)])
    return Artifact(NAME, precision, f"{package}/{PACKAGE_MANIFEST}", files, meta)


def _weights_note(found: dict) -> str:
    w = found["weights"]
    kinds = ", ".join(f"{n} {d}" for d, n in sorted(w["weight_tensors_by_dtype"].items()))
    return (f"Core ML weights of {w['weight_ops']} conv/linear ops: {kinds}"
            + (f" ({w['int8_ops']} constexpr int8 dequantize ops)" if w["int8_ops"] else "")
            + "; Core ML computes in fp16 on the device, activations included"
            + (" (int8 weights are dequantized to fp16; no hybrid int8 kernels, activations are never quantized)"
               if w["int8_ops"] else ""))


CONVERTER = CoremlConverter()
