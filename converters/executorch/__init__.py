"""ExecuTorch target: ``torch.export`` -> edge dialect -> XNNPACK delegate -> one ``.pte`` program;
the host runner is ExecuTorch's own C++ runtime through its python bindings (``executorch.runtime``).

ExecuTorch is PyTorch's on-device runtime and the successor of PyTorch Mobile (the ``.ptl`` target):
it is current and maintained, not deprecated.

Facts this module is built on (measured with executorch 1.5.1 on torch 2.13.0):
- The XNNPACK partitioner delegates the ops it supports, in as many subgraphs as the graph needs;
  everything else stays in the program and runs on ExecuTorch's portable kernels (on a
  transformer: LayerNorm, expand/squeeze copies, the mask cast). ``Artifact.meta["delegation"]``
  records how the graph was split, so a report can say what runs where without reloading anything.
- Inputs keep the torch dtypes (int64 token ids stay int64) and layout (NCHW). Example inputs get
  standard strides first: the emitter rejects a stride of 0, which numpy gives size-1 dims.
- An operator ExecuTorch cannot take shows up as ``Missing out variants: {...}`` (no out-variant
  kernel), ``Operator X is not in Core ATen opset`` or an edge-dialect dtype violation naming
  ``<EdgeOpOverload: X>``; all three become UnsupportedOpError naming X.
- The runtime aborts the whole process (pybind11 UnicodeDecodeError while logging) on a file whose
  identifier bytes are not text; the runner checks the header first so such a file is a coded error.
- fp16 size: ExecuTorch 1.5.1's XNNPACK convolution visitor serialises every conv weight and bias
  with ``force_fp32=True`` (XNNPACK then converts them to fp16 when it packs them,
  XNN_FLAG_FP32_STATIC_WEIGHTS), while linear weights stay fp16. An fp16 MobileNetV2 .pte was
  11.4 MB (conv weights 4 bytes each) instead of 7.0 MB. ``_fp16_conv_constants`` drops that flag
  for float16 conv constants while lowering (upstream already serialises fp16 linear weights as
  fp16: PR pytorch/executorch#9753, "Serialize weights as fp16 rather than fp32"):
  7.0 MB, the same outputs (SQNR vs FP32 40.31 dB both ways, 48 real images).
- fp16 accuracy: the fp16 program computes in fp16 (XNNPACK f16 kernels), activations included, so it
  sits ~3 dB below the weight-only fp16 of tflite/ncnn (fp16 storage, fp32 compute): 40.3 vs 43.6 dB
  on MobileNetV2. That is the precision's cost, not a conversion fault.
- Softmax after a convolution: ExecuTorch 1.5.1's XNNPACK layout pass (``ChannelsLastTaggedReshapePass``)
  keeps a conv's output channels-last through every op it does not list as layout-sensitive, and
  softmax is not listed, so ``conv -> softmax(dim=-1)`` ran over the channels: max error 0.56 on
  ``Conv2d(8, 8, 1)`` then ``.softmax(-1)`` over 1x8x49x49, cosine 0.71 on timm's EfficientFormerV2.
  ``_softmax_in_nchw`` lists softmax among the ops that need NCHW input while lowering, so the pass
  converts back first (exact, 3e-8). Only a 4-D channels-last input is affected: attention
  softmax after a matmul is not.
- INT8 fidelity and the reference's noise floor: XNNPACK lowers the reference's graph as it is (a
  float op between dequantize and quantize runs in float; conv, linear, add, mul, cat run as int8
  kernels with the reference's scales), yet EfficientFormerV2-S0 (0.103 > 0.095) and MobileViTv2-050
  (0.149 > 0.039) miss their bounds, as the .onnx of the same program does (cosine 0.973 on both
  runtimes for EfficientFormerV2, every onnx layer within 1 step): their
  rounding decisions cascade with depth, so no implementation reproduces them (even onnxruntime
  running every op in float misses: 0.123, 0.056; lowering with some partitioner configs dropped
  changes nothing: without ``MulConfig`` the output is identical). `edgekit verify` then judges them
  against the reference's own rounding noise (``edgekit.quant.noise``).
- Threads: the XNNPACK delegate runs on ExecuTorch's process-wide threadpool (default: one thread
  per performant core). The python bindings expose ``_unsafe_reset_threadpool(n)`` (experimental,
  "unsafe" only while a method executes); the runner calls it before loading. It applies to every
  ExecuTorch program in the process; the portable kernels are single-threaded either way.
"""
from __future__ import annotations

import operator
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError, missing_dependency

from ..base import FP32_TOLERANCE, INT8_END_TO_END_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

NAME = "executorch"
EXTRA = "executorch"  # the pip extra in pyproject.toml
METHOD = "forward"
# INT8 conversion fidelity vs the quantized reference (convert_pt2e program); XNNPACK's integer
# kernels drift from the float simulation by rounding (floor measured by bench/int8_mobilenet_v2.py).

# Weight-only precisions vs edgekit's weight simulation (edgekit.quant.weight_only), 48 samples:
# fp16: the whole program runs in half precision (XNNPACK fp16 kernels), so activations round too:
# MobileNetV2 (calibration_data/images) max_abs_rel 0.020, min cosine 0.9984, top-1 0.98, SQNR 38 dB;
# tiny_cnn 0.0025 / 0.999998 / 0.98 (near-tied logits).
FP16_TOLERANCE = Tolerance(max_abs_rel=0.05, min_cosine=0.995, min_top1=0.9)
# dynamic: XNNPACK's dynamically quantized linear/conv quantize activations per row at run time:
# MobileNetV2 max_abs_rel 0.016, min cosine 0.9995, top-1 0.98 (35 dB); tiny_cnn 0.006 / 0.99998;
# tiny_transformer 0.010 / 0.9999, top-1 1.0. Bounds as tflite's hybrid kernels (same mechanism).
DYNAMIC_TOLERANCE = Tolerance(max_abs_rel=0.2, min_cosine=0.95, min_top1=0.75)

# How lowering and emission name an operator they cannot take.
_MISSING_OUT = re.compile(r"Missing out variants: \{([^}]*)\}")
_NOT_CORE = re.compile(r"Operator (?:torch\._ops\.)?([\w:.]+) is not in Core ATen opset")
_EDGE_OP = re.compile(r"Operator: <EdgeOpOverload: ([\w:.]+)>")


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line[:limit]


def _op_name(target) -> str:
    """'aten.linear.default' for torch and edge ops, the function name for anything else."""
    from torch._ops import OpOverload

    if isinstance(target, OpOverload):  # its __name__ lacks the namespace ('linear.default')
        return str(target)
    return getattr(target, "__name__", str(target))  # EdgeOpOverload.__name__ is 'aten.linear.default'


def _find_node(graph, op: str) -> str | None:
    """The name of the first node calling ``op`` ('aten::foo', 'aten.foo.default', ...), if any."""
    want = op.replace("::", ".")
    for node in graph.nodes:
        if node.op == "call_function":
            name = _op_name(node.target)
            if name == want or name.startswith(want + "."):
                return node.name
    return None


def _lowering_error(exc: Exception, ep, model_name: str) -> UserError:
    """Map an ExecuTorch lowering/emission failure to UnsupportedOpError or E-EXPORT-FAILED."""
    text = str(exc)
    missing = _MISSING_OUT.search(text)
    if missing:
        ops = sorted(s.strip().strip("'\"") for s in missing.group(1).split(",") if s.strip())
        return UnsupportedOpError(NAME, ", ".join(ops), _find_node(ep.graph, ops[0]) if ops else None,
                                  fix="ExecuTorch has no kernel (out variant) for it; replace it in the model, "
                                      f"or drop the target {NAME}")
    for pattern in (_NOT_CORE, _EDGE_OP):
        found = pattern.search(text)
        if found:
            op = found.group(1).replace("::", ".")
            return UnsupportedOpError(NAME, op, _find_node(ep.graph, op),
                                      fix=f"ExecuTorch's edge dialect rejects it ({_first_line(text, 160)}); "
                                          f"replace it with core ATen ops of matching dtypes, or drop the target {NAME}")
    return UserError("E-EXPORT-FAILED", f"ExecuTorch could not lower {model_name}: {type(exc).__name__}: {_first_line(text)}",
                     "the full message is in the log; check the model with torch.export and executorch.exir")


def _delegation(edge_program) -> dict:
    """Count what the partitioner delegated and which ops stayed on portable kernels.

    Walks the lowered edge graph once: each ``executorch_call_delegate`` node is one delegated
    subgraph (its ops are in the lowered module's original graph); every other op node (getitem
    excluded: it only unpacks tuples) runs on ExecuTorch's portable kernels.
    """
    gm = edge_program.graph_module
    backends, delegated, portable = Counter(), Counter(), Counter()
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        if _op_name(node.target) == "executorch_call_delegate":
            subgraphs += 1
            lowered = getattr(gm, node.args[0].target)
            backends[lowered.backend_id] += 1
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and inner.target is not operator.getitem:
                    delegated[_op_name(inner.target)] += 1
        else:
            portable[_op_name(node.target)] += 1
    return {
        "backends": dict(backends),  # e.g. {"XnnpackBackend": 3}
        "subgraphs": subgraphs,
        "delegated_nodes": sum(delegated.values()),
        "portable_nodes": sum(portable.values()),
        "delegated_ops": dict(sorted(delegated.items())),
        "portable_ops": dict(sorted(portable.items())),
    }


def _missing_kernels(et_program) -> list[tuple[str, str]]:
    """Ops of the final program that the installed runtime has no kernel for: (op, node) pairs.

    Checked at export so the user learns the op's name now, not as a load failure in the runner.
    """
    from torch._ops import OpOverload

    registered = _runtime()[0].get().operator_registry.operator_names
    out = []
    for node in et_program.exported_program().graph_module.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, OpOverload) and node.target.name() not in registered:
            out.append((node.target.name(), node.name))
    return out


def _io_meta(ep, spec, example_inputs) -> dict:
    """Inputs (spec order, with the dtype the program takes) and outputs as the runner needs them."""
    outs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    out_shapes = [list(n.meta["val"].shape) for n in outs]
    if len(out_shapes) != len(spec.outputs):
        raise UserError("E-EXPORT-FAILED", f"the model returns {len(out_shapes)} tensors, the spec {spec.name} "
                        f"names {len(spec.outputs)} outputs", "make forward() return the spec's outputs (a tensor or a tuple)")
    for t, shape in zip(spec.outputs, out_shapes):
        if not spec.dynamic and int(np.prod(shape)) != int(np.prod(t.shape)):  # dynamic: symbolic sizes
            raise UserError("E-EXPORT-FAILED", f"output {t.name!r} is {shape} in the program, {list(t.shape)} in the spec",
                            "make the spec's output shapes match what the model returns")
    return {
        "method": METHOD,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": str(x.dtype).removeprefix("torch.")}
                   for t, x in zip(spec.inputs, example_inputs)],
        "outputs": [{"name": t.name, "shape": list(t.shape)} for t in spec.outputs],
        **dynamic.meta(spec.dynamic),
    }


def _runtime():
    """(Runtime, portable_lib) of ExecuTorch's python bindings, without their 'experimental' warning."""
    try:
        with warnings.catch_warnings(), _without_exir_init():
            warnings.filterwarnings("ignore", message="This API is experimental")
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime
    except ImportError:
        raise missing_dependency(NAME, "executorch", EXTRA) from None
    return Runtime, portable_lib


@contextmanager
def _without_exir_init():
    """Let the bindings import ``executorch.exir._warnings`` (a deprecation decorator, their only use
    of exir) without running ``executorch/exir/__init__.py``, which imports the whole exporter: torch's
    dynamo and fx, hence sympy, filelock, ruamel.yaml, tabulate, ... The emulated aarch64 user space
    has the runtime only (torch and executorch without their declared dependencies), and a runner
    needs no exporter. A placeholder package with exir's path stands in while the bindings import and
    is removed afterwards, so a later ``import executorch.exir`` (per-layer lowering) gets the real one.
    Nothing changes when exir is already imported (export, or a process that imported it first)."""
    import importlib.util
    import sys
    import types

    spec = None if "executorch.exir" in sys.modules else importlib.util.find_spec("executorch.exir")
    if spec is None or not spec.submodule_search_locations:
        yield
        return
    placeholder = types.ModuleType("executorch.exir")
    placeholder.__path__ = list(spec.submodule_search_locations)
    sys.modules["executorch.exir"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("executorch.exir") is placeholder:
            del sys.modules["executorch.exir"]


def _check_header(path: Path) -> None:
    """Reject a missing file, or one that is not a .pte, before the runtime sees it (see module doc)."""
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    with open(path, "rb") as f:
        head = f.read(8)
    # A .pte is a flatbuffer whose file identifier (bytes 4-8) is 'ET' + two digits ('ET12').
    if len(head) < 8 or head[4:6] != b"ET" or not head[6:8].isdigit():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} is not an ExecuTorch program (bad header)",
                        "re-export the bundle; the file is truncated or corrupt")


@contextmanager
def _fp16_conv_constants(enabled: bool):
    """While lowering an fp16 program, let XNNPACK's conv visitor serialise float16 weights and biases
    as float16 instead of forcing them to float32 (see the module doc). Restored on exit; a no-op when
    the installed ExecuTorch has no such visitor (the file is then larger, never wrong)."""
    visitor = None
    if enabled:
        import executorch.backends.xnnpack.operators  # noqa: F401  (registers the visitors)
        from executorch.backends.xnnpack.operators.node_visitor import _node_visitor_dict

        visitor = _node_visitor_dict.get("aten.convolution.default")
    if visitor is None:
        yield
        return
    original = visitor.define_tensor

    def define_tensor(self, tensor, *args, **kwargs):
        val = tensor.meta.get("val") if hasattr(tensor, "meta") else None
        if kwargs.get("force_fp32") and getattr(val, "dtype", None) == torch.float16:
            kwargs["force_fp32"] = False
        return original(self, tensor, *args, **kwargs)

    visitor.define_tensor = define_tensor
    try:
        yield
    finally:
        visitor.define_tensor = original


@contextmanager
def _softmax_in_nchw():
    """While lowering, make XNNPACK's layout pass give softmax NCHW input (see the module doc).
    Restored on exit; a no-op when the installed ExecuTorch has no such pass or set."""
    try:
        from executorch.backends.xnnpack._passes.channels_last_tagged_reshape_pass import (
            ChannelsLastTaggedReshapePass as layout_pass)
        from executorch.exir.dialects._ops import ops as exir_ops
    except ImportError:
        yield
        return
    original = getattr(layout_pass, "memory_sensitive_ops_nchw", None)
    if not isinstance(original, set):
        yield
        return
    layout_pass.memory_sensitive_ops_nchw = original | {exir_ops.edge.aten._softmax.default}
    try:
        yield
    finally:
        layout_pass.memory_sensitive_ops_nchw = original


class _Half(torch.nn.Module):
    """fp16 program with the spec's float32 I/O: inputs cast to half, outputs back to float."""

    def __init__(self, model):
        super().__init__()
        self.model = model.half()

    def forward(self, *inputs):
        out = self.model(*[x.half() if x.is_floating_point() else x for x in inputs])
        if isinstance(out, (tuple, list)):
            return tuple(o.float() for o in out)
        return out.float()


def lowered(ep, precision: str):
    """The edge program of ``ep`` partitioned for XNNPACK, with edgekit's lowering settings: what every
    .pte is made of (the per-layer view lowers its pieces, and re-lowers the reference, the same way)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    with _fp16_conv_constants(precision == "fp16"), _softmax_in_nchw():
        return to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])


def _weight_only(model, spec, recipe, out_dir: Path, example_inputs: tuple):
    """(exported program, artifact meta) of an fp16 or dynamic program; writes the reference.

    fp16: the whole model in half precision (XNNPACK's fp16 kernels; ExecuTorch's portable kernels
    for the rest), float32 I/O. dynamic: PT2E with the XNNPACK quantizer in dynamic mode (int8
    per-channel weights, activations quantized per row at run time); the reference quantizes exactly
    the layers the quantizer covered (it skips e.g. conv+ReLU and depthwise convs)."""
    import copy

    import torch

    from edgekit.quant.weight_only import WITH_EMBEDDING, quantized_weight_layers, weight_only_meta, write_reference

    if recipe.scheme == "fp16":
        prog_model, select = _Half(copy.deepcopy(model).eval()), {"types": WITH_EMBEDDING}
    else:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)

        from edgekit.quant.pt2e import quantize_dynamic

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        prog_model = quantize_dynamic(model, example_inputs, recipe, quantizer, fold_quantize=True)
        select = {"only": quantized_weight_layers(prog_model)}
    try:
        ep = torch.export.export(prog_model, example_inputs)
    except Exception as exc:  # torch.export raises many error types
        raise UserError("E-EXPORT-FAILED", f"torch.export could not capture the {recipe.scheme} {spec.name}: {_first_line(exc)}",
                        f"export executorch in fp32 or int8 for this model") from exc
    sim, ref = write_reference(model, recipe, example_inputs, out_dir, spec.name, NAME, **select)
    return ep, weight_only_meta(recipe, spec.name, NAME, sim)


def _standard_strides(example_inputs: tuple) -> tuple:
    """Standard strides: numpy (hence torch.from_numpy) may give a size-1 dim stride 0, which torch
    ignores but ExecuTorch's emitter rejects ("0 in strides is not supported")."""
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in example_inputs)


def _capture(model, spec, example_inputs: tuple):
    """torch.export of the float model (with the spec's dynamic shapes)."""
    try:
        return torch.export.export(model.eval(), example_inputs,
                                   dynamic_shapes=dynamic.torch_shapes(spec.dynamic, spec.input_names))
    except Exception as exc:  # torch.export raises many error types (Unsupported, UserError, ...)
        raise UserError("E-EXPORT-FAILED", f"torch.export could not capture {spec.name}: {_first_line(exc)}",
                        "make torch.export.export(model, example_inputs) work (no data-dependent control flow)") from exc


class ExecuTorchConverter(Converter):
    info = TargetInfo(
        rank=50,
        levers=("equalize", "bias_correction", "adaround", "keep_float", "qat"),
        name=NAME,
        title="ExecuTorch (successor of PyTorch Mobile)",
        suffix=".pte",
        precisions=("fp32", "int8", "fp16", "dynamic"),
        tolerances={"fp32": FP32_TOLERANCE, "int8": INT8_END_TO_END_TOLERANCE, "fp16": FP16_TOLERANCE,
                    "dynamic": DYNAMIC_TOLERANCE},
        delegates=("xnnpack",),
        extra=EXTRA,
        modules=(),
        runtime_modules=("executorch",),
        packages=("executorch", "torchao"),
        exporter="torch.export -> executorch.exir.to_edge_transform_and_lower (XnnpackPartitioner) -> to_executorch",
        runtime="executorch.runtime (C++ runtime via python bindings), XNNPACK delegate + portable kernels, FP32",
        dynamic="bounded: torch.export Dims with min/max in the .pte; XNNPACK plans memory for the upper bounds",
        # ARM: executorch's aarch64 wheels link libtorch (_portable_lib's RUNPATH $ORIGIN/../../../torch/lib),
        # and PyPI's aarch64 torch 2.11 and later are CUDA builds, while 2.10.0 dies with SIGILL on ARMv8.0
        # (see ptl). So the guest runs executorch 1.0.1 (torch>=2.9,<2.10; 1.1 and later need torch>=2.10;
        # the host runs 1.5.1) on torch 2.9.1, the CPU build ptl uses too. It loads the host's .pte files,
        # fp32 and int8; int8 dies with SIGILL on ARMv8.0 cores (cortex-a53, a72): its XNNPACK runs a
        # dot-product GEMM (xnn_qs8_qc8w_gemm_..._neondot, sdot) on a CPU without asimddp, which verify
        # --arm reports as an error row (tests/test_arm.py).
        arm=True,
        arm_exact_wheels=("torch==2.9.1", "executorch==1.0.1"),
        arm_wheels=("typing_extensions==4.12.2",),  # torch imports it (and numpy, every runner's)
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        example_inputs = _standard_strides(example_inputs)
        return self._lower(_capture(model, spec, example_inputs), spec, "fp32", out_dir, example_inputs, {})

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        """PT2E with the XNNPACK quantizer and edgekit's ranges, then re-exported and lowered."""
        example_inputs = _standard_strides(example_inputs)
        _capture(model, spec, example_inputs)  # the float model first: a capture error names the user's model
        ep, quant_meta = self._quantize(model, spec, recipe, out_dir, example_inputs, calibration)
        return self._lower(ep, spec, recipe.scheme, out_dir, example_inputs, quant_meta)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        example_inputs = _standard_strides(example_inputs)
        _capture(model, spec, example_inputs)
        ep, quant_meta = _weight_only(model, spec, recipe, out_dir, example_inputs)
        return self._lower(ep, spec, recipe.scheme, out_dir, example_inputs, quant_meta)

    def _lower(self, ep, spec, precision: str, out_dir: Path, example_inputs: tuple, quant_meta: dict) -> Artifact:
        """XNNPACK partitioning and the ExecuTorch program, written as the .pte (its reference, when
        quantized, is already in out_dir and named in quant_meta)."""
        try:
            import executorch.exir  # noqa: F401
        except ImportError:
            raise missing_dependency(NAME, "executorch", self.info.extra) from None
        try:
            edge = lowered(ep, precision)
            delegation = _delegation(edge.exported_program())
            program = edge.to_executorch()
        except Exception as exc:  # exir raises RuntimeError, SpecViolationError, ...: classified below
            raise _lowering_error(exc, ep, spec.name) from exc
        missing = _missing_kernels(program)
        if missing:
            op, node = missing[0]
            raise UnsupportedOpError(NAME, op, node, fix="the installed ExecuTorch runtime has no kernel for it; "
                                     f"replace it in the model, or drop the target {NAME}")
        meta = {**_io_meta(ep, spec, example_inputs), "delegation": delegation, **quant_meta}
        final = out_dir / f"{spec.name}-{precision}{self.info.suffix}"
        final.write_bytes(program.buffer)
        extra_files = (quant_meta["reference"],) if quant_meta else ()
        return Artifact(NAME, precision, final.name, (final.name, *extra_files), meta)

    def pt2e_quantizer(self, scheme: str = "int8"):
        if scheme != "int8":
            return None
        try:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer, get_symmetric_quantization_config)
        except ImportError:
            raise missing_dependency(NAME, "executorch", self.info.extra) from None
        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        quantizer.float_add_chains = True  # an add read by another add stays float (edgekit.quant.add_chains)
        return quantizer

    def _quantize(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration):
        """(exported quantized program, artifact meta); writes the quantized reference program."""
        import torch

        from edgekit.quant.pt2e import quantize
        from edgekit.quant.reference import quant_meta, reference_name, save_quantized_reference

        q = quantize(model, example_inputs, calibration.samples, recipe, self.pt2e_quantizer(), fold_quantize=True)
        ref = out_dir / reference_name(spec.name, "executorch")
        save_quantized_reference(q.module, example_inputs, ref)
        try:
            ep = torch.export.export(q.module, example_inputs)
        except Exception as exc:  # torch.export raises many error types
            raise UserError("E-EXPORT-FAILED", f"torch.export could not capture the quantized {spec.name}: {_first_line(exc)}",
                            "report this: the convert_pt2e program of the model should export") from exc
        return ep, quant_meta(recipe, calibration, ref.name, q.output_scales, q.kept_float, q.notes)

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """INT8: each layer lowered as the file was and replayed on the reference's own input
        (``per_layer.executorch_per_layer``); None for other precisions."""
        if artifact.precision != "int8" or "reference" not in artifact.meta:
            return None
        from .per_layer import executorch_per_layer

        return executorch_per_layer(artifact, root, samples)

    def coverage(self, path: Path, meta: dict):
        from edgekit.inspect.report import InspectResult

        from .coverage import analyse

        details = analyse(meta)
        return InspectResult(str(path), NAME, details=details, warnings=list(details["warnings"]))

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        if threads < 1:
            raise UserError("E-ARGS", f"threads must be at least 1, got {threads}", "pass --threads 1 or more")
        path = Path(root) / artifact.path
        _check_header(path)
        import torch

        Runtime, portable_lib = _runtime()
        portable_lib._unsafe_reset_threadpool(threads)
        try:
            program = Runtime.get().load_program(path)
        except (RuntimeError, ValueError) as exc:  # the bindings raise RuntimeError('Failed to load ...')
            raise UserError("E-ARTIFACT-CORRUPT", f"the ExecuTorch runtime cannot load {path.name}: {_first_line(exc)}",
                            "re-export the bundle; the file is truncated or corrupt (the runtime's reason is in the log)") from exc
        try:  # the program parsed: a failure now is a delegate or kernel refusing it (XNNPACK's init)
            method = program.load_method(artifact.meta.get("method", METHOD))
        except (RuntimeError, ValueError) as exc:
            raise UserError("E-RUNTIME-FAILED", f"the ExecuTorch runtime read {path.name} but could not prepare its "
                            f"method (a delegate or kernel refused it): {_first_line(exc)}",
                            "the runtime's reason is in the log (e.g. an XNNCompiler message); report it with the "
                            "model, or drop the target executorch") from exc
        in_specs, out_specs = artifact.meta["inputs"], artifact.meta["outputs"]
        dtypes = [getattr(torch, t["dtype"]) for t in in_specs]

        def run(inputs) -> list:
            if len(inputs) != len(in_specs):
                raise UserError("E-DATA-SHAPE", f"got {len(inputs)} inputs, the model takes {len(in_specs)}",
                                "pass one array per model input, in the spec's order")
            tensors = []
            for t, dtype, a in zip(in_specs, dtypes, inputs):
                a = np.asarray(a)
                problem = dynamic.shape_problem(artifact.meta, t["name"], t["shape"], a.shape)
                if problem:
                    raise UserError("E-DATA-SHAPE", problem, "feed samples with the batch dimension and the spec's shape")
                kinds = {a.dtype.kind, np.dtype(t["dtype"]).kind}  # cast within floats or within integers only
                if len(kinds) > 1 and kinds != {"i", "u"}:
                    raise UserError("E-DATA-SHAPE", f"input {t['name']!r} has dtype {a.dtype}, the model takes {t['dtype']}",
                                    "feed the spec's dtypes")
                tensors.append(torch.from_numpy(np.ascontiguousarray(a)).to(dtype))  # e.g. float64 -> float32
            outs = method.execute(tensors)
            if artifact.meta.get("dynamic"):  # the outputs' sizes follow the inputs'
                return [np.array(o.numpy(), dtype=np.float32) for o in outs]
            return [np.array(o.numpy(), dtype=np.float32).reshape(t["shape"]) for o, t in zip(outs, out_specs)]

        return run


CONVERTER = ExecuTorchConverter()
