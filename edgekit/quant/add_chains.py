"""Residual adds that read another add's result in float: an annotation edit for XNNPACK's placement.

In a chain of residual blocks (MobileNetV2's stages, a transformer's residual stream), the sum of
block k is both the input of block k+1's first layer and the skip input of block k+1's add. XNNPACK's
quantizer rounds that sum to int8 once, for every reader, so the skip path carries int8 noise from
add to add down the whole stage. TFLite's converter computes such a chain of ADDs in float, behind a
DEQUANTIZE, and quantizes only where a layer reads it. Measured on MobileNetV2 (256 held-out crops vs
FP32, ``bench/int8_noise_mobilenet_v2.py``): the XNNPACK placement's reference 83.6% / 19.36 dB, the
same reference with the add-to-add edges float 87.1% / 19.49 dB, as TFLite's.

``float_add_chains(model)`` edits a quantizer's annotation so every add that feeds another add
leaves its result float: its output spec is dropped, each layer reading it keeps its own input spec
(a quantize on that edge, ranged by the calibrator like any other site), and the reading add's input
spec for it is dropped. The producing add then runs in float on its dequantized inputs, in the
reference and in the runtime alike (XNNPACK's fp32 add, onnxruntime's float Add). An add is left
alone where another node shares its output's quantization (a concat's group) or reads it through
the output spec only, since dropping the spec would leave that reader on no grid.
"""
from __future__ import annotations

import torch

_ADDS = ("aten.add.Tensor", "aten.add_.Tensor")


def _is_add(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.op == "call_function" and str(node.target) in _ADDS


def _annotation(node):
    return node.meta.get("quantization_annotation")


def _shared_with(model) -> set:
    """Nodes whose output or input edge some other annotation's SharedQuantizationSpec points to."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    out = set()
    for node in model.graph.nodes:
        ann = _annotation(node)
        if ann is None:
            continue
        for spec in (*ann.input_qspec_map.values(), ann.output_qspec):
            if isinstance(spec, SharedQuantizationSpec):
                edge = spec.edge_or_node
                out.update(edge if isinstance(edge, tuple) else (edge,))
    return out


def _can_float(producer, shared: set) -> bool:
    """Whether ``producer`` (an add with a quantized output) may leave its result float: it feeds
    another add, nobody shares its grid, and every other annotated reader has an input spec of its own."""
    ann = _annotation(producer)
    if ann is None or ann.output_qspec is None or producer in shared:
        return False
    readers = list(producer.users)
    if not any(_is_add(u) and _annotation(u) is not None for u in readers):
        return False
    for user in readers:
        u_ann = _annotation(user)
        if u_ann is not None and not _is_add(user) and u_ann.input_qspec_map.get(producer) is None:
            return False
    return True


def float_add_chains(model: torch.fx.GraphModule) -> int:
    """Leave the result of every add that feeds another add float (see the module doc); -> how many."""
    shared = _shared_with(model)
    producers = [n for n in model.graph.nodes if _is_add(n) and _can_float(n, shared)]
    for producer in producers:
        _annotation(producer).output_qspec = None
        for user in producer.users:
            if _is_add(user) and _annotation(user) is not None:
                _annotation(user).input_qspec_map.pop(producer, None)
    return len(producers)
