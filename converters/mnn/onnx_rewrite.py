"""Rewrites of edgekit's ONNX graph that MNN's ONNX converter needs to compute what the graph says.

- Exact GELU. MNN 3.6.1 maps the ONNX ``Gelu`` op to its tanh approximation whatever the node's
  ``approximate`` attribute says (tools/converter/source/onnx/UnaryOnnx.cpp): tiny_transformer was
  4e-4 (relative) off torch. ``Gelu(approximate="none")`` is rewritten into its definition
  ``x * (1 + erf(x * 0.70710677)) * 0.5``, which MNN's template fusion turns into its erf GELU
  (``GELU_STANDARD``) when converting with ``--useGeluApproximation 0``: 3e-7 from torch.
- fp16 weights rounded to nearest. MNN's ``--fp16`` converts with half.hpp's default rounding
  (``HALF_ROUND_STYLE -1``: toward zero, 3rd_party/half/half.hpp), not round-to-nearest-even as torch
  and edgekit's fp16 simulation do: tiny_cnn's fp16 file was 1.4e-3 (relative) from the simulation,
  more than from FP32 (5.7e-4). Weights rounded to float16 beforehand are exactly representable, so
  MNN's conversion keeps them: the file then stores the nearest float16 values (the simulation's;
  measured 7e-7 from it).
"""
from __future__ import annotations

import numpy as np


def exact_gelu(model) -> int:
    """Rewrite every ``Gelu(approximate="none")`` of the main graph in place; -> how many."""
    from onnx import helper, numpy_helper

    graph = model.graph
    nodes, count = [], 0
    for node in graph.node:
        approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx") or approx != "none":
            nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        p = f"{y}__mnn_gelu"
        graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{p}_{k}")
                                  for k, v in (("rsqrt2", 0.70710677), ("one", 1.0), ("half", 0.5))])
        # the operand order of MNN's template (FuseTemplateOp.cpp): (erf(x * c) + 1) * x * 0.5
        nodes += [helper.make_node("Mul", [x, f"{p}_rsqrt2"], [f"{p}_a"], name=f"{p}_mul0"),
                  helper.make_node("Erf", [f"{p}_a"], [f"{p}_b"], name=f"{p}_erf"),
                  helper.make_node("Add", [f"{p}_b", f"{p}_one"], [f"{p}_c"], name=f"{p}_add"),
                  helper.make_node("Mul", [f"{p}_c", x], [f"{p}_d"], name=f"{p}_mul1"),
                  helper.make_node("Mul", [f"{p}_d", f"{p}_half"], [y], name=node.name or f"{p}_mul2")]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


_WEIGHT_INPUTS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, "Gather": 0}


def round_weights_fp16(model) -> int:
    """Round the float32 weight initializers (conv/linear weights, embedding tables: what
    edgekit.quant.weight_only simulates for fp16) to the nearest float16, kept as float32; -> how many.
    Biases are left alone (MNN keeps them float32)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    names = {node.input[k] for node in graph.node for op, k in _WEIGHT_INPUTS.items()
             if node.op_type == op and len(node.input) > k and node.input[k] in inits}
    count = 0
    for name in sorted(names):
        a = numpy_helper.to_array(inits[name])
        if a.dtype != np.float32:
            continue
        inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), name))
        count += 1
    return count
