"""INT8 .onnx weights stored as uint8 with zero point 128: the same numbers, on kernels that do not saturate.

onnxruntime's CPU provider turns int8 activations into uint8 (``QDQS8ToU8Transformer``) and runs a
conv or matmul with int8 weights on its u8s8 kernels. On x86 CPUs without VNNI those multiply with
``vpmaddubsw``, which adds two u8 x s8 products into a *saturating* int16: 255 x 127 twice is 64770,
far above 32767. The sum is clipped before it reaches the int32 accumulator, so the integer result is
wrong whenever a pair of adjacent weights is large where the activations are large. Measured (host
AVX2, no VNNI, onnxruntime 1.32): a single QLinearConv with weights of +-127 on uint8 activations
200..255 is 9 output steps off in half of its outputs (exact with weights of +-63); a 12-block
conv/hardswish/LayerNorm model is 54 output steps from its quantized reference with the file as
torch.onnx writes it, 1 step with its weights re-encoded here; with the QDQ fusions disabled
(every op in float) it is exact. ARM CPUs (phones) multiply without that int16 step.

``unsigned_weights`` re-encodes each int8 weight tensor of a DequantizeLinear (zero point 0) as
uint8 ``w + 128`` with zero point 128: DequantizeLinear gives the same floats, the file the same
size, onnxruntime still fuses QLinearConv / QGemm / QLinearMatMul, now on its u8u8 kernels, which
widen to int16 before multiplying (no saturation). The quantized reference is unchanged.
"""
from __future__ import annotations

import numpy as np

# op -> (input index of the int8 weights, of their zero point): static QDQ files, and the dynamic
# quantization's MatMulInteger (its u8 x s8 kernel saturates the same way)
_WEIGHT_AND_ZERO_POINT = {"DequantizeLinear": (0, 2), "MatMulInteger": (1, 3)}
NOTE = ("weights stored as uint8 with zero point 128 (the same values as int8 with zero point 0): onnxruntime's "
        "u8s8 kernels saturate int16 pair sums on x86 CPUs without VNNI, its u8u8 kernels do not")


def unsigned_weights(model) -> int:
    """Re-encode, in ``model`` (an onnx.ModelProto), every int8 initializer of rank >= 2 dequantized
    (or multiplied by MatMulInteger) with an all-zero int8 zero point; -> how many. Each gets new initializer names (an initializer may
    be shared with a node left as it is), and an old initializer no node reads any more is dropped."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    count = 0
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_AND_ZERO_POINT or len(node.input) <= _WEIGHT_AND_ZERO_POINT[node.op_type][1]:
            continue
        at_w, at_zp = _WEIGHT_AND_ZERO_POINT[node.op_type]
        w, zp = inits.get(node.input[at_w]), inits.get(node.input[at_zp])
        if w is None or zp is None:
            continue
        values, zeros = numpy_helper.to_array(w), numpy_helper.to_array(zp)
        if values.dtype != np.int8 or values.ndim < 2 or zeros.dtype != np.int8 or np.any(zeros != 0):
            continue
        count += 1
        names = (f"{node.input[at_w]}__u8_{count}", f"{node.input[at_zp]}__u8_{count}")
        model.graph.initializer.extend([
            numpy_helper.from_array((values.astype(np.int16) + 128).astype(np.uint8), names[0]),
            numpy_helper.from_array(np.full(zeros.shape, 128, np.uint8), names[1])])
        node.input[at_w], node.input[at_zp] = names
    used = {i for node in model.graph.node for i in node.input}
    kept = [t for t in model.graph.initializer if t.name in used or t.name in {o.name for o in model.graph.output}]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return count
