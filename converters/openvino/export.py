"""Export to an OpenVINO IR (.xml + .bin) through edgekit's onnx target.

1. ``get("onnx").export`` writes the ONNX file into a scratch folder inside the bundle: FP32 for
   fp32/fp16; for int8 the QDQ model carrying edgekit's calibrated ranges, plus the quantized
   reference program (the convert_pt2e model the QDQ file was exported from);
2. ``openvino.convert_model`` reads it (OpenVINO's ONNX frontend: a QuantizeLinear/DequantizeLinear
   pair becomes a FakeQuantize with the same scale and zero point, int8 weights stay int8 constants
   behind Convert/Multiply); ``openvino.save_model`` writes the IR, ``compress_to_fp16`` only for fp16;
3. the IR, the reference and nothing else are listed: the Converter template moves them into the
   bundle, and the onnx folder goes with the staging folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError

from ..onnx.via import export_via_onnx
from .no_telemetry import import_openvino
from .runner import message, same_names

TARGET = "openvino"
PRECISIONS = ("fp32", "fp16", "int8")
# INT8 weights on the 8-bit grid widened per channel so that no pair of weights the CPU plugin's
# non-VNNI x86 kernels add in a saturating int16 can overflow (weight_grid.py; OpenVINO's NNCF uses 7 bits).
WEIGHT_NOTE = ("weights per channel on the widest 8-bit grid on which no two adjacent input channels' weights "
               "can saturate the int16 pair sums of the CPU plugin's int8 kernels on x86 CPUs without VNNI "
               "(weight_grid.py; the 7-bit grid of OpenVINO's NNCF overflow fix is its worst case)")


def export(model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration=None):
    """-> (main file name, every file name, meta, precision); the files are in out_dir (the Converter
    template's staging folder, which it publishes)."""
    precision = "fp32" if recipe is None else recipe.scheme
    ov = import_openvino()
    # ".openvino" in the name: ncnn writes <name>-<precision>.bin into the same bundle
    xml, weights = f"{spec.name}-{precision}.{TARGET}.xml", f"{spec.name}-{precision}.{TARGET}.bin"
    scratch = out_dir / "onnx"  # the onnx target's files: never listed, so they stay in the staging folder
    int8 = precision == "int8"
    onnx_art = export_via_onnx(TARGET, model, spec, recipe if int8 else None, scratch, example_inputs, calibration,
                               weight_observer=_weight_observer() if int8 else None)
    converted = _convert(ov, scratch / onnx_art.path)
    converted.set_friendly_name(spec.name)
    if spec.dynamic:
        _bound(ov, converted, spec)
    if not same_names(converted, spec.input_names, spec.output_names):
        raise UserError("E-EXPORT-FAILED", f"openvino.convert_model lost the ModelSpec's input/output names "
                        f"{spec.input_names} / {spec.output_names}", "report it with the model; other targets are unaffected")
    ov.save_model(converted, str(out_dir / xml), compress_to_fp16=precision == "fp16")
    if not (out_dir / xml).is_file() or not (out_dir / weights).is_file():
        raise UserError("E-EXPORT-FAILED", f"openvino.save_model did not write {xml} and {weights}",
                        "report it with the model; other targets are unaffected")
    meta = {"inputs": spec.input_names, "input_dtypes": [t.dtype for t in spec.inputs],
            "outputs": spec.output_names, "onnx_opset": onnx_art.meta.get("opset")}
    if spec.dynamic:  # the runner checks a sample's shape against these and the ranges
        meta.update({"input_shapes": [list(t.shape) for t in spec.inputs], **dynamic.meta(spec.dynamic)})
    files = [weights, xml]
    if precision == "int8":
        meta.update(_int8_meta(ov, onnx_art.meta, spec, scratch, out_dir, xml, weights))
        files.insert(0, meta["reference"])
    elif precision == "fp16":
        from edgekit.quant.weight_only import weight_only_meta

        sim, ref = _fp16_reference(model, recipe, tuple(example_inputs), out_dir, spec.name)
        meta.update(weight_only_meta(recipe, spec.name, TARGET, sim, [
            "compress_to_fp16: every float constant of the IR (weights, biases, norms, embeddings) is stored "
            "as fp16, and so is every float parameter of the reference; the strict check computes in f32"]))
        meta["fp16_constants"] = sim.fp16_constants
        files.insert(0, ref)
    return xml, tuple(files), meta, precision


def _weight_observer():
    from .weight_grid import observer

    return observer()


def _bound(ov, converted, spec) -> None:
    """Give the IR's dynamic input dims the spec's ranges (``ov.Dimension(min, max)``; the onnx file
    has unbounded symbolic dims) and every other dim the spec's size. A step (a multiple of 16) has
    no IR form: the runner checks it (edgekit.dynamic.shape_problem)."""
    free = {(n, a): d for d in spec.dynamic for n, a in d.axes}
    shapes = {t.name: ov.PartialShape([ov.Dimension(free[t.name, k].min, free[t.name, k].max) if (t.name, k) in free
                                       else ov.Dimension(int(s)) for k, s in enumerate(t.shape)])
              for t in spec.inputs}
    try:
        converted.reshape(shapes)
    except RuntimeError as exc:  # shape inference refuses the ranges (e.g. a reshape to a fixed size)
        raise UserError("E-EXPORT-FAILED", f"OpenVINO cannot give the inputs the ranges "
                        f"{', '.join(d.describe() for d in spec.dynamic)}: {message(exc)}",
                        "export openvino with a fixed shape, or a narrower --dynamic range") from exc


def _fp16_reference(model, recipe, example_inputs: tuple, out_dir: Path, spec_name: str):
    """edgekit's fp16 weight simulation (BatchNorm folded, conv/linear weights rounded to fp16) with
    every other float parameter and buffer rounded to fp16 too: ``compress_to_fp16`` stores biases,
    norm scales and embedding tables as fp16 as well (measured on MobileNetV2: with float32 biases in
    the reference the IR was 2.2e-3 of the output scale from it, rounding them too gives 2.3e-5).
    -> (the simulated module, the reference file name)."""
    import torch

    from edgekit.quant.reference import reference_name, save_quantized_reference
    from edgekit.quant.weight_only import fp16_weight, simulate

    sim = simulate(model, "fp16", example_inputs, recipe)
    count = 0
    with torch.no_grad():
        for t in (*sim.parameters(), *sim.buffers()):
            if t.dtype == torch.float32:
                t.copy_(fp16_weight(t))
                count += t.numel()
    sim.fp16_constants = count  # every float element the IR stores as fp16 (weight_only_*: conv/linear weights)
    name = reference_name(spec_name, TARGET, "fp16")
    example = tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in example_inputs)
    save_quantized_reference(sim, example, Path(out_dir) / name)
    return sim, name


def _convert(ov, onnx_path: Path):
    try:
        return ov.convert_model(str(onnx_path))
    except Exception as exc:  # the frontend raises OpConversionFailure / GeneralFailure / RuntimeError
        text = str(exc)
        found = re.search(r"OpenVINO does not support the following ONNX operations: ([^\n]+)", text)
        if found:
            raise UnsupportedOpError(TARGET, found.group(1).strip(), None,
                                     "replace the op in the model, or drop the target openvino") from exc
        raise UserError("E-EXPORT-FAILED", f"openvino.convert_model failed on the ONNX file: {message(exc)}",
                        "report it with the model; other targets are unaffected") from exc


def _int8_meta(ov, onnx_meta: dict, spec, onnx_dir: Path, out_dir: Path, xml: str, weights: str) -> dict:
    """The onnx path's quantization meta with the reference moved out of onnx_dir under this target's
    name, and the evidence that the CPU plugin runs the IR on integer kernels (on the exporting host)."""
    from edgekit.quant.reference import reference_name

    from .runner import compile_model, integer_summary, runtime_layers

    ref = reference_name(spec.name, TARGET)
    os.replace(onnx_dir / onnx_meta["reference"], out_dir / ref)
    notes = [n for n in onnx_meta.get("quant_notes", []) if not n.startswith("model I/O is float")]
    notes.append("model I/O is float: the IR quantizes its inputs and dequantizes its outputs itself "
                 "(FakeQuantize at its edges; the recipe's io does not apply to openvino)")
    notes.append(WEIGHT_NOTE)
    core = ov.Core()
    try:
        compiled = compile_model(core, core.read_model(str(out_dir / xml), str(out_dir / weights)))
        summary = integer_summary(runtime_layers(compiled))
    except (RuntimeError, UserError) as exc:  # evidence only: the runner reports a model that cannot compile
        summary = {"error": str(exc)[:300]}
    if "error" not in summary:
        n_int, n_all = sum(summary["integer"].values()), sum(summary["integer"].values()) + sum(summary["float"].values())
        notes.append(f"OpenVINO's CPU plugin runs {n_int} of {n_all} conv/matmul layers on integer (u8/i8) kernels "
                     f"(runtime graph on the exporting host: {summary})")
    meta = {k: v for k, v in onnx_meta.items() if k not in ("inputs", "input_dtypes", "outputs", "opset")}
    meta.update({"reference": ref, "quant_notes": notes, "runtime_kernels": summary})
    return meta
