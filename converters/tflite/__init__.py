"""TFLite target: litert-torch exports the module (through ``torch.export``) to one ``.tflite``
flatbuffer; the host runner is the ai-edge-litert interpreter with its default XNNPACK delegate.

Facts this module is built on (measured with litert-torch 0.10.0 / ai-edge-litert 2.3.0):
- The file has one signature, ``serving_default``, whose inputs are named ``args_<k>`` after the
  position k of the forward() argument and whose outputs are ``output_<k>``. TFLite does not
  promise that the interpreter's flat input list follows the argument order (signature inputs are
  keyed by name), so inputs are matched by signature name, never by position in
  ``get_input_details()``, and the mapping is stored in ``Artifact.meta``.
- int64 inputs (token ids, attention masks) become int32 in the file (``enable_x64=False``, what
  phones run); the runner casts, after checking the values fit.
- Images stay NCHW: the converter inserts a TRANSPOSE, so an app feeds the same layout as torch.
- Dynamic shapes (FP32 only): ``convert(..., dynamic_shapes=)`` hands torch.export's Dims through;
  the file's ``shape_signature`` holds -1 on each dynamic axis and the interpreter first allocates
  size 1 there (the image side too), so the runner resizes its inputs to each sample's shape
  (``resize_tensor_input(strict=True)``: only the -1 axes may change). Measured on small models,
  dynamic batch 1..4: conv, batch norm, relu/relu6/sigmoid/gelu/hardswish after a conv, add/mul,
  max/avg pooling, nearest upsampling, torch.cat of computed tensors, mean over the image, nn.Linear
  on 2-D input (max abs error <= 1.2e-7 at every size); a conv/relu/mean/linear CNN also with
  dynamic image sides (16..64, multiples of 16). What does not, in litert-torch 0.10.0:
  * ops it lowers through JAX meet a dynamic size they cannot take: a view/reshape to a size computed
    from one ("Shapes must be 1D sequences of concrete values": flatten, nn.Linear on 3-D input,
    nn.Embedding, attention) or such an op on a model input itself (relu(x), x * 2:
    "AssertionError: float32[-9223372036854775808,3,16,16]"):
    an unsupported op, named (_conversion_error);
  * nn.LayerNorm: the file holds a fixed-size RESHAPE the interpreter cannot prepare: E-EXPORT-FAILED;
  * torch.cat of a model input with a computed tensor: the file runs but drops the input's channels
    (output (1, 8) for (1, 11)): parity fails it on the output's shape.
- int16x8 (int16x8.py): 16x8 files have int16 I/O tensors (zero point 0) and run on the
  builtin 16x8 kernels, not XNNPACK: MobileNetV2 0.2-0.9 s per image, 1 thread, on a shared host (int8: 4.5 ms).
- The runner process must not import TensorFlow: with TF loaded, Flex ops would run on the host and
  hide a model that fails on a phone. ai-edge-litert does not import it; neither does this module.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError, missing_dependency

from ..base import FP32_TOLERANCE, INT8_END_TO_END_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

NAME = "tflite"
SIGNATURE = "serving_default"
# INT8 conversion fidelity vs the quantized reference (the convert_pt2e program): integer kernels and
# the float simulation drift apart by rounding (measured floor on MobileNetV2 with edgekit's recipe,
# bench/int8_mobilenet_v2.py; see edgekit/quant/fidelity.py for the per-layer check).

# Weight-only precisions vs edgekit's weight simulation (edgekit.quant.weight_only), measured on 48
# samples of each model's calibration data (MobileNetV2: calibration_data/images):
# fp16: weights dequantized to FP32 in the graph, FP32 kernels: max_abs_rel MobileNetV2 3.2e-5,
# tiny_transformer 5.7e-4, tiny_cnn 5e-7; cosine 1.0; top-1 1.0.
FP16_TOLERANCE = Tolerance(max_abs_rel=2e-3, min_cosine=0.9999, min_top1=0.9)
# dynamic: hybrid CONV_2D / FULLY_CONNECTED kernels also quantize every activation to int8 at run
# time (per tensor), which the weight simulation does not: MobileNetV2 max_abs_rel 0.091, min cosine
# 0.981, top-1 0.875 vs the simulation; tiny_transformer 0.027 / 0.9995 / 0.98; tiny_cnn 0.008.
DYNAMIC_TOLERANCE = Tolerance(max_abs_rel=0.2, min_cosine=0.95, min_top1=0.75)
# int16x8 vs its quantized reference (the 16x8 builtin kernels vs the convert_pt2e float simulation), in
# steps of the file's int16 output grid (1/65535 of the logit range, 1/257 of an int8 step). Measured:
# MobileNetV2, 256 held-out crops (bench/int16x8_mobilenet_v2.py): max 22 / mean 2.6 steps (percentile
# ranges), 30 / 3.8 (min/max ranges), max_abs_rel 6.7e-4, top-1 agreement 0.996; `edgekit export mobilenet_v2
# --quant int16x8` (16 crops) 15 steps; tiny_cnn 3; tests/quant/test_int16x8.py's block 2. The bound is ~2-3x
# the MobileNetV2 floor (64 int16 steps = a quarter of one int8 step; tests/quant/test_int16x8.py checks a
# file with one bias doubled is far outside it).
INT16X8_TOLERANCE = Tolerance(max_abs_rel=0.01, min_cosine=0.999, min_top1=0.85, max_steps=64.0)

# Messages the toolchain and the runtime use for an operator they cannot take.
_NO_LOWERING = re.compile(r"Lowering not found: (\S+)")
_FAILED_NODE = re.compile(r"While executing %(\S+) : .*?call_function\[target=([^\]]+)\]")
# The TFLite converter (MLIR) refusing an op it legalised, located at the model's own line:
# "timm/models/mobilevit.py:400:0: error: 'tfl.mul' op operands don't have broadcast-compatible shapes"
_MLIR_OP_ERROR = re.compile(r"([\w./\-]+\.py):(\d+):\d+: error: '([\w.]+)' op ([^\n]+)")
# litert-torch's JAX-bridged lowerings meeting a dynamic dimension: a shape argument computed from
# one ("Shapes must be 1D sequences of concrete values ...", aten.view) or an input tensor with one
# (the bridge passes -2**63 for the size: "AssertionError: float32[-9223372036854775808,3,16,16]")
_SYMBOLIC_SHAPE = re.compile(r"Shapes must be 1D sequences of concrete values|\[(?:\d+,)*-9223372036854775808[,\]]")
_RUNTIME_OP = (
    re.compile(r"unresolved custom op: ([\w.\-]+)"),
    re.compile(r"Didn't find op for builtin opcode '(\w+)'"),
    re.compile(r"\((Flex\w+)\) failed to prepare"),
)


def _interpreter_class():
    """ai-edge-litert's Interpreter; the retired tflite-runtime only if ai-edge-litert is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise missing_dependency(NAME, "ai_edge_litert", "tflite") from None
    return Interpreter


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line[:limit]


def _chain_text(exc: BaseException) -> str:
    """The messages of an exception and of its causes: the op name is often in an inner one."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _short_op(target: str) -> str:
    """'torch.ops.aten.cummax.default' -> 'aten.cummax.default' (the name torch users see)."""
    return target.strip().removeprefix("torch.ops.")


def _conversion_error(exc: Exception, model_name: str, dynamic_shapes: bool = False) -> UserError:
    """Map a litert-torch failure to UnsupportedOpError (naming the op) or E-EXPORT-FAILED."""
    text = _chain_text(exc)
    node = _FAILED_NODE.search(text)
    missing = _NO_LOWERING.search(text)
    if missing:
        return UnsupportedOpError(NAME, _short_op(missing.group(1)), node.group(1) if node else None)
    if node and dynamic_shapes and _SYMBOLIC_SHAPE.search(text):
        op = _short_op(node.group(2))
        return UnsupportedOpError(NAME, op, node.group(1),
                                  fix=f"litert-torch lowers {op} through JAX, which takes no dynamic dimension here (a "
                                      "reshape to a size computed from one: flatten, nn.Linear on 3-D input, "
                                      "nn.Embedding, attention; or the op applied to a model input directly); export "
                                      f"{NAME} at a fixed shape, or drop the target {NAME}")
    if node:  # the lowering of one known op failed (e.g. a data-dependent output shape)
        op = _short_op(node.group(2))
        return UnsupportedOpError(NAME, op, node.group(1),
                                  fix=f"litert-torch could not lower {op} ({_first_line(str(exc), 160)}); "
                                      f"rewrite it with static-shape ops or drop the target {NAME}")
    mlir = _MLIR_OP_ERROR.search(text)
    if mlir:
        file, line, op, why = mlir.groups()
        return UnsupportedOpError(NAME, op, None, source=f"{file}:{line}",
                                  fix=f"the TFLite converter refused {op} ({why.strip()[:160]}); rewrite that line "
                                      "(an explicit expand/expand_as feeding the op is a known cause: let broadcasting "
                                      f"do it) or drop the target {NAME}")
    return UserError("E-EXPORT-FAILED", f"litert-torch could not convert {model_name}: {_first_line(text)}",
                     "make torch.export.export(model, example_inputs) succeed on the model (e.g. no "
                     "data-dependent control flow); the toolchain's full error is chained to this one")


def _open(path: Path, threads: int):
    """Load a .tflite and allocate its tensors; a file the runtime rejects raises a coded error."""
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    interpreter_cls = _interpreter_class()
    try:
        interp = interpreter_cls(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        for pattern in _RUNTIME_OP:
            found = pattern.search(str(exc))
            if found:
                raise UnsupportedOpError(NAME, found.group(1), None,
                                         fix="the LiteRT builtin runtime lacks this op (a Flex/custom op or a "
                                             "newer op version); replace it in the model") from exc
        raise UserError("E-ARTIFACT-CORRUPT", f"the LiteRT interpreter cannot load {path.name}: "
                        f"{_first_line(str(exc))}", "re-export the bundle; the file is truncated or corrupt") from exc
    return interp


def _describe(details: dict) -> dict:
    return {"tensor": details["name"], "dtype": np.dtype(details["dtype"]).name,
            "shape": [int(s) for s in details["shape"]]}


def _io_meta(path: Path, spec) -> dict:
    """Read the exported file's signature and pair each spec input/output with its runtime tensor."""
    interp = _open(path, threads=1)
    signatures = interp.get_signature_list()
    if SIGNATURE not in signatures:
        raise UserError("E-EXPORT-FAILED", f"the exported file has signatures {sorted(signatures)}, not {SIGNATURE!r}",
                        "report this litert-torch version: edgekit expects its default signature")
    sig = interp.get_signature_runner(SIGNATURE)
    sig_in, sig_out = sig.get_input_details(), sig.get_output_details()
    # litert-torch names the flat forward() arguments args_0, args_1, ... in argument order, and the
    # spec lists inputs in that same order (the example inputs are built from it).
    in_names = [f"args_{k}" for k in range(len(spec.inputs))]
    out_names = [f"output_{k}" for k in range(len(spec.outputs))]
    if sorted(sig_in) != sorted(in_names) or sorted(sig_out) != sorted(out_names):
        raise UserError("E-EXPORT-FAILED",
                        f"the file's signature has inputs {sorted(sig_in)} and outputs {sorted(sig_out)}, the spec "
                        f"{spec.name} has {len(spec.inputs)} inputs and {len(spec.outputs)} outputs",
                        "make forward() take exactly the spec's inputs and return its outputs (a tensor or a tuple)")
    free = {(n, axis) for d in spec.dynamic for n, axis in d.axes}
    inputs = []
    for t, rt_name in zip(spec.inputs, in_names):
        d = _describe(sig_in[rt_name])
        if free:
            d.update(_dynamic_input(sig_in[rt_name], t, free))
        elif d["shape"] != list(t.shape):
            raise UserError("E-EXPORT-FAILED", f"input {t.name!r} is {d['shape']} in the file, {list(t.shape)} in the spec",
                            "give example inputs of the spec's shapes")
        inputs.append({"name": t.name, "runtime_name": rt_name, "spec_dtype": t.dtype, **d})
    outputs = []
    for t, rt_name in zip(spec.outputs, out_names):
        d = _describe(sig_out[rt_name])
        # dynamic: the outputs' sizes follow the inputs' (the file allocates size 1 on dynamic axes)
        if not free and int(np.prod(d["shape"])) != int(np.prod(t.shape)):
            raise UserError("E-EXPORT-FAILED", f"output {t.name!r} is {d['shape']} in the file, {list(t.shape)} in the spec",
                            "make the spec's output shapes match what the model returns")
        outputs.append({"name": t.name, "runtime_name": rt_name, "spec_shape": list(t.shape), **d})
    return {
        "signature": SIGNATURE,
        "inputs": inputs,  # spec order
        "outputs": outputs,  # spec order
        # The interpreter's own input order, recorded for apps that feed tensors by position.
        "runtime_input_order": [d["name"] for d in interp.get_input_details()],
        "int64_as_int32": True,
    }


def _dynamic_input(details: dict, t, free: set) -> dict:
    """An input of a file with dynamic shapes: -1 in its shape signature on exactly the spec's dynamic
    axes (the interpreter allocates size 1 there), the spec's size on every other axis."""
    sig = [int(s) for s in details.get("shape_signature", details["shape"])]
    want = [-1 if (t.name, axis) in free else int(s) for axis, s in enumerate(t.shape)]
    if sig != want:
        raise UserError("E-EXPORT-FAILED", f"input {t.name!r} has shape signature {sig} in the file, {want} expected "
                        "from the spec's dynamic axes (-1: dynamic)",
                        "litert-torch fixed an axis declared dynamic (or the reverse): export a fixed shape for target "
                        f"{NAME}, or report the model")
    return {"shape": [int(s) for s in t.shape], "shape_signature": sig}


@contextmanager
def _quiet_progress():
    """Silence litert-torch's progress lines during one conversion unless the user asked for them."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _convert(module, example_inputs: tuple, dst: Path, spec_name: str, quant_config=None, dynamic_shapes=None) -> list[str]:
    """litert-torch convert + export to ``dst``; its torch, JAX and MLIR errors become coded ones.
    ``dynamic_shapes``: torch.export's (edgekit.dynamic.torch_shapes), FP32 only. A module the
    converter refuses for an explicit expand feeding a broadcasting op is converted again with those
    expands dropped (broadcast.py). -> what was rewritten ("<what> x<count>")."""
    import torch

    from .broadcast import drop_broadcast_expands, without_broadcast_expands

    extra = {} if quant_config is None else {"quant_config": quant_config}
    if dynamic_shapes is not None:
        extra["dynamic_shapes"] = dynamic_shapes
    rewrites = []
    if isinstance(module, torch.fx.GraphModule):  # INT8: the convert_pt2e program, rewritten in place
        dropped = drop_broadcast_expands(module)
        rewrites += [f"expand before a broadcasting op dropped x{dropped}"] if dropped else []
    try:
        _litert_export(module, example_inputs, dst, extra)
        return rewrites
    except Exception as exc:  # litert-torch raises torch, JAX and MLIR errors alike
        simpler = None
        if "broadcast-compatible" in _chain_text(exc) and not isinstance(module, torch.fx.GraphModule):
            try:
                simpler = without_broadcast_expands(module, example_inputs, dynamic_shapes)
            except Exception:  # noqa: BLE001 - the converter's own error says more
                simpler = None
        if simpler is None:
            raise _conversion_error(exc, spec_name, dynamic_shapes is not None) from exc
    try:
        _litert_export(simpler, example_inputs, dst, extra)
    except Exception as exc:  # noqa: BLE001 - as above
        raise _conversion_error(exc, spec_name, dynamic_shapes is not None) from exc
    return ["expand before a broadcasting op dropped (torch.export, then converted again)"]


def _litert_export(module, example_inputs: tuple, dst: Path, extra: dict) -> None:
    import litert_torch

    with _quiet_progress():
        litert_torch.convert(module, tuple(example_inputs), **extra).export(str(dst))


class TFLiteConverter(Converter):
    info = TargetInfo(
        rank=10,
        levers=("equalize", "bias_correction", "adaround", "keep_float", "qat"),
        name=NAME,
        title="TensorFlow Lite (LiteRT)",
        suffix=".tflite",
        precisions=("fp32", "int8", "int16x8", "fp16", "dynamic"),
        tolerances={"fp32": FP32_TOLERANCE, "int8": INT8_END_TO_END_TOLERANCE, "int16x8": INT16X8_TOLERANCE,
                    "fp16": FP16_TOLERANCE, "dynamic": DYNAMIC_TOLERANCE},
        delegates=("xnnpack", "nnapi", "gpu"),
        extra="tflite",
        modules=("litert_torch",),
        runtime_modules=("ai_edge_litert|tflite_runtime",),
        arm=True,
        arm_wheels=("ai-edge-litert==2.3.0",),
        app_platforms=("android", "ios"),
        packages=("litert-torch", "ai-edge-litert", "torchao"),
        exporter="litert-torch convert (torch.export -> StableHLO -> TFLite flatbuffer); fp16: AI Edge Quantizer "
                 "fp16 weights; dynamic: PT2E dynamic int8 weights; int16x8: PT2E int16 activations, int8 weights, "
                 "int64 biases (16x8 kernels)",
        runtime="ai-edge-litert Interpreter, XNNPACK delegate, FP32 (int16x8: TFLite's builtin 16x8 kernels)",
        dynamic="fp32, CNN-style graphs: batch and image sides via litert-torch dynamic_shapes (-1 in the file's "
                "shape signature); the interpreter resizes its inputs per sample. litert-torch 0.10.0 converts no "
                "reshape/flatten of a dynamic size (nn.Linear on 3-D input, nn.Embedding, attention) nor nn.LayerNorm",
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        precision = "fp32"
        final = Path(out_dir) / f"{spec.name}-{precision}{self.info.suffix}"
        rewrites = _convert(model.eval(), example_inputs, final, spec.name,
                            dynamic_shapes=dynamic.torch_shapes(spec.dynamic, spec.input_names))
        try:
            meta = {**_io_meta(final, spec), **dynamic.meta(spec.dynamic), "traced_rewrites": rewrites}
        except UserError as exc:
            if not spec.dynamic or exc.code != "E-ARTIFACT-CORRUPT":
                raise
            why = _first_line(str(exc.__cause__ or exc.what))  # the runtime's words, not the scratch file's name
            raise UserError("E-EXPORT-FAILED", f"litert-torch converted {spec.name} with dynamic shapes, but the "
                            f"LiteRT interpreter cannot prepare the file: {why}",
                            "litert-torch can write a fixed-size op (e.g. the RESHAPE inside nn.LayerNorm) into a "
                            f"graph with a dynamic axis; export target {NAME} at a fixed shape") from exc
        return Artifact(NAME, precision, final.name, (final.name,), meta)

    def pt2e_quantizer(self, scheme: str = "int8"):
        """int8: litert-torch's quantizer plus the concat annotation it means to make (quantizer.py);
        int16x8: the 16x8 quantizer of int16x8.py."""
        try:
            if scheme == "int16x8":
                from .int16x8 import quantizer as quantizer_16x8

                return quantizer_16x8()
            from .quantizer import tflite_quantizer

            return tflite_quantizer()
        except ImportError:
            raise missing_dependency(NAME, "litert_torch", self.info.extra) from None

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        """Static INT8 (and int16x8): edgekit's recipe through PT2E (litert-torch's quantizer places the
        q/dq pairs, edgekit's calibrator sets the ranges), the .tflite plus the quantized reference program.
        int16x8: the quantizer of int16x8.py, then the 16x8 biases widened to int64 (int16x8.widen_biases)."""
        from edgekit.quant.pt2e import quantize
        from edgekit.quant.reference import quant_meta, reference_name, save_quantized_reference

        precision = recipe.scheme
        try:
            from litert_torch.quantize.quant_config import QuantConfig
        except ImportError:
            raise missing_dependency(NAME, "litert_torch", self.info.extra) from None
        quantizer = self.pt2e_quantizer(precision)
        q = quantize(model, tuple(example_inputs), calibration.samples, recipe, quantizer)
        final = out_dir / f"{spec.name}-{precision}{self.info.suffix}"
        ref = out_dir / reference_name(spec.name, "tflite", precision)
        rewrites = _convert(q.module, example_inputs, final, spec.name, QuantConfig(pt2e_quantizer=quantizer))
        from .float_outputs import keep_float_outputs

        kept = keep_float_outputs(final, final, q.output_scales)  # outputs the reference leaves float stay float
        widened = None
        if precision == "int16x8":  # the converter's int32 biases, which the 16x8 kernels refuse
            from .int16x8 import widen_biases

            widened = widen_biases(final, final)
        float_io = None
        if recipe.io == "float":  # litert-torch writes int8 I/O only: edgekit adds QUANTIZE/DEQUANTIZE at the edges
            from .float_io import add_float_io

            float_io = add_float_io(final, final)
        from .names import compact_tensor_names

        names = compact_tensor_names(final, final)  # litert-torch's class-path names: ~1.7 % of an INT8 file
        meta = _io_meta(final, spec)
        save_quantized_reference(q.module, tuple(example_inputs), ref)
        notes = q.notes + (["float model I/O: QUANTIZE/DEQUANTIZE added at the graph edges"] if float_io else []) \
            + ([f"outputs kept float (as in the reference): {', '.join(kept['outputs'])}"] if kept["outputs"] else []) \
            + ([f"16x8: {widened['ops_16x8']} conv/fully-connected ops with int16 activations, {widened['biases_widened']} "
                "int32 biases stored as int64 (what the 16x8 kernels take); they run on TFLite's builtin kernels (XNNPACK "
                "has no int16 kernels)"] if widened else []) \
            + [f"tensor names shortened: {names['bytes_before'] - names['bytes_after']} bytes saved"] + rewrites
        meta.update(quant_meta(recipe, calibration, ref.name, q.output_scales, q.kept_float, notes), float_io=float_io)
        return Artifact(NAME, precision, final.name, (final.name, ref.name), meta)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """fp16: the FP32 conversion, then AI Edge Quantizer's fp16 weight-only recipe (litert-torch's
        ``full_fp16_recipe``): weights stored as float16 behind DEQUANTIZE ops, computed in FP32.
        dynamic: PT2E with litert-torch's quantizer in dynamic mode (int8 per-channel weights; the
        file runs hybrid FULLY_CONNECTED/CONV_2D kernels that quantize activations at run time).
        The reference is edgekit's weight simulation (edgekit.quant.weight_only)."""
        import torch

        from edgekit.quant.weight_only import WITH_EMBEDDING, weight_only_meta, write_reference

        try:
            from litert_torch.generative.quantize import quant_recipes
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
        except ImportError:
            raise missing_dependency(NAME, "litert_torch", self.info.extra) from None
        example_inputs = tuple(example_inputs)
        if recipe.scheme == "fp16":
            module, config = model.eval(), quant_recipes.full_fp16_recipe()
        else:
            from edgekit.quant.pt2e import quantize_dynamic

            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
            module, config = quantize_dynamic(model, example_inputs, recipe, quantizer), QuantConfig(pt2e_quantizer=quantizer)
        final = out_dir / f"{spec.name}-{recipe.scheme}{self.info.suffix}"
        _convert(module, example_inputs, final, spec.name, config)
        meta = _io_meta(final, spec)
        # litert stores every large float constant (embedding tables too) in the scheme; in dynamic
        # mode an embedding table gets one int8 scale per tensor (measured on tiny_transformer)
        sim, ref = write_reference(model, recipe, example_inputs, out_dir, spec.name, NAME,
                                   types=WITH_EMBEDDING, per_tensor=(torch.nn.Embedding,))
        meta.update(weight_only_meta(recipe, spec.name, NAME, sim))
        return Artifact(NAME, recipe.scheme, final.name, (final.name, ref), meta)

    def coverage(self, path: Path, meta: dict):
        from .coverage import inspect_tflite

        return inspect_tflite(Path(path))

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """Each int8 tensor of the file against the reference op fed the runtime's own input (int8 only:
        the per-layer matcher reads int8 tensors; an int16x8 file is judged end to end)."""
        if artifact.precision != "int8" or not artifact.meta.get("reference"):
            return None
        from .per_layer import tflite_per_layer

        return tflite_per_layer(Path(root) / artifact.path, Path(root) / artifact.meta["reference"], samples)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        interp = _open(Path(root) / artifact.path, threads)
        meta = artifact.meta
        try:
            sig = interp.get_signature_runner(meta["signature"])
            sig_in, sig_out = sig.get_input_details(), sig.get_output_details()
            in_idx = [sig_in[t["runtime_name"]]["index"] for t in meta["inputs"]]
            out_idx = [sig_out[t["runtime_name"]]["index"] for t in meta["outputs"]]
        except (KeyError, ValueError) as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"{artifact.path} does not match its recorded inputs/outputs ({exc})",
                            "re-export the bundle; the file or manifest.json was changed") from exc
        del sig  # it holds a reference to the interpreter's wrapper, which makes resize_tensor_input refuse
        primary = {d["index"] for d in interp.get_input_details()}
        if not set(in_idx) <= primary:  # one signature = the primary subgraph, as litert-torch writes it
            raise UserError("E-ARTIFACT-CORRUPT", f"{artifact.path}: signature {meta['signature']} is not the main graph",
                            "re-export the bundle with edgekit")
        in_specs, out_specs = meta["inputs"], meta["outputs"]
        # int8 model I/O: the file's own (scale, zero point), read from the file, not from the manifest
        in_q = [_qparams(interp, i) for i in in_idx]
        out_q = [_qparams(interp, i) for i in out_idx]
        dynamic_meta = meta if meta.get("dynamic") else None
        # dynamic shapes: the shape each input is allocated at now (the file's: size 1 on dynamic axes)
        current = {d["index"]: tuple(int(s) for s in d["shape"]) for d in interp.get_input_details()}

        def run(inputs) -> list:
            if len(inputs) != len(in_specs):
                raise UserError("E-DATA-SHAPE", f"got {len(inputs)} inputs, the model takes {len(in_specs)}",
                                "pass one array per model input, in the spec's order")
            arrays = [_to_runtime(np.asarray(a), t, qp, dynamic_meta) for t, qp, a in zip(in_specs, in_q, inputs)]
            if dynamic_meta is not None:
                _resize(interp, current, in_idx, arrays)
            for idx, a in zip(in_idx, arrays):
                interp.set_tensor(idx, a)
            interp.invoke()
            outs = [_from_runtime(interp.get_tensor(idx), qp) for idx, qp in zip(out_idx, out_q)]
            if dynamic_meta is not None:  # the outputs' sizes follow the inputs'
                return outs
            return [o.reshape(t["spec_shape"]) for o, t in zip(outs, out_specs)]

        return run


def _resize(interp, current: dict, in_idx: list, arrays: list) -> None:
    """Resize the interpreter's inputs whose shape differs from the samples' (strict: only the file's
    dynamic axes may change) and reallocate; the sizes were checked against the manifest's ranges."""
    changed = [(idx, a.shape) for idx, a in zip(in_idx, arrays) if tuple(a.shape) != current[idx]]
    if not changed:
        return
    try:
        for idx, shape in changed:
            interp.resize_tensor_input(idx, list(shape), strict=True)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        current.update({idx: () for idx in in_idx})  # unknown state: the next sample resizes every input
        raise UserError("E-RUNTIME-FAILED", f"the LiteRT interpreter could not resize its inputs to "
                        f"{[list(s) for _, s in changed]}: {_first_line(str(exc))}",
                        "feed sizes inside the exported dynamic range; re-export the bundle if they are") from exc
    current.update({idx: tuple(shape) for idx, shape in changed})


def _qparams(interp, index: int):
    """(scale, zero_point, dtype) of a quantized I/O tensor of the file (int8/uint8, or int16 in a 16x8
    file), None for a float one or an unquantized integer one (int32 token ids)."""
    d = next(x for x in interp.get_tensor_details() if x["index"] == index)
    dtype = np.dtype(d["dtype"])
    if dtype.kind not in "iu" or dtype.itemsize not in (1, 2):
        return None
    if dtype.itemsize == 2 and not d["quantization"][0]:
        return None
    scale, zp = d["quantization"]
    return float(scale), int(zp), dtype


def _from_runtime(a: np.ndarray, qp) -> np.ndarray:
    if qp is None:
        return np.array(a, dtype=np.float32)
    scale, zp, _ = qp
    return ((np.asarray(a, dtype=np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)


def _to_runtime(a: np.ndarray, t: dict, qp=None, dynamic_meta: dict | None = None) -> np.ndarray:
    """Check one input against its spec and cast it to the file's dtype (int64 -> int32; float ->
    int8 with the file's own scale and zero point when the file takes int8). ``dynamic_meta``: the
    artifact meta of a file with dynamic shapes (a dynamic axis may take any size in its range)."""
    if dynamic_meta is not None:
        problem = dynamic.shape_problem(dynamic_meta, t["name"], t["shape"], a.shape)
        if problem:
            raise UserError("E-DATA-SHAPE", problem, "feed samples with the spec's shape, each dynamic axis in its range")
    elif list(a.shape) != t["shape"]:
        raise UserError("E-DATA-SHAPE", f"input {t['name']!r} has shape {tuple(a.shape)}, the model takes {tuple(t['shape'])}",
                        "feed samples with the batch dimension and the spec's shape")
    if qp is not None and a.dtype.kind == "f":
        scale, zp, dtype = qp
        info = np.iinfo(dtype)
        q = np.round(a.astype(np.float32) / np.float32(scale)) + zp  # half to even, as the reference's quantize
        low = -info.max if dtype == np.int16 else info.min  # int16x8 is symmetric: -32767..32767, as the reference
        return np.clip(q, low, info.max).astype(dtype)
    if a.dtype.name == t["dtype"]:
        return a
    if a.dtype.name == t["spec_dtype"] == "int64" and t["dtype"] == "int32":
        info = np.iinfo(np.int32)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise UserError("E-DATA-SHAPE", f"input {t['name']!r} holds values outside int32, which the .tflite takes",
                            "token ids and masks must fit in int32")
        return a.astype(np.int32)
    raise UserError("E-DATA-SHAPE", f"input {t['name']!r} has dtype {a.dtype}, the model takes {t['spec_dtype']}",
                    "feed the spec's dtypes")


CONVERTER = TFLiteConverter()
