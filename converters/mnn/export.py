"""The mnn export: edgekit's ONNX file (from the onnx target) -> MNN's converter -> ``<name>-<precision>.mnn``.

fp32: the FP32 ONNX, converted as is (after the exact-GELU rewrite, onnx_rewrite.py).
fp16: the same ONNX converted with ``--fp16`` (MNN stores conv/linear weights and other float
      constants as float16 and computes in float); its reference is edgekit's fp16-weight simulation.
int8: the onnx target's QDQ ONNX with edgekit's calibrated ranges and its quantized reference; the
      graph is made float and MNN re-quantizes it with exactly those ranges (int8_params.py).

The converter works in a folder inside ``out_dir`` (the Converter template's staging folder); the
files the Artifact lists are moved out of it, and the template publishes them only when every step
succeeded: a failed export leaves nothing behind.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from edgekit import dynamic
from edgekit.errors import UserError

from . import tool
from .int8_params import compression_params, qdq_to_float
from .onnx_rewrite import exact_gelu, round_weights_fp16

TARGET = "mnn"
SUFFIX = ".mnn"
# MNN ops that convert or move data (int8 <-> float, layout): not "float compute" in the int8 note
_DATA_MOVEMENT = {"Int8ToFloat", "FloatToInt8", "Raster", "ConvertTensor", "Reshape"}


def export(model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration=None):
    """-> the Artifact; its files are in out_dir (the Converter template's staging folder)."""
    from edgekit.converters.base import Artifact

    precision = "fp32" if recipe is None else recipe.scheme
    if precision == "fp16" and recipe.keep_float:
        raise UserError("E-ARGS", "target mnn stores every conv/linear weight in fp16; it cannot keep layers float",
                        "drop --keep-float, or use --quant int8")
    tool.available()
    name = f"{spec.name}-{precision}{SUFFIX}"
    scratch = (Path(out_dir) / "mnn-work").resolve()  # argv paths: the child runs in scratch; never listed
    scratch.mkdir()
    onnx_model, onnx_meta = _onnx(model, spec, recipe if precision == "int8" else None, scratch,
                                  example_inputs, calibration)
    meta = {"inputs": spec.input_names, "input_dtypes": [t.dtype for t in spec.inputs],
            "outputs": spec.output_names, "output_shapes": [list(t.shape) for t in spec.outputs],
            "onnx_opset": onnx_meta.get("opset"), "onnx_rewrites": {"gelu_to_erf": exact_gelu(onnx_model)}}
    if spec.dynamic:  # the ONNX file's symbolic dims stay free in the .mnn; the runner checks the ranges
        meta.update({"input_shapes": [list(t.shape) for t in spec.inputs], **dynamic.meta(spec.dynamic)})
    if precision == "int8":
        steps, extra = _int8_steps(onnx_model, scratch, name)
        done = tool.run(steps, scratch, probe=scratch / name, onnx_graph=onnx_model.graph)
        meta.update(_int8_meta(onnx_meta, extra, done.probe, spec.name))
    else:
        if precision == "fp16":
            meta["onnx_rewrites"]["fp16_weights_rounded_to_nearest"] = round_weights_fp16(onnx_model)
        src = _save(onnx_model, scratch / "model.onnx")
        steps = [tool.convert_onnx(src, scratch / name, ("--fp16",) if precision == "fp16" else ())]
        done = tool.run(steps, scratch, onnx_graph=onnx_model.graph)
    tool.write_log(done.log)
    meta["converter"] = {"call": "_tools.mnnconvert (MNN's compiled converter) in a child process",
                         "child": done.confinement, "mnn": tool.version(),
                         "argv": [_plain(argv, scratch) for argv in steps]}
    files = []  # the reference and side files first, the .mnn last
    if precision == "fp16":
        files.append(_fp16_reference(model, recipe, spec, meta, out_dir, example_inputs))
    if precision == "int8":
        files.append(_take(scratch / "onnx" / onnx_meta["reference"], out_dir, meta["reference"]))
    side = scratch / f"{name}.weight"  # MNN's converter moves the weights of a > 2 GB model there
    if side.is_file():  # (the runtime reads <file>.weight next to the .mnn)
        files.append(_take(side, out_dir))
    files.append(_take(scratch / name, out_dir))
    meta["file_bytes"] = (out_dir / name).stat().st_size
    return Artifact(TARGET, precision, name, tuple(files), meta)


def _take(src: Path, out_dir: Path, name: str | None = None) -> str:
    """Move a file of the work folder into out_dir (under ``name``) -> its name there."""
    name = name or src.name
    os.replace(src, Path(out_dir) / name)
    return name


def _fp16_reference(model, recipe, spec, meta: dict, out_dir: Path, example_inputs: tuple) -> str:
    """edgekit's fp16-weight simulation, written into out_dir; its meta keys go into ``meta``."""
    from edgekit.quant.weight_only import WITH_EMBEDDING, weight_only_meta, write_reference

    # MNN --fp16 halves every conv (linear layers become convs) and every float constant
    # (embedding tables too); edgekit's simulation rounds the conv/linear/embedding weights.
    sim, ref = write_reference(model, recipe, tuple(example_inputs), Path(out_dir), spec.name, TARGET, types=WITH_EMBEDDING)
    meta.update(weight_only_meta(recipe, spec.name, TARGET, sim, [
        "MNN stores conv/linear weights and float constants as float16 (--fp16); biases stay float32"]))
    return ref


def _onnx(model, spec, recipe, scratch: Path, example_inputs: tuple, calibration):
    """The onnx target's file (QDQ with its quantized reference for a recipe), loaded."""
    import onnx

    from ..onnx.via import export_via_onnx

    folder = scratch / "onnx"
    folder.mkdir()
    art = export_via_onnx(TARGET, model, spec, recipe, folder, example_inputs, calibration)
    return onnx.load(str(folder / art.path)), art.meta


def _save(model, path: Path) -> Path:
    import onnx

    try:
        onnx.save(model, str(path))
    except ValueError:  # above protobuf's 2 GB: weights in a side file MNN's converter reads too
        onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def _int8_steps(onnx_model, scratch: Path, name: str):
    """Float graph + compression params; two converter calls: ONNX -> float .mnn, then that .mnn with
    the params -> int8 .mnn. (One ONNX call with the params loses the large linear layers: MNN keeps
    weights of >= 64k elements outside the model while converting and quantizes them before reading
    them back, which wrote garbage for MobileNetV2's classifier.)"""
    graph = qdq_to_float(onnx_model)
    if not graph.layers:
        raise UserError("E-TARGET-PRECISION", "no conv/linear layer of the model has int8 weights and quantized "
                        "input and output, so MNN would run it entirely in float",
                        "export mnn in fp32 or fp16, or check --keep-float")
    src = _save(graph.model, scratch / "float.onnx")
    params = scratch / "int8_params.json"
    params.write_text(json.dumps(compression_params(graph.layers)))
    steps = [tool.convert_onnx(src, scratch / "float.mnn"),
             tool.convert_mnn(scratch / "float.mnn", scratch / name, ("--compressionParamsFile", str(params)))]
    return steps, graph


def _int8_meta(onnx_meta: dict, graph, probe: list, spec_name: str) -> dict:
    """The onnx target's quantization meta under the mnn reference's name, plus what MNN's runtime
    reported running in int8 (the op probe: type strings such as ``Convolution [ DT_INT8 ]``)."""
    from edgekit.quant.reference import reference_name

    int8 = Counter(t.split(" [")[0] for _, t in probe if "DT_INT8" in t)
    floats = Counter(t.split(" [")[0] for _, t in probe if "DT_INT8" not in t)
    compute = {k: v for k, v in floats.items() if k not in _DATA_MOVEMENT}
    convs = int8["Convolution"] + int8["ConvolutionDepthwise"]
    if convs == 0:
        raise UserError("E-EXPORT-FAILED", f"MNN's converter wrote no int8 convolution for the {len(graph.layers)} "
                        "quantized layers (its runtime runs them all in float)",
                        "report it with the model; export mnn in fp32 or fp16 meanwhile")
    notes = [n for n in onnx_meta.get("quant_notes", []) if ".onnx" not in n]
    notes.append("model I/O is float: the .mnn quantizes its inputs and dequantizes its outputs itself "
                 f"(recipe io={onnx_meta['recipe'].get('io')!r} does not apply to mnn)")
    notes.append(f"MNN runs {convs} convolution/linear layers in int8 with edgekit's ranges "
                 f"({sum(int8.values())} int8 ops in all); float ops between them: "
                 + (", ".join(f"{k} x{v}" for k, v in sorted(compute.items())) or "none"))
    if convs < len(graph.layers):
        notes.append(f"MNN made only {convs} of the {len(graph.layers)} quantized layers int8; the others run in float")
    if graph.skipped:
        notes.append(f"{len(graph.skipped)} conv/linear layer(s) have no quantized input or output and stay float: "
                     + ", ".join(graph.skipped[:8]))
    keys = ("output_scales", "recipe", "recipe_summary", "calibration", "kept_float")
    return {**{k: onnx_meta[k] for k in keys}, "reference": reference_name(spec_name, TARGET),
            "quant_notes": notes, "int8_convolutions": convs, "int8_ops": dict(int8), "float_ops": dict(floats)}


def _plain(argv: list[str], scratch: Path) -> list[str]:
    """A converter call as recorded in the meta: scratch paths reduced to file names."""
    return [Path(a).name if a.startswith(str(scratch)) else a for a in argv]
