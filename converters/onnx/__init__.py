"""ONNX target: ``torch.onnx.export`` with the dynamo exporter (``torch.export`` + onnxscript), run
in onnxruntime's CPU execution provider.

INT8 (a QuantRecipe): a QDQ model with edgekit's calibrated ranges (``int8.py``), saved as
``<name>-int8.onnx`` with its quantized reference next to it; onnxruntime fuses the pairs into its
integer kernels (weights and activations stored as uint8, ``u8_weights.py``, ``u8_activations.py``);
per-layer view: ``per_layer.py``.

The file keeps the ModelSpec's input and output names, and the weights inside the one .onnx file
(``external_data=False``; torch only spills them into a side file above the 2 GB protobuf limit,
and then that file is moved and listed with the artifact too).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError

from ..base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance


# dynamic (onnxruntime.quantization.quantize_dynamic: MatMulInteger/ConvInteger with int8 per-channel
# weights, activations quantized to uint8 per tensor at run time) vs the weight-only simulation, 48
# samples: tiny_transformer max_abs_rel 0.012, min cosine 0.9997, top-1 0.98; tiny_cnn (Conv included)
# 0.030. Conv is NOT quantized: with ConvInteger, MobileNetV2 fell to 10.2 dB / cosine 0.69 / top-1
# 0.63 against its own weight simulation (tflite's hybrid convs: 22 dB), so only MatMul/Gemm are.
DYNAMIC_TOLERANCE = Tolerance(max_abs_rel=0.05, min_cosine=0.999, min_top1=0.9)
DYNAMIC_OPS = ["MatMul", "Gemm"]  # weight-bearing ops quantize_dynamic rewrites (Linear layers)
# INT8 (QDQ, onnxruntime's QLinearConv/QGemm kernels) vs the convert_pt2e reference: integer kernels
# and the float simulation drift apart through rounding in deep networks (measured, 32 held-out
# photos: MobileNetV2 max 10 output steps; tiny_cnn max 1 step; with learned rounding 12 steps, top-1
# 14/16 vs the reference). Top-1 is bounded at the integer-kernel noise floor (base.INT8_END_TO_END_TOLERANCE).
INT8_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.98, min_top1=0.6, max_steps=24.0)


class OnnxConverter(Converter):
    info = TargetInfo(
        rank=60,
        levers=("equalize", "bias_correction", "adaround", "keep_float", "qat"),
        name="onnx",
        title="ONNX",
        suffix=".onnx",
        precisions=("fp32", "int8", "dynamic"),
        tolerances={"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE, "dynamic": DYNAMIC_TOLERANCE},
        delegates=("cpu",),
        extra="onnx",
        modules=("onnx", "onnxscript"),
        runtime_modules=("onnxruntime",),
        packages=("onnx", "onnxruntime", "onnxscript"),
        exporter="torch.onnx.export (dynamo: torch.export + onnxscript); INT8: QDQ from edgekit's PT2E recipe "
                 "(ExecuTorch's XNNPACK quantizer places the pairs); dynamic: onnxruntime quantize_dynamic "
                 "(int8 per-channel weights)",
        runtime="onnxruntime InferenceSession, CPUExecutionProvider",
        dynamic="symbolic dims in the graph inputs (torch.onnx dynamic_shapes); onnxruntime takes any size in the range",
        # onnxruntime publishes cp311 manylinux aarch64 wheels; the runner needs only it and numpy
        arm=True,
        arm_wheels=("onnxruntime==1.32.0",),
    )

    # INT8 weights as uint8 (u8_weights.py) for onnxruntime; the targets that convert the file
    # (export_via_onnx: mnn, openvino) read it as torch.onnx writes it, with their own weight grid.
    u8_weights = True
    weight_observer = None  # int8 weights: min/max per channel; a converting target may set its own grid

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        return self._write(model, spec, None, "fp32", out_dir, example_inputs, {})

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        from .int8 import quantize_for_onnx

        program, _, int8_meta = quantize_for_onnx(model, spec, recipe, out_dir, example_inputs, calibration, self.weight_observer)
        return self._write(program, spec, recipe, "int8", out_dir, example_inputs, int8_meta)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """dynamic: onnxruntime's dynamic quantization of the FP32 file (int8 per-channel weights)."""
        if recipe.keep_float:
            raise UserError("E-ARGS", "target onnx cannot keep layers float in dynamic mode (its nodes are not named "
                            "after the model's modules)", "drop --keep-float, or drop the target onnx")
        return self._write(model, spec, recipe, "dynamic", out_dir, example_inputs, {})

    def _write(self, model, spec, recipe, precision: str, out_dir: Path, example_inputs: tuple, int8_meta: dict):
        import onnx
        import torch

        name = f"{spec.name}-{precision}{self.info.suffix}"
        # The scratch folder gets the final file name, so an external-data file written next to a
        # > 2 GB model keeps a valid relative reference when both are moved into out_dir.
        scratch = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out_dir))
        try:
            with _quiet_constant_folding():
                try:
                    program = torch.onnx.export(
                        model, tuple(example_inputs), None, dynamo=True, input_names=spec.input_names,
                        dynamic_shapes=dynamic.torch_shapes(spec.dynamic, spec.input_names),
                        output_names=spec.output_names, external_data=False, verbose=False,
                        artifacts_dir=scratch)
                except Exception as exc:  # the exporter raises torch.export, dispatch and onnxscript errors
                    raise _export_error(exc) from exc
            _claim_io_names(program.model)
            _drop_debug_info(program.model)
            program.save(scratch / name, external_data=False)
            if int8_meta and self.u8_weights:
                int8_meta = _store_unsigned(scratch / name, int8_meta, activations=True)
            if precision == "dynamic":
                _quantize_dynamic(scratch / name)
                dynamic_notes = _store_unsigned(scratch / name, {}).get("quant_notes", [])
            try:
                onnx.checker.check_model(str(scratch / name))
            except onnx.checker.ValidationError as exc:
                raise UserError("E-EXPORT-FAILED", f"torch.onnx.export wrote an invalid model: {exc}",
                                "report it with the model; other targets are unaffected") from exc
            files = sorted((p.name for p in scratch.iterdir()), key=lambda f: f == name)  # main file last
            if precision == "dynamic":
                from edgekit.quant.weight_only import write_reference

                sim, ref = write_reference(model, recipe, tuple(example_inputs), out_dir, spec.name, self.info.name,
                                           types=(torch.nn.Linear,))
            for f in files:
                os.replace(scratch / f, out_dir / f)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        meta = {"inputs": spec.input_names, "input_dtypes": [t.dtype for t in spec.inputs],
                "outputs": spec.output_names, "opset": program.model.opset_imports.get("", None), **dynamic.meta(spec.dynamic)}
        if precision == "dynamic":
            from edgekit.quant.weight_only import weight_only_meta

            meta.update(weight_only_meta(recipe, spec.name, self.info.name, sim))
            meta["quant_notes"] = [*meta.get("quant_notes", []), *dynamic_notes]  # the uint8 weights, said
            files = (ref, *files)
        if int8_meta:
            meta.update(int8_meta)
            files = (int8_meta["reference"], *files)
        return Artifact(self.info.name, precision, name, tuple(files), meta)

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """INT8: each layer cut out of the file, fused by onnxruntime as in the whole file, run on the
        reference's own input (``per_layer.onnx_per_layer``); None for other precisions."""
        if artifact.precision != "int8" or "reference" not in artifact.meta:
            return None
        from .per_layer import onnx_per_layer

        return onnx_per_layer(artifact, root, samples)

    def pt2e_quantizer(self, scheme: str = "int8"):
        if scheme != "int8":
            return None
        from .int8 import _quantizer

        return _quantizer()

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        path = Path(root) / artifact.path
        if not path.is_file():
            raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # graph_optimization_level stays at ORT's default (ORT_ENABLE_ALL): the fusions it applies
        # (conv+activation, GELU, LayerNorm, ...) are what an app gets by default and keep FP32
        # arithmetic; the x86 CPU provider never lowers precision on its own (the bf16 GEMM fast
        # path exists only on ARM and only when asked for).
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except ort_errors.NotImplemented as exc:
            found = re.search(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'", str(exc))
            if found:
                raise UnsupportedOpError("onnx", f"{found.group(1)} (opset {found.group(2)})", found.group(3),
                                         "export with an opset onnxruntime implements, or replace the op") from exc
            raise UserError("E-ARTIFACT-CORRUPT", f"onnxruntime cannot load {path}: {exc}", "re-export the bundle") from exc
        except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidProtobuf, ort_errors.InvalidGraph,
                ort_errors.NoSuchFile) as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"onnxruntime cannot load {path}: {exc}", "re-export the bundle") from exc
        names = artifact.meta["inputs"]
        dtypes = [np.dtype(d) for d in artifact.meta["input_dtypes"]]
        outputs = artifact.meta["outputs"]

        def run(inputs) -> list:
            feed = {n: np.ascontiguousarray(a, dtype=dt) for n, a, dt in zip(names, inputs, dtypes)}
            return [np.asarray(o, dtype=np.float32) for o in session.run(outputs, feed)]

        return run


def _store_unsigned(path: Path, int8_meta: dict, activations: bool = False) -> dict:
    """The QDQ file rewritten with uint8 weights (``u8_weights.py``: onnxruntime's u8s8 kernels saturate
    on x86 without VNNI) and, with ``activations``, uint8 activations (``u8_activations.py``: onnxruntime
    fuses every int8 conv); -> the meta with a note for each."""
    import onnx

    from . import u8_activations, u8_weights

    model = onnx.load(str(path))
    notes = [u8_weights.NOTE] if u8_weights.unsigned_weights(model) else []
    if activations and u8_activations.unsigned_activations(model):
        notes.append(u8_activations.NOTE)
    if not notes:
        return int8_meta
    onnx.save(model, str(path))
    return {**int8_meta, "quant_notes": [*int8_meta.get("quant_notes", ()), *notes]}


def _quantize_dynamic(path: Path) -> None:
    """Rewrite the file in place (inside the scratch folder) with int8 per-channel weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.name + ".q")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # silence its 'consider pre-processing' advice
    try:
        quantize_dynamic(str(path), str(tmp), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=DYNAMIC_OPS)
    except Exception as exc:  # onnxruntime.quantization raises ValueError, KeyError, onnx errors alike
        raise UserError("E-EXPORT-FAILED", f"onnxruntime quantize_dynamic failed: {_plain(exc)[:300]}",
                        "export onnx in fp32 for this model") from exc
    finally:
        root.setLevel(level)
    os.replace(tmp, path)


def _drop_debug_info(model) -> None:
    """Drop what torch.onnx records for debugging from the file that ships: every node's Python stack,
    fx node and module path (``metadata_props``), the values' and the graph's. It held the build
    machine's file paths (``/home/<user>/...``) and 11 % of MobileNetV2's INT8 file (455 of 4,168 kB);
    edgekit names a user's source line from the torch.export program, never from the .onnx."""
    graph = model.graph
    graph.metadata_props.clear()
    for value in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
        value.metadata_props.clear()
    for node in graph.all_nodes():
        node.metadata_props.clear()
        for value in node.outputs:
            value.metadata_props.clear()


def _claim_io_names(model) -> None:
    """Make the graph's input/output names unique in the model.

    torch.onnx renames the graph inputs and outputs to the names asked for without checking that an
    inner value already carries one (MiniLM: the word-embedding Gather output is also "embedding"),
    which gives an invalid model ("Duplicate definition of name"). Inner values yield the name.
    """
    graph = model.graph
    io = {id(v) for v in (*graph.inputs, *graph.outputs)}
    values = [*graph.inputs, *graph.initializers.values(), *(v for node in graph.all_nodes() for v in node.outputs)]
    taken = {v.name for v in values}
    wanted = {v.name for v in (*graph.inputs, *graph.outputs)}
    for v in values:
        if v.name in wanted and id(v) not in io:
            k = 1
            while f"{v.name}_{k}" in taken:
                k += 1
            v.name = f"{v.name}_{k}"
            taken.add(v.name)


def _export_error(exc: Exception) -> UserError:
    """An operator without an ONNX translation -> E-OP-UNSUPPORTED naming it; anything else E-EXPORT-FAILED."""
    text = _plain(exc)
    missing = re.search(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>", text)
    if missing:
        node = re.search(r"Error when translating node %(\w+)", text)
        return UnsupportedOpError("onnx", f"{missing.group(1)}.{missing.group(2)}", node.group(1) if node else None)
    summary = text.split("## Exception summary", 1)[-1].strip()
    what = next((line for line in summary.splitlines() if line.strip() and not line.startswith("⬆")), type(exc).__name__)
    return UserError("E-EXPORT-FAILED", f"torch.onnx.export (dynamo) failed: {what[:500]}",
                     "check that torch.export.export(model, example_inputs) works; see the exporter's message")


def _plain(exc: BaseException) -> str:
    """The exception and its causes as text, without terminal colour codes."""
    parts = []
    while exc is not None:
        parts.append(str(exc))
        exc = exc.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))


@contextlib.contextmanager
def _quiet_constant_folding():
    """onnxscript's optimizer logs "Evaluation failed: ..." when it cannot fold a constant (it then
    keeps the node, harmlessly); hide those lines, not errors."""
    logger = logging.getLogger("onnxscript.optimizer._constant_folding")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


CONVERTER = OnnxConverter()
