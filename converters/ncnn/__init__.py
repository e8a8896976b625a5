"""ncnn target: torch.jit.trace -> pnnx (fp16 off) -> ncnn .param/.bin, run in the ncnn python bindings.

The export has three steps, each fixing one gap between what PyTorch records and what ncnn runs:

1. Trace. For ``nn.TransformerEncoderLayer`` the MHA fast path is switched off while tracing (else a
   fused ``_transformer_encoder_layer_fwd`` lands in the file). Advanced indexing with indices that
   are constants of the traced shapes and that select every element in order (how transformers
   builds its padding mask: ``mask[batch_idx, kv_idx]``) is replaced by ``aten::reshape``: ncnn has
   no gather, and pnnx would print the index unusably. Ops pnnx converts wrongly without an error
   (F.normalize off the channel dim, uneven chunks, BatchNorm1d on (N, C) rows, pads of outer dims
   by zero) are rewritten into equal ones it converts exactly (pnnx_fixes.py).
2. pnnx, run as a subprocess in a scratch folder (its exit code and log are ours to read).
3. Legalise the ncnn graph. pnnx leaves ops it cannot map to ncnn under their torch names. Some
   have an exact ncnn form, given that every ncnn blob holds float32 values: casts of integer/bool
   data, boolean and/or, ``torch.where`` on a boolean condition, and ``unbind(0)`` of a 5-D
   (batch-in-the-middle) tensor. Those are rewritten, as is a bool mask of ``SDPA`` (ncnn adds its
   mask to the scores: a masked key gets SDPA_MASKED, not 0).
4. If ncnn still cannot take a layer, and the trace has layout chains ncnn cannot express (tensors
   of more than 4 dims: MobileViT's patch unfolding, a 5-D qkv permute + unbind; strided slices:
   LeViT's ``x[:, ::2, ::2]``), the model is traced again with those chains rewritten as exact
   chains of at most 4-D reshapes, narrows and permutes (layout.py), and steps 2-3
   run again. Any layer type ncnn does not register after that is reported as E-OP-UNSUPPORTED
   with the op and the layer name, never shipped.

ncnn drops the batch dimension: the runner feeds each input without its leading 1 and adds it back
to the outputs. Token ids that feed an ``Embed`` layer are read by ncnn as int32 bit patterns, so
they go in as int32 data; every other input goes in as float32 values (a 0/1 mask included).

Dynamic shapes (edgekit.dynamic), FP32 only: the non-batch axes of a --dynamic range (image height
and width, sequence length) stay as traced (``aten::size``), and pnnx gets a second shape set
(``inputshape2``: each dynamic axis at another size of its range), so the Reshape/Crop/Gemm params it
writes are expressions of the input's sizes (``6="*(0h,0w),8"``, ``20="1w"``, Gemm ``7=0``), not the
traced numbers; ncnn then takes any size. The output axes that follow the input sizes are found by
running the model in torch at three sizes, and the runner reads their sizes off the Mats ncnn
returns. Refused with E-DYNAMIC-UNSUPPORTED: a dynamic batch (an ncnn Mat has no batch axis: an app
runs one sample per call), and a model that needs layout.py's chains (written at the traced size).
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError

from ..base import FP32_TOLERANCE, Artifact, Converter, TargetInfo, Tolerance
from .dynamic_shapes import (DynamicUnsupported, check_dynamic, example_sizes, output_free_axes,
                             output_shape, resized, second_size)
from .layout import rewrite_module
from .legalise import Legaliser, check_supported, parse_pnnx_ir
from .param import Layer, format_layers, load_net, parse_layers
from .pnnx_fixes import apply as fix_for_pnnx

PNNX_TIMEOUT_S = 1800
# INT8 conversion fidelity vs the quantized reference (float simulation of ncnn's int8 scheme with the
# artifact's scales). tiny_cnn: exact. MobileNetV2, 16 held-out photos (bench/int8_ncnn_mobilenet_v2.py):
# max_abs_rel 0.067-0.131, min cosine 0.954-0.990, top-1 0.75-0.875 over the four calibrators: ncnn's
# x86 depthwise int8 kernel differs from the simulation by ~1e-4 relative (local SQNR ~80 dB: its
# dequantize approximates 1/(s * s_w) with _mm_rcp_ps, ARM computes it exactly; int8._FakeQuant), which
# flips int8 roundings downstream. The per-layer check (per_layer.compare_blobs) is the tight one.
# End to end the bound is every INT8 target's (base.INT8_END_TO_END_TOLERANCE: 32 output steps), in
# one int8 step of each output's calibrated range (int8.output_steps: ncnn's outputs are float).
# Measured on random-init timm CNNs (bench/model_coverage.py), where 1-step roundings amplify most:
# mobilenetv2_100 ncnn 14.8 dB vs its reference with every int8 layer exact on its own input (local
# SQNR ~147 dB), tflite 15.2 dB and executorch/onnx 15.0 dB on the same model, passing within their steps.
INT8_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.95, min_top1=0.75, max_steps=32.0)
# fp16 weights (pnnx fp16=1) run in FP32 by the strict runner, vs the fp16-weight simulation (48
# samples): MobileNetV2 max_abs_rel 1.8e-4, tiny_cnn 3.8e-6, tiny_transformer 3.7e-4 (pnnx keeps some constants FP32 that
# the simulation rounds); cosine 1.0, top-1 1.0.
FP16_TOLERANCE = Tolerance(max_abs_rel=1e-3, min_cosine=0.9999, min_top1=0.9)
# torch dtype name -> pnnx input type (this module imports torch only inside the export path, so
# the runner also works where torch is absent: the aarch64 emulated runtime).
_PNNX_TYPES = {"float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64",
               "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8"}
# Layer types ncnn reads its input as int32 (indices); every other consumer reads float32.
_INT_CONSUMERS = {"Embed"}
_PASS_THROUGH = {"Split", "Noop"}
# Layers whose inputs after the first are read for their shape only (crop/reshape/resize to that size)
_SHAPE_REFERENCE = {"Crop", "Reshape", "Interp"}


# --------------------------------------------------------------------------------------------
# Step 1: trace, and turn constant identity indexing into reshape.
# --------------------------------------------------------------------------------------------

_SHAPE_LEAVES = {"prim::Constant", "prim::GetAttr", "aten::size", "prim::device", "prim::dtype", "aten::dim"}


def _depends_on_input_values(value, graph_inputs) -> bool:
    """True if ``value`` reads a graph input's values (its shape, device and dtype do not count:
    they are fixed by the trace), or comes out of control flow."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v in graph_inputs:
            return True
        node = v.node()
        if node in seen or node.kind() in _SHAPE_LEAVES:
            continue
        seen.add(node)
        if list(node.blocks()):
            return True
        stack.extend(node.inputs())
    return False


def _rewrite_identity_index(traced, example_inputs) -> int:
    """Replace ``aten::index`` nodes whose indices only depend on shapes and that pick every element
    of their input in order by ``aten::reshape``; returns how many were replaced."""
    import torch

    if not list(traced.inlined_graph.findAllNodes("aten::index")):
        return 0
    graph = traced.graph
    torch._C._jit_pass_inline(graph)  # the index sits in a submodule; work on one flat graph
    inputs = set(graph.inputs())
    candidates = []
    for k, node in enumerate(graph.findAllNodes("aten::index")):
        lst = list(node.inputs())[1].node()
        if lst.kind() != "prim::ListConstruct":
            continue
        idx = list(lst.inputs())
        if not any(_depends_on_input_values(v, inputs) for v in idx):
            candidates.append((k, node))
    if not candidates:
        return 0
    # Evaluate each index's source (for its shape) and indices in a copy of the graph that returns them.
    probe = graph.copy()
    probe_nodes = list(probe.findAllNodes("aten::index"))
    wanted = []
    for k, _ in candidates:
        src, lst = probe_nodes[k].inputs()
        wanted.append([src, *lst.node().inputs()])
    flat = [v for group in wanted for v in group if v.type().kind() == "TensorType"]
    pack = probe.create("prim::ListConstruct", flat)
    pack.output().setType(torch._C.ListType.ofTensors())
    probe.insertNode(pack)
    probe.eraseOutput(0)
    probe.registerOutput(pack.output())
    try:
        fn = torch._C._create_function_from_graph("edgekit_index_probe", probe)
        with torch.no_grad():
            values = list(fn(traced._c, *example_inputs))
        picks = []
        for group in wanted:
            src, *idx = [values.pop(0) if v.type().kind() == "TensorType" else None for v in group]
            positions = torch.arange(src.numel()).reshape(src.shape)
            picks.append((positions, positions[tuple(slice(None) if i is None else i for i in idx)]))
    except (RuntimeError, IndexError, ValueError):
        return 0  # leave the graph as traced; what ncnn cannot take is reported after pnnx
    replaced = 0
    for (_, node), (positions, picked) in zip(candidates, picks):
        if picked.numel() != positions.numel() or not torch.equal(picked.flatten(), positions.flatten()):
            continue  # a real gather: left for pnnx, and reported if ncnn cannot take it
        graph.setInsertPoint(node)
        reshape = graph.create("aten::reshape", [list(node.inputs())[0], graph.insertConstant(list(picked.shape))])
        reshape.insertBefore(node)
        reshape.output().setType(node.output().type())
        node.output().replaceAllUsesWith(reshape.output())
        graph.setInsertPoint(graph.return_node())  # not the node about to go
        node.destroy()
        replaced += 1
    torch._C._jit_pass_dce(graph)
    return replaced


def _trace(model, example_inputs):
    """TorchScript of the model, MHA fast path off, identity indexing turned into reshape."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        traced = torch.jit.trace(model, tuple(example_inputs), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - the user's forward() may raise anything while tracing
        raise UserError("E-EXPORT-FAILED", f"torch.jit.trace could not trace the model for ncnn: {_first_line(exc)}",
                        "make forward() traceable (tensor inputs, no data-dependent control flow)") from exc
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    _rewrite_identity_index(traced, example_inputs)
    traced.edgekit_rewrites = fix_for_pnnx(traced)  # ops pnnx would convert wrongly without an error
    return traced


# --------------------------------------------------------------------------------------------
# Step 2: pnnx.
# --------------------------------------------------------------------------------------------

def _run_pnnx(scratch: Path, example_inputs, fp16: bool = False, shapes2: list | None = None) -> str:
    """Run the pnnx binary on scratch/model.pt; returns its log (stdout + stderr). fp16: pnnx stores
    the weights as float16 in the .bin (ncnn widens them to FP32 when it loads them). shapes2: a
    second shape per input (dynamic shapes): pnnx traces at both and writes the sizes that differ
    as expressions of the input's."""
    import pnnx

    shapes, second = [], []
    for k, t in enumerate(example_inputs):
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _PNNX_TYPES:
            raise UserError("E-EXPORT-FAILED", f"pnnx cannot take an input of dtype {dtype}",
                            "feed the model float32 images or int64 token ids")
        shapes.append("[" + ",".join(str(d) for d in t.shape) + "]" + _PNNX_TYPES[dtype])
        if shapes2:
            second.append("[" + ",".join(str(d) for d in shapes2[k]) + "]" + _PNNX_TYPES[dtype])
    cmd = [pnnx.EXEC_PATH, "model.pt", "inputshape=" + ",".join(shapes),
           *(["inputshape2=" + ",".join(second)] if second else []), f"fp16={int(fp16)}", "device=cpu",
           "pnnxparam=model.pnnx.param", "pnnxbin=model.pnnx.bin", "pnnxpy=model_pnnx.py",
           "pnnxonnx=model.pnnx.onnx", "ncnnparam=model.ncnn.param", "ncnnbin=model.ncnn.bin",
           "ncnnpy=model_ncnn.py"]
    try:
        proc = subprocess.run(cmd, cwd=scratch, capture_output=True, text=True, timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise UserError("E-EXPORT-FAILED", f"pnnx did not finish within {PNNX_TIMEOUT_S} s",
                        "export a smaller model or drop the ncnn target") from exc
    log = proc.stdout + proc.stderr
    missing = [f for f in ("model.ncnn.param", "model.ncnn.bin", "model.pnnx.param") if not (scratch / f).is_file()]
    if proc.returncode != 0 or missing:  # ops pnnx cannot map do not fail it: they are found in the .param
        how = f"exited with code {proc.returncode}" if proc.returncode else f"wrote no {', '.join(missing)}"
        tail = " | ".join(log.strip().splitlines()[-3:])[-600:]
        if second:  # pnnx also ran the traced model at the second shapes: a size fixed in the trace fails there
            raise UserError("E-EXPORT-FAILED",
                            f"pnnx {how} (dynamic shapes: also traced at {','.join(second)}): {tail}",
                            "a model that fixes a size while tracing (a reshape to numbers, a size read as a Python "
                            "int) cannot be size-generic in ncnn: export ncnn at a fixed shape (no --dynamic)")
        raise UserError("E-EXPORT-FAILED", f"pnnx {how}: {tail}",
                        "see the pnnx message; drop the ncnn target if it persists")
    return log


def _input_feeds(layers: list[Layer], names: list[str]) -> list[str]:
    """How each input must be stored in its ncnn Mat: "int32" if only Embed reads it, else "float32"."""
    consumers: dict[str, list[Layer]] = {}
    for layer in layers:
        for k, b in enumerate(layer.inputs):
            if k and layer.type in _SHAPE_REFERENCE:
                continue  # only its shape is read (dynamic shapes: a Crop to the sequence length)
            consumers.setdefault(b, []).append(layer)
    feeds = []
    for name in names:
        kinds, stack = set(), [name]
        while stack:
            for layer in consumers.get(stack.pop(), []):
                if layer.type in _PASS_THROUGH:
                    stack.extend(layer.outputs)
                else:
                    kinds.add("int32" if layer.type in _INT_CONSUMERS else "float32")
        if len(kinds) > 1:
            raise UnsupportedOpError("ncnn", "Embed", name, f"input {name} feeds both an embedding lookup and float "
                                     "arithmetic; ncnn stores it one way: pass a separate input for each use")
        feeds.append(kinds.pop() if kinds else "float32")
    return feeds


def _pnnx_pass(scratch: Path, traced, example_inputs, fp16: bool, shapes2=None) -> tuple[list[Layer], list[str]]:
    """pnnx on ``traced``, then the legaliser: (ncnn layers, "type name" of each layer rewritten), or
    UnsupportedOpError for what is left that ncnn has no layer for."""
    traced.save(str(scratch / "model.pt"))
    log = _run_pnnx(scratch, example_inputs, fp16=fp16, shapes2=shapes2)
    layers = parse_layers((scratch / "model.ncnn.param").read_text())
    fixed = Legaliser(layers, parse_pnnx_ir((scratch / "model.pnnx.param").read_text())).run()
    check_supported(layers, log)
    return layers, fixed


def _convert(scratch: Path, model, example_inputs, fp16: bool,
             shapes2=None) -> tuple[list[Layer], list[str], list[str]]:
    """(ncnn layers, layers the legaliser rewrote, rewrites of the traced graph). Converts as traced;
    if ncnn cannot take the result, traces again with the layout chains ncnn cannot take (over 4 dims,
    strided slices) rewritten as at most 4-D ops (layout.py) and converts that; if
    that fails too, its error is the one reported. Models that convert as traced stay as they were.
    shapes2: pnnx's second input shapes (dynamic shapes); layout.py's chains are written at the traced
    shapes, so a model that needs them is refused then (E-DYNAMIC-UNSUPPORTED)."""
    traced = _trace(model, example_inputs)
    try:
        return (*_pnnx_pass(scratch, traced, example_inputs, fp16, shapes2), traced.edgekit_rewrites)
    except UnsupportedOpError as exc:
        traced = _trace(model, example_inputs)
        chains = rewrite_module(traced)
        if not chains:
            raise
        if shapes2:
            raise DynamicUnsupported(
                f"ncnn cannot take {exc.op} (layer {exc.node}) as traced, and the rewrite that fixes it ({chains} "
                "layout chain(s) of over 4-D tensors or strided slices, as at most 4-D ops) is written at the traced "
                "size, so the file would be wrong at other sizes",
                "export ncnn at a fixed shape (no --dynamic), or use a target with dynamic shapes such as onnx",
                exc.op, exc.node, exc.source) from exc
    return (*_pnnx_pass(scratch, traced, example_inputs, fp16), [f"layout-chain x{chains}", *traced.edgekit_rewrites])

# --------------------------------------------------------------------------------------------
# The converter.
# --------------------------------------------------------------------------------------------

class NcnnConverter(Converter):
    info = TargetInfo(
        rank=40,
        # bias correction: PT2E targets only. No "qat": quantization-aware training's student simulates the
        # asymmetric per-tensor grid of the PT2E and ptl targets, and its weights cost ncnn's symmetric one:
        # MobileNetV2 21.41 -> 18.29 dB with 24 steps (bench/results/qat_mobilenet_v2_24steps.md), the trained
        # float model alone being 23.1 dB from FP32. ncnn exports the model before training (the report says so)
        levers=("equalize", "adaround", "keep_float"),
        name="ncnn",
        title="ncnn (Tencent)",
        suffix=".param",
        precisions=("fp32", "int8", "fp16"),
        # measured max |err| / max |ref|: MobileNetV2 1.7e-6, MiniLM 1e-6, tiny models <= 1e-6
        tolerances={"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE, "fp16": FP16_TOLERANCE},
        delegates=("cpu", "vulkan"),
        extra="ncnn",
        modules=("pnnx",),
        runtime_modules=("ncnn",),
        arm=True,
        arm_wheels=("ncnn==1.0.20261020",),
        app_platforms=("android", "ios"),
        relaxed_defaults=True,
        packages=("pnnx", "ncnn"),
        exporter="torch.jit.trace -> pnnx (fp16=0; fp16=1 for fp16 weights) -> ncnn .param/.bin; leftovers with an "
                 "exact ncnn form rewritten",
        runtime="ncnn python bindings, FP32 (fp16/bf16 storage and arithmetic off), Vulkan off",
        dynamic="non-batch axes only (image height/width, sequence length), fp32: pnnx traces at two sizes "
                "(inputshape2) and writes size expressions; ncnn takes any size. No dynamic batch: ncnn runs one "
                "sample per call",
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        return self._export(model, spec, "fp32", out_dir, example_inputs)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """fp16: pnnx stores the weights as float16; the reference is edgekit's fp16-weight simulation."""
        from edgekit.quant.weight_only import WITH_EMBEDDING, weight_only_meta, write_reference

        art = self._export(model, spec, recipe.scheme, out_dir, example_inputs)
        sim, ref = write_reference(model, recipe, example_inputs, out_dir, spec.name, "ncnn", types=WITH_EMBEDDING)
        meta = {**art.meta, **weight_only_meta(recipe, spec.name, "ncnn", sim, [
            "weights stored as float16 in the .bin; the strict runner widens them to FP32 at load "
            "(fp16 storage/arithmetic stay off, as for fp32)"])}
        return dataclasses.replace(art, files=(*art.files, ref), meta=meta)

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        from .int8 import export_int8

        if spec.dynamic:
            check_dynamic(spec, recipe.scheme)
        return export_int8(self, model, spec, recipe, out_dir, example_inputs, calibration)

    def _export(self, model, spec, precision: str, out_dir: Path, example_inputs: tuple) -> Artifact:
        """pnnx's conversion (fp16: float16 weights), legalised and checked to load -> .param + .bin."""
        stem = f"{spec.name}-{precision}"
        shapes2, free = _second_shapes(model, spec, precision, example_inputs)
        with tempfile.TemporaryDirectory(prefix="edgekit-pnnx-") as tmp:
            scratch = Path(tmp)
            layers, fixed, rewrites = _convert(scratch, model, example_inputs, fp16=precision == "fp16",
                                               shapes2=shapes2)
            inputs, outputs = _io_blobs(layers, spec)
            (scratch / "model.ncnn.param").write_text(format_layers(layers))
            files = {".bin": scratch / "model.ncnn.bin", ".param": scratch / "model.ncnn.param"}
            try:
                load_net(files[".param"], files[".bin"], threads=1)
            except UserError as exc:
                raise UserError("E-EXPORT-FAILED", f"ncnn cannot load what pnnx wrote: {exc.what}",
                                "report it with the model; drop the ncnn target meanwhile") from exc
            sizes = [files[".param"].stat().st_size, files[".bin"].stat().st_size]
            for suffix, src in files.items():
                shutil.copyfile(src, out_dir / f"{stem}{suffix}")
        meta = {
            "inputs": inputs,  # ncnn blob names, spec input order
            "outputs": outputs,  # ncnn blob names, spec output order
            "input_feed": _input_feeds(layers, inputs),  # numpy dtype each input's ncnn Mat holds
            "output_shapes": [list(t.shape) for t in spec.outputs],  # batch included
            "input_names": spec.input_names,  # the spec's, for edgekit.dynamic.shape_problem
            "input_shapes": [list(t.shape) for t in spec.inputs],  # batch included (dynamic axes: in their range)
            "file_bytes": sizes,  # .param, .bin: ncnn does not notice a .bin with bytes to spare
            "legalised_layers": fixed,
            "traced_rewrites": rewrites,  # what was rewritten before pnnx: "<what> x<count>"
        }
        if spec.dynamic:
            meta.update(dynamic.meta(spec.dynamic))
            meta["output_dynamic_axes"] = free  # per output: the axes whose size follows the inputs'
            meta["pnnx_inputshape2"] = shapes2
        return Artifact("ncnn", precision, stem + ".param", (stem + ".param", stem + ".bin"), meta)

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        if not artifact.meta.get("int8_layers"):
            return None
        from .per_layer import compare_blobs

        return compare_blobs(artifact, root, samples)

    def coverage(self, path: Path, meta: dict):
        from edgekit.inspect.report import InspectResult

        from .coverage import analyse

        details = analyse(Path(path), meta.get("precision"))
        res = InspectResult(str(path), self.info.name, details=details)
        res.details["summary"] = (f"{details['layers']} layers, {details['weighted_layers']} weighted "
                                  f"({details['int8_layers']} int8)")
        if details.get("fully_int8") is False:
            res.warnings.append(f"int8 was requested but {len(details['float_layers'])} weighted layer(s) stay float: "
                                + ", ".join(details["float_layers"][:10]))
        return res

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True):
        import ncnn

        root = Path(root)
        param, weights = (root / f for f in artifact.files[:2])  # an INT8 artifact also lists its reference
        meta = artifact.meta
        for f, size in zip((param, weights), meta.get("file_bytes", [None, None])):
            if not f.is_file():
                raise UserError("E-ARTIFACT-CORRUPT", f"ncnn file {f} is missing", "re-export the bundle")
            if size is not None and f.stat().st_size != size:
                raise UserError("E-ARTIFACT-CORRUPT", f"ncnn file {f.name} has {f.stat().st_size} bytes, the export "
                                f"wrote {size}", "re-export the bundle")
        # ncnn's int8 options (use_int8_inference/_packed/_storage/_arithmetic) and use_packing_layout stay at
        # their defaults, all on: with packing off an INT8 MobileNetV2 runs ~3x slower and computes other
        # numbers (bench/int8_speed.py). Strict mode turns off only fp16/bf16, which int8 layers do not use.
        net = load_net(param, weights, threads, strict)
        names, feeds = meta["inputs"], meta["input_feed"]
        outputs, shapes = meta["outputs"], [tuple(s) for s in meta["output_shapes"]]
        spec_names, in_shapes = meta.get("input_names"), meta.get("input_shapes")  # absent from older bundles
        free = meta.get("output_dynamic_axes") or [[] for _ in outputs]

        def run(arrays):
            if len(arrays) != len(names):
                raise UserError("E-DATA-SHAPE", f"{len(arrays)} inputs given, the model takes {len(names)}",
                                "pass one array per model input, in spec order")
            ex = net.create_extractor()
            for k, (name, feed, a) in enumerate(zip(names, feeds, arrays)):
                a = np.asarray(a)
                if a.ndim == 0 or a.shape[0] != 1:
                    raise UserError("E-DATA-SHAPE", f"input {name} has shape {a.shape}; ncnn takes one sample "
                                    "with batch 1", "feed one sample at a time")
                if spec_names and in_shapes:
                    problem = dynamic.shape_problem(meta, spec_names[k], in_shapes[k], a.shape)
                    if problem:
                        raise UserError("E-DATA-SHAPE", problem, "feed samples with the batch dimension and the spec's "
                                        "shape (a dynamic axis: a size in its range)")
                # ncnn has no batch axis. clone(): ncnn computes in place on input Mats, and one that
                # wraps numpy memory crashes the process then. ``data`` stays referenced until clone()
                # has copied it: a converted array (int64 ids -> int32) is otherwise freed first.
                data = np.ascontiguousarray(a[0], dtype=np.dtype(feed))
                ex.input(name, ncnn.Mat(data).clone())
                del data
            result = []
            for name, shape, axes in zip(outputs, shapes, free):
                ret, mat = ex.extract(name)
                out = np.array(mat, dtype=np.float32)
                actual = output_shape(out.shape, shape, axes) if ret == 0 else None
                if actual is None:
                    expected = tuple("?" if k in axes else s for k, s in enumerate(shape))
                    raise UserError("E-ARTIFACT-CORRUPT", f"ncnn returned {out.size} values (shape {out.shape}) for "
                                    f"output {name}, expected shape {expected} (extract code {ret})",
                                    "re-export the bundle")
                result.append(out.reshape(actual))
            return result

        run.net = net  # keep the network alive as long as the runner
        return run


def _second_shapes(model, spec, precision: str, example_inputs: tuple) -> tuple[list | None, list]:
    """Dynamic shapes: (the second input shapes pnnx traces at, each output's free axes); fixed shapes:
    (None, no free axes)."""
    if not spec.dynamic:
        return None, [[] for _ in spec.outputs]
    check_dynamic(spec, precision)
    traced_at = example_sizes(spec, example_inputs)
    second = resized(spec, example_inputs, {d.name: second_size(d, traced_at[d.name]) for d in spec.dynamic})
    lowest = resized(spec, example_inputs, {d.name: d.min for d in spec.dynamic})
    return [list(t.shape) for t in second], output_free_axes(model, spec, example_inputs, [second, lowest])


def _io_blobs(layers, spec) -> tuple[list[str], list[str]]:
    """The ncnn input and output blob names, checked against the spec (pnnx: in0.., out0..)."""
    inputs = [layer.name for layer in layers if layer.type == "Input"]
    produced = {b for layer in layers for b in layer.outputs}
    outputs = [f"out{k}" for k in range(len(spec.outputs))]
    if inputs != [f"in{k}" for k in range(len(spec.inputs))] or not set(outputs) <= produced \
            or f"out{len(spec.outputs)}" in produced:
        raise UserError("E-EXPORT-FAILED", f"pnnx named the ncnn inputs {inputs} and outputs "
                        f"{sorted(b for b in produced if b.startswith('out'))}, which do not match the spec's "
                        f"{len(spec.inputs)} inputs and {len(spec.outputs)} outputs",
                        "make forward() take the spec's inputs in order and return a tensor per output")
    return inputs, outputs


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


CONVERTER = NcnnConverter()
