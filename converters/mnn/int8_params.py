"""INT8 for MNN with edgekit's own calibrated ranges: the QDQ ONNX -> a float graph + MNN's
compression parameters, from which MNN's converter writes integer convolutions.

Why not hand MNN the QDQ ONNX: MNN 3.6.1's ONNX converter takes every 4-D ``DequantizeLinear`` for a
convolution weight and transposes it (OnnxDeQuantizeLinear.cpp), activations included, so the graph
fails shape inference and the converter aborts (``std::out_of_range``, SIGABRT) on edgekit's QDQ
file; where it does convert QDQ it folds the weights back to float and drops the activation pairs
(EliminateQuantAndDequant.cpp): a float model, not an int8 one.

What is done instead, with the numbers of the QDQ file (that is, of the quantized reference):
1. every weight ``DequantizeLinear`` becomes a float initializer holding exactly (q - zp) * scale;
2. every activation ``QuantizeLinear -> DequantizeLinear`` pair is removed; its scale and zero point
   are kept for the tensor it quantized (a pair on a graph output renames the producer's output);
3. a ``Transpose`` of such a weight (torch.onnx writes a Linear on a 3-D input as
   ``DequantizeLinear(W) -> Transpose -> MatMul -> Add(bias)``) is folded into the initializer, so
   the MatMul's weight is a constant MNN turns into a convolution;
4. each Conv / Gemm / MatMul with an int8 weight whose input and output (after a ReLU/Clip MNN fuses
   into a Conv, or for a MatMul the bias ``Add`` MNN fuses into it) are quantized becomes one layer of
   MNN's ``Compression::Pipeline`` (JSON): input scale and zero point, per-output-channel weight
   scales, output scale and zero point.
MNN's converter, given that file (``--compressionParamsFile``), re-quantizes each conv's float weights
with those scales (round(w / s) of a weight that is q * s gives back q) and writes int8 weights plus
int8 tensor descriptions; its runtime then runs ``Convolution [ DT_INT8 ]`` kernels, and also runs
element-wise ops between int8 tensors (the residual adds) in int8 with the consumers' scales.
Ops without a layer (mean, reshape, layers kept float) run in float between int8 conversions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.errors import InternalError

_FUSED_ACTIVATIONS = ("Relu", "Clip")  # MNN folds these into the preceding Conv (relu / relu6)
_WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class Int8Layer:
    """One conv/linear MNN should run in int8, with the reference's quantization numbers."""

    node: str  # the ONNX node
    input: str
    output: str  # the tensor whose quantizer gives the output scale (the fused activation's output)
    input_scale: float
    input_zero_point: int
    weight_scales: list[float]
    output_scale: float
    output_zero_point: int


@dataclass
class FloatGraph:
    """The QDQ graph made float, with what MNN needs to make it int8 again."""

    model: object  # onnx.ModelProto
    layers: list[Int8Layer] = field(default_factory=list)
    activation_scales: int = 0  # tensors the QDQ graph quantized
    skipped: list[str] = field(default_factory=list)  # weight ops left float (no quantized input or output)


def qdq_to_float(model) -> FloatGraph:
    """Rewrite the QDQ ``model`` (onnx.ModelProto) in place into a float graph; collect the layers."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    arrays = {}

    def array(name):
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed, weights, acts, rename, new_inits = set(), {}, {}, {}, []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            w, scales, axis = _dequantize_constant(node, array)
            new_inits.append(numpy_helper.from_array(w, node.output[0]))
            weights[node.output[0]] = (scales, w.shape, axis)
            removed.add(id(node))
        elif node.op_type == "QuantizeLinear":
            pairs = consumers.get(node.output[0], [])
            if not pairs or any(d.op_type != "DequantizeLinear" for d in pairs):
                raise InternalError(f"QuantizeLinear {node.name!r} feeds {[d.op_type for d in pairs]}, not only "
                                    "DequantizeLinear: not a QDQ graph edgekit wrote")
            acts[node.input[0]] = _activation_qparams(node, array)
            removed.add(id(node))
            for dq in pairs:
                removed.add(id(dq))
                rename[dq.output[0]] = node.input[0]

    def resolve(name):
        while name in rename:
            name = rename[name]
        return name

    keep = [n for n in graph.node if id(n) not in removed]
    for node in keep:
        node.input[:] = [resolve(i) for i in node.input]
    for out in graph.output:  # a pair on a graph output: its producer now writes the output's name
        src = resolve(out.name)
        if src != out.name:
            for node in keep:
                node.input[:] = [out.name if i == src else i for i in node.input]
                node.output[:] = [out.name if o == src else o for o in node.output]
            acts[out.name] = acts.pop(src)
    _replace_graph(graph, _fold_weight_transposes(keep, weights, new_inits), new_inits)
    result = FloatGraph(model, activation_scales=len(acts))
    _collect_layers(graph, weights, acts, result)
    return result


def _replace_graph(graph, nodes: list, new_inits: list) -> None:
    """In place: ``graph`` gets ``nodes``, the new initializers, and only the initializers still read."""
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept_inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    del graph.value_info[:]  # shapes of removed values; MNN infers its own


def _dequantize_constant(node, array) -> tuple[np.ndarray, list[float], int | None]:
    """(q - zp) * scale of a constant DequantizeLinear, computed in float32 as torch's
    dequantize_per_channel does; its scales (one per channel, or one) and the channel axis (None:
    per tensor)."""
    q = array(node.input[0]).astype(np.float32)
    scale = array(node.input[1]).astype(np.float32)
    zp = array(node.input[2]).astype(np.float32) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale)
    if scale.size == 1:
        return ((q - zp.reshape(())) * scale.reshape(())).astype(np.float32), [float(scale.reshape(()))], None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % q.ndim
    shape = [1] * q.ndim
    shape[axis] = -1
    w = ((q - zp.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
    return w, [float(s) for s in scale.reshape(-1)], axis


def _fold_weight_transposes(nodes: list, weights: dict, new_inits: list) -> list:
    """Replace every ``Transpose`` of a dequantized weight by the transposed initializer (a weight
    in its own right, its channel axis moved with it); -> the nodes left.

    Why: torch.onnx writes ``nn.Linear`` on a 3-D input as ``MatMul(x, Transpose(W))``; with the
    Transpose folded, the MatMul's weight is a constant of shape (in, out) whose per-channel scales
    lie along its last axis, the output channels, and MNN's converter turns it into a convolution
    (ConvertMatMulToConv2D.cpp requires a constant weight)."""
    from onnx import numpy_helper

    tensors = {t.name: t for t in new_inits}
    keep = []
    for node in nodes:
        if node.op_type != "Transpose" or node.input[0] not in weights or node.input[0] not in tensors:
            keep.append(node)
            continue
        scales, shape, axis = weights[node.input[0]]
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None) or list(range(len(shape)))[::-1]
        w = np.ascontiguousarray(numpy_helper.to_array(tensors[node.input[0]]).transpose(perm))
        tensors[node.output[0]] = numpy_helper.from_array(w, node.output[0])
        new_inits.append(tensors[node.output[0]])
        weights[node.output[0]] = (scales, w.shape, None if axis is None else perm.index(axis))
    return keep


def _activation_qparams(node, array) -> tuple[float, int]:
    """(scale, zero point in the int8 domain) of a per-tensor QuantizeLinear."""
    scale = array(node.input[1])
    if scale.size != 1:
        raise InternalError(f"QuantizeLinear {node.name!r} has {scale.size} scales: activations are per tensor")
    if len(node.input) < 3 or not node.input[2]:
        return float(scale.reshape(())), 0
    zp = array(node.input[2])
    offset = 128 if zp.dtype == np.uint8 else 0  # uint8 activations: the same grid shifted into int8
    return float(scale.reshape(())), int(zp.reshape(())) - offset


def _collect_layers(graph, weights: dict, acts: dict, result: FloatGraph) -> None:
    """One Int8Layer per conv/linear whose weight, input and output are quantized; the others are
    listed in ``result.skipped`` (MNN keeps them float)."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    consts = {i.name: tuple(i.dims) for i in graph.initializer}
    for node in graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        scales, shape, axis = weights[node.input[1]]
        out, src = _layer_output(node, consumers, acts, consts, shape), node.input[0]
        if src not in acts or out not in acts or not _channels_match(node, shape, axis):
            result.skipped.append(node.name or out)
            continue
        (in_scale, in_zp), (out_scale, out_zp) = acts[src], acts[out]
        if len(scales) == 1:  # per tensor: MNN takes one scale per output channel
            scales = scales * _output_channels(node, shape)
        result.layers.append(Int8Layer(node.name, src, out, in_scale, in_zp, scales, out_scale, out_zp))


def _layer_output(node, consumers: dict, acts: dict, consts: dict, shape) -> str:
    """The tensor whose quantizer gives the layer's output scale: the op's own output, or what MNN
    fuses into the op's convolution under a name the params can address (FullQuantAndCoding.cpp
    finds a layer by its conv's output tensor, ``<name>`` or ``<name>__matmul_converted``):
    - a Conv's following ReLU/Clip (the fused conv writes the activation's output);
    - a MatMul's bias ``Add`` of a constant (ConvertMatMulToConv2D.cpp, "FuseMatMulBias": MatMul +
      Add(const, size = output channels) becomes one MatMul with a bias, then one convolution whose
      output is ``<Add output>__matmul_converted``).
    Not a ReLU/Clip after a Gemm or MatMul: MNN moves it before the Reshape that follows the
    linear's convolution and fuses it there, and the fused conv's output gets a generated name
    (``ConvertTensor12``; measured: such layers stayed float), so the layer is left float."""
    out = node.output[0]
    users = consumers.get(out, [])
    if out in acts or len(users) != 1:
        return out
    user = users[0]
    if user.op_type in _FUSED_ACTIVATIONS and node.op_type == "Conv":
        return user.output[0]
    if node.op_type == "MatMul" and user.op_type == "Add" and len(user.input) == 2:
        bias = user.input[1] if user.input[0] == out else user.input[0]
        dims = consts.get(bias)
        channels = _output_channels(node, shape)
        if bias != out and dims is not None and int(np.prod(dims)) == channels and dims[-1:] == (channels,):
            return user.output[0]
    return out


def _channels_match(node, shape, axis) -> bool:
    """Per-channel weight scales must lie along the output channels (MNN's layout), and a MatMul
    weight must be 2-D: MNN turns only a 2-D constant weight into a convolution."""
    if node.op_type == "MatMul" and len(shape) != 2:
        return False
    if axis is None:
        return True
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return axis == (0 if trans_b else len(shape) - 1)
    return axis == (0 if node.op_type == "Conv" else len(shape) - 1)


def _output_channels(node, shape) -> int:
    if node.op_type == "Conv":
        return shape[0]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return shape[0] if trans_b else shape[-1]
    return shape[-1]  # MatMul: x @ W, W is (in, out)


def compression_params(layers: list[Int8Layer]) -> dict:
    """MNN's Compression::Pipeline as JSON (tools/converter/source/compression/MNN_compression.proto),
    read by the converter's ``--compressionParamsFile``; layers are found by their output tensor
    (FullQuantAndCoding.cpp; a Linear that MNN turns into a conv is ``<output>__matmul_converted``)."""
    def act(name, scale, zp):
        return {"name": name, "bits": 8, "scales": [scale], "zeroPoint": zp, "clampMin": -128, "clampMax": 127}

    return {"version": "0.0.0", "algo": [{"type": "QUANTIZE", "quantParams": {"layer": [
        {"opName": layer.node, "input": [act(layer.input, layer.input_scale, layer.input_zero_point)],
         "weight": [{"name": f"{layer.node}.weight", "bits": 8, "scales": layer.weight_scales,
                     "clampMin": -127, "clampMax": 127}],  # edgekit's weights: symmetric, -127..127
         "output": [act(layer.output, layer.output_scale, layer.output_zero_point)]}
        for layer in layers]}}]}
