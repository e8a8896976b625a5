"""TFLite 16x8 (``--quant int16x8``): int16 activations, int8 weights, int64 biases.

Facts this is built on (litert-torch 0.10.0 / ai-edge-litert 2.3.0, measured; /tmp findings in the
report of issue 15):
- litert-torch's PT2E lowering is dtype-generic: an int16 ``quantize_per_tensor`` becomes
  ``!quant.uniform<i16:f32, s:0>`` and the LiteRT converter turns dq -> conv/fc -> q into 16x8
  CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with int16 input/output tensors (the file's I/O is
  int16, zero point 0). Its ``PT2EQuantizer`` takes any ``QuantizationConfig``: edgekit's int16 activation
  spec (edgekit.quant.pt2e.activation_spec), litert's own per-channel int8 weight spec (-127..127, the
  same integers as the int8 targets), no bias spec (litert's annotator takes float biases only:
  the converter quantizes them), and fixed qparams for LOGISTIC/SOFTMAX of int16 (scale 1/32768, zero
  point 0, what the 16x8 kernels require).
- The converter writes those biases as **int32**, which the runtime refuses for 16x8:
  "depthwise_conv.cc:177 bias->type != kTfLiteInt64 (INT32 != INT64) ... failed to prepare".
  ``widen_biases`` rewrites them as int64 (the same integers, exact; the flatbuffer rewrite of
  float_io.py). A bias the converter saturated at the int32 limits cannot be recovered: refused.
- XNNPACK has no int16 kernels: the delegate takes none of the 16x8 ops, they run on TFLite's
  builtin kernels (int64 accumulators). Residual ADDs and MEAN stay float behind DEQUANTIZE/QUANTIZE
  exactly as in litert-torch's int8 placement (its quantizer does not annotate them).
"""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from edgekit.errors import UserError

from .float_io import _load, _pack, _schema, _text, _write

SCHEME = "int16x8"
_INT32 = np.iinfo(np.int32)


def quantizer():
    """litert-torch's PT2EQuantizer with the 16x8 config (int16 activations, per-channel int8 weights)."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    from edgekit.quant.pt2e import activation_spec

    act = activation_spec(SCHEME)
    weight = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False).weight
    fixed = FixedQParamsQuantizationSpec(dtype=torch.int16, scale=1 / 32768, zero_point=0, quant_min=-32768,
                                         quant_max=32767, qscheme=torch.per_tensor_symmetric)
    quantizer = PT2EQuantizer().set_global(QuantizationConfig(act, act, weight, None, fixed, False, False))
    quantizer.requantizes_isolated_float = True  # as the int8 TFLiteQuantizer (converters/tflite/quantizer.py)
    return quantizer


def _bias_index(schema, builtin: int, inputs) -> int:
    ops = schema.BuiltinOperator
    k = 3 if builtin == ops.TRANSPOSE_CONV else 2
    return int(inputs[k]) if len(inputs) > k else -1


def widen_biases(src: Path, dst: Path) -> dict:
    """Write ``dst``: ``src`` with the int32 bias of every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED /
    TRANSPOSE_CONV whose input is int16 stored as int64 (what TFLite's 16x8 kernels take). -> counts."""
    src, dst = Path(src), Path(dst)
    raw = src.read_bytes()
    schema = _schema()
    model = _load(schema, raw, src)
    ops = schema.BuiltinOperator
    wanted = {ops.CONV_2D, ops.DEPTHWISE_CONV_2D, ops.FULLY_CONNECTED, ops.TRANSPOSE_CONV}
    widened, ops_16x8, done = 0, 0, set()
    for graph in model.subgraphs:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            if builtin not in wanted or op.inputs is None or len(op.inputs) == 0:
                continue
            data_in = op.inputs[3] if builtin == ops.TRANSPOSE_CONV else op.inputs[0]
            if data_in < 0 or graph.tensors[data_in].type != schema.TensorType.INT16:
                continue
            ops_16x8 += 1
            bi = _bias_index(schema, builtin, op.inputs)
            if bi < 0 or graph.tensors[bi].type != schema.TensorType.INT32 or id(graph.tensors[bi]) in done:
                continue
            tensor = graph.tensors[bi]
            buf = model.buffers[tensor.buffer]
            if buf.data is None or buf.offset > 1:
                raise UserError("E-EXPORT-FAILED", f"16x8 bias {_text(tensor.name)!r} is not stored in the flatbuffer",
                                "export a smaller model with --quant int16x8, or use --quant int8")
            vals = np.frombuffer(np.asarray(buf.data, dtype=np.uint8).tobytes(), dtype="<i4")
            if vals.size and (vals.max() >= _INT32.max or vals.min() <= _INT32.min):
                raise UserError("E-EXPORT-FAILED", f"the TFLite converter saturated the int32 bias {_text(tensor.name)!r} "
                                "of a 16x8 op (bias / (input scale x weight scale) beyond 2^31)",
                                "keep that layer float (--keep-float), or use --quant int8")
            buf.data = np.frombuffer(vals.astype("<i8").tobytes(), dtype=np.uint8)
            tensor.type = schema.TensorType.INT64
            done.add(id(tensor))
            widened += 1
    if ops_16x8 == 0:
        raise UserError("E-EXPORT-FAILED", "the TFLite converter wrote no 16x8 op (no conv/fully-connected op takes an "
                        "int16 tensor)", "the model has no quantizable conv/linear layer: use --quant int8 or fp32")
    _write(dst, _pack(schema, model, raw), stat.S_IMODE(src.stat().st_mode))
    return {"ops_16x8": ops_16x8, "biases_widened": widened}
