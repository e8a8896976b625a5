"""ncnn INT8, written by edgekit (ncnn2table / ncnn2int8 are in no wheel).

Steps (``export_int8``):
1. the FP32 ncnn model via pnnx, as the FP32 target writes it;
2. the torch model with BatchNorm folded (``torch.fx`` fuse, what pnnx also does) is matched to the
   ncnn Convolution / ConvolutionDepthWise / InnerProduct layers in execution order, each match
   checked on shape, weights and on the layer's input values (torch module input vs ncnn blob; where
   pnnx moved a zero pad of the torch graph into the conv's own pads, e.g. TF-SAME static padding
   before a ``plain_layers`` conv, the blob padded by it: ``_moved_pad``, recorded as ``input_pad``);
3. calibration: the samples run through the FP32 ncnn net in the bindings; the input blob of every
   quantized layer is recorded with edgekit's ``TensorStatsCollector`` and turned into a range by
   the recipe's calibrator (the same one every target uses). ncnn int8 activations are symmetric per
   tensor: threshold = max(|lo|, |hi|), scale = 127 / threshold, values clamped to [-127, 127];
   then two exact-or-free rewrites of the float parts: each int8 layer's float bias absorbs the mean
   error of its rounded weights on the calibration data (``rounding_bias.py``), and a conv reading the
   ReLU/ReLU6 output of one conv reads c - x instead (``shift.py``: the reflected shift, producer and
   reader rewritten exactly, pad level 127), so that one-sided input uses the whole int8 grid; the few
   layers whose measured int8 error is far out of proportion to their size stay float (``mixed.py``,
   within 2% of the weight bytes);
4. weights: int8 symmetric per output channel, scale = 127 / max|w| (ncnn2int8's rule), rounded half
   away from zero; .param gets ``8=1`` on each quantized layer; its .bin record becomes
   tag 0x000D4B38, int8 weights (padded to 4 bytes), float bias, one float weight scale per output
   channel, the float input scale. Every other byte of the FP32 .bin is copied as is;
   requantize fusion (ncnn2int8's ``fuse_requantize``, ``plan_requantize``): a Convolution /
   ConvolutionDepthWise whose output blob has exactly one consumer, an int8 Convolution /
   ConvolutionDepthWise with one input, gets ``8=101`` and the consumer's input scale appended to its
   record (ncnn's top_blob_int8_scales): it applies bias and its fused activation in float, then
   rounds to int8 with that scale itself, and the consumer reads the int8 blob instead of quantizing
   a float one (measured on MobileNetV2, x86, 1 thread, 36 of 53 layers fused: INT8/FP32 median
   latency 0.90-1.04 -> 0.75, outputs bit-identical to the 8=1 file; bench/results/int8_speed.md);
5. the quantized reference: the folded torch model whose quantized layers fake-quantize their input
   with exactly the artifact's input scale and use the int8 weights times 1/scale, computing in
   float; saved with torch.export next to the artifact. A fused (8=101) layer's requantize is the
   consumer's own input rounding (same scale, half away from zero, clamp +-127, after the activation),
   so the same reference describes both files. The last int8 layer before an output dequantizes
   (float bias and activation in float), so the artifact's outputs are float and carry no scale of
   their own; ``output_scales`` holds the yardstick every other INT8 target's outputs carry, one
   int8 step of each output's calibrated range ((max - min) / 255 of the reference's outputs on the
   calibration samples), so fidelity is judged in the same units on every target.

Layers kept in float: ``recipe.keep_float`` names torch modules (or classes); the matched ncnn layers
keep their FP32 record.
"""
from __future__ import annotations

import copy
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import InternalError, UnsupportedOpError, UserError
from edgekit.quant.recipe import WEIGHT_SCALE_FLOOR

TAG_INT8 = 0x000D4B38
QUANTIZABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
QMAX = 127
# ncnn layers that pnnx writes without any .bin record
_NO_WEIGHTS = {"Input", "Split", "BinaryOp", "Pooling", "ReLU", "Clip", "Flatten", "Reshape", "Concat",
               "Softmax", "Sigmoid", "HardSwish", "HardSigmoid", "Swish", "Permute", "Eltwise", "Crop",
               "Interp", "Noop", "Dropout", "Padding", "Slice", "GELU", "Reduction", "Squeeze",
               "ExpandDims", "UnaryOp", "TanH", "ELU", "Mish", "ShuffleChannel", "Cast", "Tile", "MatMul", "Slice",
               "Flip", "Diag", "CumulativeSum", "CopyTo", "Dequantize", "Quantize", "Requantize",
               "SDPA"}  # SDPA: attention over given q, k, v blobs; ncnn loads no weights for it


# bytes per value of a raw ModelBin record by load type: 1 float32, 2 float16, 3 int8 (pnnx writes a
# constant int tensor, e.g. BERT's token-type ids, as MemoryData 21=3)
_RAW_BYTES = {1: 4, 2: 2, 3: 1}


def _params(layer) -> dict[int, str]:
    out = {}
    for tok in layer.params:
        key, _, val = tok.partition("=")
        out[int(key)] = val
    return out


def _record_bytes(layer) -> int:
    """Bytes of one layer's record in an FP32 pnnx .bin (E-TARGET-PRECISION for a layer type whose
    record edgekit cannot size: it could not rewrite the .bin safely)."""
    p = _params(layer)
    if layer.type in _NO_WEIGHTS:
        return 0
    if layer.type in QUANTIZABLE:
        n_out = int(p.get(0, 0))
        return 4 + 4 * int(p.get(6 if layer.type != "InnerProduct" else 2, 0)) + (4 * n_out if int(p.get(5 if layer.type != "InnerProduct" else 1, 0)) else 0)
    if layer.type == "BatchNorm":
        return 16 * int(p.get(0, 0))
    if layer.type in _AFFINE:  # gamma and beta, raw float32, when the layer is affine
        size, affine = _AFFINE[layer.type]
        return 8 * int(p.get(size, 0)) if int(p.get(affine, 0)) else 0
    if layer.type == "MemoryData" and int(p.get(21, 1)) in _RAW_BYTES:  # a constant (e.g. a position embedding)
        dims = [int(p.get(k, 0)) for k in (0, 1, 11, 2)]  # w*h*d*c raw values of load_type 21 (default float32)
        return _RAW_BYTES[int(p.get(21, 1))] * int(np.prod([d for d in dims if d > 0]))
    if layer.type == "PReLU":
        return 4 * int(p.get(0, 0))
    if layer.type == "Gemm":
        return _gemm_bytes(p)
    if layer.type == "Embed":  # the table (tagged float32), then the bias (raw) when bias_term
        return 4 + 4 * int(p.get(3, 0)) + (4 * int(p.get(0, 0)) if int(p.get(2, 0)) else 0)
    if layer.type == "MultiHeadAttention":
        return _attention_bytes(p)
    raise UnsupportedOpError("ncnn", f"INT8 layer {layer.type}", layer.name,
                             f"edgekit's ncnn INT8 writer cannot size the weights of an ncnn {layer.type} layer; "
                             "export ncnn in fp32 (or fp16) for this model")


def _gemm_bytes(p: dict[int, str]) -> int:
    """A Gemm's constant A, B and C (tagged float32 records; C sized by its broadcast type), as ncnn's
    Gemm::load_model reads them (params 4/5/6 constantA/B/C, 7/8/9 M/N/K, 10 C's broadcast type)."""
    m, n, k = (int(p.get(i, 0)) for i in (7, 8, 9))
    size = (4 + 4 * m * k if int(p.get(4, 0)) else 0) + (4 + 4 * n * k if int(p.get(5, 0)) else 0)
    broadcast = int(p.get(10, 0))
    if int(p.get(6, 0)) and broadcast != -1:
        size += 4 + 4 * {0: 1, 1: m, 2: m, 3: m * n, 4: n}.get(broadcast, 0)  # tagged too (measured: pnnx writes it so)
    return size


def _attention_bytes(p: dict[int, str]) -> int:
    """A MultiHeadAttention's q, k, v and output projections as ncnn's load_model reads them: each
    weight a tagged float32 record, each bias raw float32 (params 0 embed_dim, 2 weight_data_size =
    embed_dim * qdim, 3 kdim and 4 vdim, both embed_dim when absent)."""
    e = int(p.get(0, 0))
    qdim = int(p.get(2, 0)) // e if e else 0
    kdim, vdim = int(p.get(3, e)), int(p.get(4, e))
    weights = sum(4 + 4 * e * d for d in (qdim, kdim, vdim, qdim))
    return weights + 4 * (3 * e + qdim)


# ncnn layers whose weights are gamma/beta: type -> (param id of the affine size, param id of the affine flag)
_AFFINE = {"LayerNorm": (0, 2), "GroupNorm": (1, 3), "InstanceNorm": (0, 2)}


def _bin_layout(layers, size: int) -> dict[str, tuple[int, int]]:
    """Layer name -> (offset, length) of its record in the FP32 .bin; checks the total size."""
    out, off = {}, 0
    for layer in layers:
        n = _record_bytes(layer)
        out[layer.name] = (off, n)
        off += n
    if off != size:
        raise InternalError(f"ncnn .bin has {size} bytes, its .param describes {off}")
    return out


@dataclass
class QLayer:
    """One quantized ncnn layer and what edgekit chose for it."""

    name: str  # ncnn layer name
    type: str
    module: str  # torch module name (folded model)
    inp: str  # ncnn input blob
    out: str  # ncnn output blob
    weight: np.ndarray  # float32 weights, shape (out_channels, -1), from the FP32 .bin
    bias: np.ndarray | None
    w_scales: np.ndarray | None = None  # float32, per output channel
    in_scale: float | None = None
    act: tuple = (0,)  # ncnn fused activation: (type, *params)
    out_scale: float | None = None  # requantize fusion (8=101): the consumer's input scale, else None
    in_pad: tuple | None = None  # (top, bottom, left, right) zero pad the torch conv's input has and the ncnn blob not
    pad_level: float = 0.0  # the int8 level ncnn pads this layer's input with (param 18; shift.py), 0: zero
    in_shift: float | None = None  # reads center - x instead of x (shift.py: the reflected shift), else None


def _activation(layer) -> tuple:
    p = _params(layer)
    kind = int(p.get(9, 0))
    if kind == 0:
        return (0,)
    vals = [float(v) for v in p.get(-23310, "0").split(",")[1:]]
    return (kind, *vals)


def apply_activation(y: np.ndarray, act: tuple) -> np.ndarray:
    kind = act[0]
    if kind == 0:
        return y
    if kind == 1:
        slope = act[1] if len(act) > 1 else 0.0
        return np.where(y > 0, y, y * slope).astype(np.float32)
    if kind == 3:
        return np.clip(y, act[1], act[2])
    if kind == 4:
        return (1.0 / (1.0 + np.exp(-y))).astype(np.float32)
    raise InternalError(f"ncnn activation type {kind} is not simulated")


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-output-channel scales): scale = min(127 / max|w|, 1 / WEIGHT_SCALE_FLOOR), round
    half away from zero."""
    w = w.astype(np.float32).reshape(w.shape[0], -1)
    amax = np.abs(w).max(axis=1)
    # the recipe's scale floor (WEIGHT_SCALE_FLOOR, as the PT2E targets): ncnn's scale is its inverse
    scales = np.minimum(np.float32(QMAX) / np.maximum(amax, 1e-30), np.float32(1.0 / WEIGHT_SCALE_FLOOR)).astype(np.float32)
    x = w * scales[:, None]
    q = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -QMAX, QMAX).astype(np.int8)
    return q, scales


def _torch_layers(folded, sample) -> list[tuple[str, object, np.ndarray]]:
    """(name, module, input value) of every Conv2d / Linear of the folded model, in execution order."""
    import torch
    from torch import nn

    seen, hooks = [], []
    for name, mod in folded.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            hooks.append(mod.register_forward_pre_hook(
                lambda m, args, name=name: seen.append((name, m, args[0].detach().numpy().copy()))))
    try:
        with torch.no_grad():
            folded(*[torch.from_numpy(np.ascontiguousarray(a)) for a in sample])
    finally:
        for h in hooks:
            h.remove()
    return seen


def fold(model, example_inputs: tuple):
    """The model as a torch.fx GraphModule with BatchNorm folded into the preceding conv, as pnnx
    folds it: ``nn.BatchNorm2d`` modules (torch.fx's ``fuse``) and batch norms that tracing turned
    into ``F.batch_norm`` calls (a BatchNorm subclass with its own forward, such as timm's
    ``BatchNormAct2d``, which fuse does not know: those layers stayed float, 1 of 53 int8).
    A model that branches on tensor shapes is traced with the example's shapes fixed, as pnnx's
    export is (``shape_trace``)."""
    from torch.fx.experimental.optimization import fuse

    from edgekit.quant.shape_trace import trace_with_shapes

    try:
        gm = fuse(copy.deepcopy(model).eval())
    except Exception as exc:  # noqa: BLE001 - symbolic tracing of a user model can raise anything
        try:
            gm = fuse(trace_with_shapes(copy.deepcopy(model).eval(), example_inputs).eval())
        except Exception:  # noqa: BLE001 - the first error says more about the model
            raise UserError("E-TARGET-PRECISION", f"ncnn INT8 needs a torch.fx-traceable model to build its quantized "
                            f"reference: {type(exc).__name__}: {str(exc)[:200]}",
                            "keep the ncnn target FP32 for this model") from exc
    if _fold_functional_batch_norms(gm):
        gm.graph.lint()
        gm.recompile()
    return gm


def _fold_functional_batch_norms(gm) -> int:
    """Fold every eval-mode ``F.batch_norm`` call on the output of a Conv2d module called once (its
    other uses read the shape only) into a folded copy of that conv. -> how many were folded."""
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not F.batch_norm:
            continue
        conv_node = node.args[0]
        if not (getattr(conv_node, "op", None) == "call_module" and calls[conv_node.target] == 1
                and type(gm.get_submodule(conv_node.target)) is nn.Conv2d and all(u is node or _reads_shape_only(u) for u in conv_node.users)):
            continue
        bn = _batch_norm_tensors(gm, node)
        if bn is None:
            continue
        conv = copy.deepcopy(gm.get_submodule(conv_node.target))
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn["running_mean"], bn["running_var"],
                                                      bn["eps"], bn["weight"], bn["bias"])
        gm.add_submodule(conv_node.target, conv)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)
        folded += 1
    return folded


def _reads_shape_only(node) -> bool:
    """A use of a tensor that reads its shape only (timm asserts ``x.ndim``), the same before and
    after a batch norm."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in ("ndim", "shape")
    return node.op == "call_method" and node.target in ("dim", "size")


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _batch_norm_tensors(gm, node) -> dict | None:
    """The statistics and affine tensors of an ``F.batch_norm`` node when it is an eval-mode batch
    norm over constants (get_attr), else None."""
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    bound = dict(zip(names, node.args))
    bound.update(node.kwargs)
    if bound.get("training", False) is not False:
        return None
    out = {"eps": float(bound.get("eps", 1e-5))}
    for key in ("running_mean", "running_var", "weight", "bias"):
        arg = bound.get(key)
        if arg is None and key in ("weight", "bias"):
            out[key] = None
            continue
        if getattr(arg, "op", None) != "get_attr":
            return None
        out[key] = _attr(gm, arg.target).detach()
    if out["weight"] is None:  # fuse_conv_bn_weights needs both affine tensors
        out["weight"] = out["running_mean"].new_ones(out["running_mean"].shape)
    if out["bias"] is None:
        out["bias"] = out["running_mean"].new_zeros(out["running_mean"].shape)
    return out


def match_layers(layers, bin_bytes: bytes, layout, folded, blobs0: dict[str, np.ndarray], sample
                 ) -> tuple[list[QLayer], list[str]]:
    """Pair each quantizable ncnn layer with the folded torch module that holds the same weights and
    sees the same input values (pnnx may order layers otherwise than torch runs them). -> (the
    paired layers, notes on the ncnn layers left float because no torch conv/linear matches them
    exactly: they are never quantized blindly)."""
    torch_layers = _torch_layers(folded, sample)
    used, out, notes = set(), [], []
    for layer in (lay for lay in layers if lay.type in QUANTIZABLE):
        if _grouped(layer):
            notes.append(f"{layer.name} (grouped convolution, not depthwise) kept float: ncnn reads one int8 weight "
                         "scale per group for it and then computes it wrong (measured: error 0.27 of 0.35 against "
                         "the per-group simulation; with per-channel scales its .bin does not load)")
            continue
        w, b, tag = _ncnn_weights(layer, bin_bytes, layout)
        blob = blobs0[layer.inputs[0]]
        xin = blob.reshape(-1)
        match, pad = None, None
        for name, mod, x in torch_layers:
            if name in used or tag != 0 or not _same(mod.weight.detach().numpy().reshape(mod.weight.shape[0], -1), w, 1e-4):
                continue
            if x.size == xin.size and _same(x.reshape(-1), xin, 1e-3):
                match = name
                break
            pad = _moved_pad(layer, mod, x, blob)
            if pad is not None and _same(x.reshape(-1), np.pad(blob, ((0, 0), pad[:2], pad[2:])).reshape(-1), 1e-3):
                match = name
                break
            pad = None
        if match is None:
            notes.append(f"{layer.name} ({layer.type}) kept float: no torch conv/linear with its weights and inputs")
            continue
        used.add(match)
        out.append(QLayer(layer.name, layer.type, match, layer.inputs[0], layer.outputs[0], w.copy(), b, act=_activation(layer),
                          in_pad=pad))
    return out, notes


def _moved_pad(layer, mod, x: np.ndarray, blob: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right): the zero padding pnnx moved from the torch graph into this ncnn
    Convolution* (a TF-SAME static pad before a plain conv, ``plain_layers``: the torch conv sees the
    padded tensor, the ncnn layer the unpadded blob and pads it itself), or None."""
    p = _params(layer)
    left = int(p.get(4, 0))
    right, top = int(p.get(15, left)), int(p.get(14, left))
    bottom = int(p.get(16, top))
    own = getattr(mod, "padding", None)
    if (layer.type == "InnerProduct" or x.ndim != 4 or blob.ndim != 3 or float(p.get(18, 0)) != 0
            or not isinstance(own, tuple) or len(own) != 2):
        return None
    pad = (top - own[0], bottom - own[0], left - own[1], right - own[1])
    if min(pad) < 0 or max(pad) == 0 or min(left, right, top, bottom) < 0:
        return None
    if x.shape[1:] != (blob.shape[0], blob.shape[1] + pad[0] + pad[1], blob.shape[2] + pad[2] + pad[3]):
        return None
    return pad


def _grouped(layer) -> bool:
    """A ConvolutionDepthWise layer that is a grouped convolution (group < num_output)."""
    p = _params(layer)
    return layer.type == "ConvolutionDepthWise" and int(p.get(7, 1)) != int(p.get(0, 0))


def _ncnn_weights(layer, bin_bytes: bytes, layout):
    """(float32 weights (out, -1), bias or None, storage tag) of a Convolution*/InnerProduct record."""
    p = _params(layer)
    n_out = int(p[0])
    off, _ = layout[layer.name]
    nw = int(p[2 if layer.type == "InnerProduct" else 6])
    (tag,) = struct.unpack_from("<I", bin_bytes, off)
    w = np.frombuffer(bin_bytes, "<f4", nw, off + 4).reshape(n_out, -1)
    has_bias = int(p.get(1 if layer.type == "InnerProduct" else 5, 0))
    b = np.frombuffer(bin_bytes, "<f4", n_out, off + 4 + 4 * nw).copy() if has_bias else None
    return w, b, tag


def _same(a: np.ndarray, b: np.ndarray, rel: float) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max(initial=0.0)) <= rel * max(float(np.abs(a).max(initial=0.0)), 1e-6)


def _ncnn_blobs(net, inputs: list[str], feeds: list[str], sample, blobs: list[str]) -> dict[str, np.ndarray]:
    import ncnn

    ex = net.create_extractor()
    ex.set_light_mode(False)
    for name, feed, a in zip(inputs, feeds, sample):
        data = np.ascontiguousarray(np.asarray(a)[0], dtype=np.dtype(feed))  # alive until clone() copied it
        ex.input(name, ncnn.Mat(data).clone())
    out = {}
    for b in blobs:
        ret, mat = ex.extract(b)
        if ret != 0:
            raise InternalError(f"ncnn could not extract blob {b} (code {ret})")
        out[b] = np.array(mat, dtype=np.float32)
    return out


def calibrate(net, meta, samples, qlayers: list[QLayer], recipe) -> list[str]:
    """Set each QLayer's in_scale from edgekit's calibrator on the FP32 ncnn blobs (two passes); -> notes."""
    from edgekit.quant.calibrators import TensorStatsCollector, calibrate_ranges, learned_note
    from edgekit.quant.plain_layers import original_name

    blobs = sorted({q.inp for q in qlayers})
    col = TensorStatsCollector(recipe.bins)

    def feed():
        for s in samples:
            for b, v in _ncnn_blobs(net, meta["inputs"], meta["input_feed"], s, blobs).items():
                col.observe(b, v)

    reads: dict[str, set[str]] = {}  # blob -> the user's names of the layers reading it (learned QAT ranges)
    for q in qlayers:
        reads.setdefault(q.inp, set()).add(original_name(q.module))
    ranges = calibrate_ranges(col, feed, recipe, blobs, reads=reads)
    for q in qlayers:
        lo, hi = ranges[q.inp]
        threshold = max(abs(lo), abs(hi))
        q.in_scale = float(np.float32(QMAX / threshold)) if threshold > 0 else 1.0
    note = learned_note({layer for layers in reads.values() for layer in layers}, recipe)
    return [note] if note else []


FUSABLE = ("Convolution", "ConvolutionDepthWise")


def plan_requantize(layers, qlayers: list[QLayer], outputs=()) -> int:
    """ncnn2int8's requantize fusion: set ``out_scale`` of each quantized Convolution /
    ConvolutionDepthWise whose output blob is read by exactly one layer (and is no network output),
    that layer being a quantized Convolution / ConvolutionDepthWise with one input, to that layer's
    input scale; every other QLayer gets None (8=1, float output). -> how many were fused.

    ncnn with 8=101 (load_model: weights, bias, weight scales, bottom scale, then top scale)
    computes the int32 sum, scale and bias and the fused activation (9=/10=) in float, then rounds
    with the top scale (float2int8: half away from zero, clamp +-127) to an int8 blob; a consumer
    given an int8 blob skips its own quantize. Splits are not fused through (ncnn2int8 also fuses
    conv -> Split -> all-int8-conv branches; MobileNetV2's Splits all feed a residual add too)."""
    by_name = {q.name: q for q in qlayers}
    readers: dict[str, list] = {}
    for layer in layers:
        for b in layer.inputs:
            readers.setdefault(b, []).append(layer)
    fused = 0
    for q in qlayers:
        q.out_scale = None
        users = readers.get(q.out, [])
        if q.type not in FUSABLE or len(users) != 1 or q.out in set(outputs):
            continue
        nxt = by_name.get(users[0].name)
        if nxt is not None and nxt.type in FUSABLE and len(users[0].inputs) == 1 and nxt.in_scale is not None:
            q.out_scale = nxt.in_scale
            fused += 1
    return fused


def write_int8(layers, bin_bytes: bytes, layout, qlayers: list[QLayer]) -> tuple[list, bytes]:
    """-> (layers with 8=1 on the quantized ones, 8=101 on those with ``out_scale`` (requantize
    fusion, ``plan_requantize``), the INT8 .bin)."""
    by_name = {q.name: q for q in qlayers}
    chunks = []
    for layer in layers:
        off, n = layout[layer.name]
        q = by_name.get(layer.name)
        if q is None:
            chunks.append(bin_bytes[off:off + n])
            continue
        qw, _ = quantize_weights(q.weight)
        raw = qw.tobytes()
        raw += b"\0" * (-len(raw) % 4)
        rec = struct.pack("<I", TAG_INT8) + raw
        if q.bias is not None:
            rec += q.bias.astype("<f4").tobytes()
        rec += q.w_scales.astype("<f4").tobytes() + struct.pack("<f", q.in_scale)
        if q.out_scale is not None:  # top_blob_int8_scales: the layer requantizes its output to int8
            rec += struct.pack("<f", q.out_scale)
        chunks.append(rec)
        flag = "8=101" if q.out_scale is not None else "8=1"  # 101: int8 in, int8 out (requantize)
        layer.params = [t for t in layer.params if not t.startswith("8=")] + [flag]
    return layers, b"".join(chunks)


class _FakeQuant(__import__("torch").nn.Module):
    """A conv/linear computing ncnn's int8 scheme in float: the input rounded to int8 levels
    (x * s, half away from zero, clamp +-127), the conv/linear on integer-valued float32 tensors (exact
    while sums stay below 2**24, as ncnn's int32 sums), then ncnn's dequantize: sum * 1/(s * s_w[c]) + bias.

    Rounding follows ncnn's float2int8, which rounds half away from zero on every CPU (x86: +-0.5
    then truncate, computed here the same way in float32; ARM: vcvtaq, the same except for
    |x * s| = 0.49999997). torch.round (half to even) differed on exact ties: measured on timm
    convnext_atto (a 7x7 depthwise conv, 160x14x14 input), one tie in a sample put 28 outputs one input
    step (up to 3.2e-4, 0.3% of their channel's range) off the runtime.

    Dequantize: ARM's kernels (the phone) compute 1/(s * s_w[c]) exactly, as here. ncnn's x86
    depthwise int8 kernel for channels % 8 == 0 (packed layout) computes it as ``_mm_rcp_ps(s * s_w)``, an
    approximate reciprocal (relative error <= 1.5 * 2**-12, CPU-dependent bits): on the x86 host each
    such channel's outputs are off by a constant factor within that bound (measured on every depthwise
    layer of timm mobilenetv3_small_100: max 2.8e-4, local SQNR 66-81 dB, every element inside the
    bound). The reference keeps the exact value (what the device computes); the per-layer bound
    (``LOCAL_MIN_SQNR_DB``) is far above it."""

    def __init__(self, mod, in_scale: float, w_q: np.ndarray, w_scales: np.ndarray, pad_level: float = 0.0):
        import torch

        super().__init__()
        self.mod = copy.deepcopy(mod)
        # ncnn pads the int8 levels with param 18 (pad_value) as a level: shift.py sets it for a shifted input
        pads = tuple(getattr(mod, "_reversed_padding_repeated_twice", ()))
        self.pads = pads if pad_level and any(pads) else None
        self.pad_level = float(pad_level)
        if self.pads is not None:
            self.mod.padding = (0,) * len(mod.kernel_size)
        w = torch.from_numpy(w_q.astype(np.float32).reshape(tuple(mod.weight.shape)))
        self.mod.weight = torch.nn.Parameter(w, requires_grad=False)
        bias = mod.bias.detach().clone() if mod.bias is not None else torch.zeros(w.shape[0])
        self.mod.bias = None
        rescale = (np.float32(1.0) / (np.float32(in_scale) * w_scales.astype(np.float32))).astype(np.float32)
        shape = (1, -1) + (1,) * (w.dim() - 2)
        self.register_buffer("scale", torch.tensor(np.float32(in_scale)))
        self.register_buffer("rescale", torch.from_numpy(rescale).reshape(shape))
        self.register_buffer("bias", bias.reshape(shape))

    def forward(self, x):
        import torch

        v = x * self.scale
        q = torch.clamp(torch.sign(v) * torch.floor(torch.abs(v) + 0.5), -QMAX, QMAX)  # half away from zero
        if self.pads is not None:
            q = torch.nn.functional.pad(q, self.pads, value=self.pad_level)
        return self.mod(q) * self.rescale + self.bias


def build_reference(folded, qlayers: list[QLayer]):
    """The folded model with each quantized layer replaced by its simulation, with the weights and
    bias the artifact was made from (pnnx folds BatchNorm with slightly different rounding than
    torch.fx: ~1e-5 on depthwise biases) and exactly the artifact's int8 weights and scales."""
    ref = copy.deepcopy(folded)
    for q in qlayers:
        mod = copy.deepcopy(ref.get_submodule(q.module))
        if q.bias is not None or mod.bias is not None:
            import torch

            b = q.bias if q.bias is not None else np.zeros(len(q.w_scales), np.float32)
            mod.bias = torch.nn.Parameter(torch.from_numpy(b.astype(np.float32)), requires_grad=False)
        qw, _ = quantize_weights(q.weight)
        parent, _, leaf = q.module.rpartition(".")
        setattr(ref.get_submodule(parent) if parent else ref, leaf, _FakeQuant(mod, q.in_scale, qw, q.w_scales, q.pad_level))
    return ref


def output_steps(ref, samples) -> list[float]:
    """One int8 step of each output's range on the calibration samples ((max - min) / 255, as an
    affine int8 output of the PT2E targets would have): the unit ncnn's float outputs are judged in."""
    from edgekit.reference import run_reference

    return [float(o.max() - o.min()) / 255.0 for o in run_reference(ref, samples)]


def export_int8(conv, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration):
    """FP32 ncnn via pnnx, then edgekit's INT8 rewrite; -> Artifact (files: .param, .bin, reference)."""
    from edgekit.quant.plain_layers import original_name
    from edgekit.quant.recipe import keep_float_modules
    from edgekit.quant.reference import reference_name, save_quantized_reference

    from ..base import Artifact
    from .param import format_layers, load_net, parse_layers
    from .shift import shift_reference

    samples = tuple(calibration.samples)[: recipe.max_samples]
    model, rounded, notes = _prepared(model, example_inputs, samples, recipe)
    kept = keep_float_modules(model, recipe)
    stem = f"{spec.name}-int8"
    names = (stem + ".param", stem + ".bin", reference_name(spec.name, "ncnn"))
    with tempfile.TemporaryDirectory(prefix="edgekit-ncnn-int8-") as tmp:
        tmp = Path(tmp)
        fp = conv.export(model, spec, None, tmp, example_inputs)
        param, weights = tmp / fp.files[0], tmp / fp.files[1]
        layers = parse_layers(param.read_text())
        bin_bytes = weights.read_bytes()
        layout = _bin_layout(layers, len(bin_bytes))
        net = load_net(param, weights, threads=1)
        folded = fold(model, example_inputs)
        first = _ncnn_blobs(net, fp.meta["inputs"], fp.meta["input_feed"], samples[0],
                            sorted({lay.inputs[0] for lay in layers if lay.type in QUANTIZABLE}))
        qlayers, unmatched = match_layers(layers, bin_bytes, layout, folded, first, samples[0])
        qlayers = [q for q in qlayers if q.module not in kept]
        if rounded is not None:
            _take_rounded(qlayers, rounded, example_inputs)
        notes = notes + calibrate(net, fp.meta, samples, qlayers, recipe)
        qlayers, shifts, sensitive, rewrite_notes = _float_rewrites(layers, qlayers, folded, samples, fp.meta["outputs"])
        for q in qlayers:
            q.w_scales = quantize_weights(q.weight)[1]
        fused = plan_requantize(layers, qlayers, fp.meta["outputs"])
        layers, int8_bin = write_int8(layers, bin_bytes, layout, qlayers)
    ref = shift_reference(build_reference(folded, qlayers), qlayers, shifts)
    (out_dir / names[1]).write_bytes(int8_bin)
    (out_dir / names[0]).write_text(format_layers(layers))
    save_quantized_reference(ref, tuple(example_inputs), out_dir / names[2])
    meta = {k: v for k, v in fp.meta.items() if k != "file_bytes"}
    meta.update({
        "file_bytes": [(out_dir / names[0]).stat().st_size, (out_dir / names[1]).stat().st_size],
        "reference": names[2],
        "output_scales": output_steps(ref, samples),  # the outputs are float: one int8 step of their calibrated range
        "recipe": recipe.to_dict(),
        "recipe_summary": recipe.describe().replace("a: per-tensor", "a: per-tensor symmetric (ncnn)"),
        "calibration": {"count": len(samples), "sha256": calibration.head(recipe.max_samples).sha256},
        "kept_float": sorted({original_name(m) for m in kept if isinstance(folded.get_submodule(m), _conv_linear())}
                             | {original_name(m) for m in sensitive}),
        "quant_notes": [f"ncnn int8: {len(qlayers)} Convolution/ConvolutionDepthWise/InnerProduct layers int8 "
                        "(weights per output channel, input symmetric per tensor, scale 127/threshold); "
                        f"{fused} of them requantize their output to int8 for the next int8 conv (8=101, ncnn2int8's "
                        "requantize fusion), the others dequantize it to float (8=1); every other layer float"]
                       + rewrite_notes + notes + unmatched + _float_note(layers, qlayers, layout),
        "int8_layers": [_layer_entry(q) for q in qlayers],
    })
    return Artifact("ncnn", "int8", names[0], names, meta)


def _float_rewrites(layers, qlayers: list[QLayer], folded, samples, outputs) -> tuple[list[QLayer], list, list[str], list[str]]:
    """The rewrites of the float parts around the int8 layers: weight-rounding bias correction, the few
    int8-sensitive layers kept float, one-sided inputs shifted. -> (the layers still int8, the shifts,
    the modules kept float, notes)."""
    from .mixed import describe_float, sensitive_layers
    from .rounding_bias import correct_rounding_bias
    from .shift import apply_shifts, describe_shifts, plan_shifts

    correct_rounding_bias(folded, qlayers, samples)  # before the shifts: in the original units
    sensitive = sensitive_layers(folded, qlayers, samples)  # kept float: their FP32 records are copied
    qlayers = [q for q in qlayers if all(q is not k for k, _ in sensitive)]
    corrected = sum(q.bias is not None for q in qlayers)
    shifts = apply_shifts(layers, plan_shifts(layers, qlayers, folded, outputs))
    notes = [f"weight-rounding bias correction on {corrected} int8 layers: each float bias absorbs "
             "(W_int8 - W) times its input's per-channel calibration mean"] + describe_shifts(shifts) + describe_float(sensitive)
    return qlayers, shifts, [q.module for q, _ in sensitive], notes


def _layer_entry(q: QLayer) -> dict:
    """One int8 layer in the artifact's metadata (the per-layer view reads it)."""
    return {"layer": q.name, "op": q.type, "module": q.module, "input": q.inp, "output": q.out,
            "input_scale": q.in_scale, "activation": list(q.act),
            "output_scale": q.out_scale,  # None: float output (8=1)
            "input_pad": list(q.in_pad) if q.in_pad else None,
            "input_shift": q.in_shift}  # reads input_shift - x (shift.py), None: x


# why a weighted ncnn layer type stays float in edgekit's INT8 file
_FLOAT_WHY = {"Gemm": "a linear layer on a 3-D input or a matmul with a constant: ncnn's int8 Gemm is not written",
              "Embed": "a lookup table: no arithmetic to quantize",
              "MultiHeadAttention": "ncnn's fused attention: its int8 form needs per-projection scales edgekit does not write"}


def _float_note(layers, qlayers: list[QLayer], layout) -> list[str]:
    """One note naming the weighted layer types that stay float, how many and why (mixed precision)."""
    quantized = {q.name for q in qlayers}
    kept = Counter(layer.type for layer in layers if layout[layer.name][1] > 0 and layer.name not in quantized)
    if not kept:
        return []
    parts = [f"{n} {t}" + (f" ({_FLOAT_WHY[t]})" if t in _FLOAT_WHY else "") for t, n in sorted(kept.items())]
    return ["weighted layers left float in the int8 file: " + "; ".join(parts)]


def _prepared(model, example_inputs: tuple, samples, recipe):
    """The recipe's levers applied before quantizing: cross-layer equalization, learned rounding, and
    conv/linear subclasses with a forward of their own traced as plain layers -> (the float model, its
    learned-rounding copy or None, notes). The FP32 file is written from the float model, so a layer
    that stays float keeps its float weights; the int8 layers take the learned integers (``_rounded``)."""
    from edgekit.quant.adaround import describe, round_weights
    from edgekit.quant.equalize import equalized
    from edgekit.quant.plain_layers import plain_layers

    model, notes = equalized(model, recipe)
    rounded, learned = round_weights(model, example_inputs, samples, recipe)  # unchanged for rounding="nearest"
    model, plain = plain_layers(model)
    if learned:
        notes = [*notes, describe(learned)]
        rounded = plain_layers(rounded)[0]
    if plain:
        notes = [*notes, f"{len(plain)} conv/linear subclass(es) with a forward of their own (e.g. {plain[0]}) "
                 "matched as plain layers"]
    return model, (rounded if learned else None), notes


def _take_rounded(qlayers: list[QLayer], rounded, example_inputs: tuple) -> None:
    """Each int8 layer's weights (and bias) from the learned-rounding model, BatchNorm folded as in ``fold``."""
    mods = dict(fold(rounded, example_inputs).named_modules())
    for q in qlayers:
        mod = mods.get(q.module)
        if mod is not None and mod.weight.numel() == q.weight.size:
            q.weight = mod.weight.detach().numpy().reshape(q.weight.shape).astype(np.float32)
            if mod.bias is not None and q.bias is not None:
                q.bias = mod.bias.detach().numpy().astype(np.float32)


def _conv_linear():
    from torch import nn

    return (nn.Conv2d, nn.Linear)
