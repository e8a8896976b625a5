"""INT8 .onnx activations stored as uint8 (zero point + 128): the same numbers, and every conv fused.

The PT2E program gives int8 activations (XNNPACK's grid). onnxruntime's x86 CPU provider runs its
integer convolutions on uint8 activations, so its ``QDQS8ToU8Transformer`` rewrites each int8
QuantizeLinear -> DequantizeLinear pair to uint8 first, but not every pair: where a block's output is
read both by the next conv and by a residual Add (which onnxruntime computes in float), the pair stays
int8, the conv writing it and the conv reading it see an int8 tensor on one side and a uint8 one on the
other, and the QDQ fusion leaves both as float Conv between DequantizeLinear and QuantizeLinear.
Measured on MobileNetV2 (onnxruntime 1.32, 1 thread): 10 of 49 int8 convs left float, 32 Transposes
between layouts, INT8 8.5 ms vs FP32 8.7 ms.

``unsigned_activations`` re-encodes every activation QuantizeLinear / DequantizeLinear (the tensor is not
an initializer) with an int8 zero point as uint8 with zero point + 128: each quantized value moves by
128 with its zero point, so DequantizeLinear gives the same floats (onnxruntime with its optimizations
off: bit-identical outputs) and the quantized reference is unchanged. MobileNetV2 then runs all 49 int8
convs as QLinearConv, 2 Transposes, 7.6 ms.
"""
from __future__ import annotations

import numpy as np

NOTE = ("activations stored as uint8 with zero point + 128 (the same values as int8): onnxruntime then fuses "
        "every int8 conv, where it left some float on int8 tensors read by a float Add")


def unsigned_activations(model) -> int:
    """Re-encode, in ``model`` (an onnx.ModelProto), the int8 zero point of every QuantizeLinear and of
    every DequantizeLinear of a computed tensor as uint8 + 128; -> how many nodes. Each gets a zero point
    initializer of its own (one may be shared with a weight's DequantizeLinear), and the recorded type of
    every re-encoded QuantizeLinear output becomes uint8."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    count = 0
    unsigned = set()
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:  # a weight (u8_weights.py)
            continue
        zp = inits.get(node.input[2])
        if zp is None or zp.data_type != onnx.TensorProto.INT8:
            continue
        count += 1
        name = f"{node.input[2]}__u8a_{count}"
        graph.initializer.append(numpy_helper.from_array(
            (numpy_helper.to_array(zp).astype(np.int16) + 128).astype(np.uint8), name))
        node.input[2] = name
        if node.op_type == "QuantizeLinear":
            unsigned.add(node.output[0])
    for info in graph.value_info:
        if info.name in unsigned:
            info.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    used = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return count
