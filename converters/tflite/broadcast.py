"""Explicit expands that litert-torch cannot lay out, replaced by the broadcast they spell out.

``out = F.relu(value) * context.expand_as(value)`` (timm MobileViTv2's linear attention) exports as
``aten.expand`` to the full NCHW shape feeding ``aten.mul``. litert-torch's layout pass moves the mul
to NHWC but not the expand's target shape, and the converter refuses the op: "tfl.mul: operands
don't have broadcast-compatible shapes" in FP32; in INT8 the file's BROADCAST_TO fails to prepare.
Where every use of the expand is an elementwise add/sub/mul/div (possibly through the quantize /
dequantize pair PT2E puts on it) whose other operand already has the expanded shape, broadcasting
computes exactly the same values, so the expand is dropped. Nothing else is touched.
"""
from __future__ import annotations

import torch

_EXPANDS = ("aten.expand.default", "aten.expand_as.default")
_BINARY = ("aten.mul.Tensor", "aten.add.Tensor", "aten.sub.Tensor", "aten.div.Tensor")
_ELEMENTWISE = ("quantized_decomposed.quantize_per_tensor", "quantized_decomposed.dequantize_per_tensor")


def _name(node) -> str:
    return str(node.target) if node.op == "call_function" else ""


def _shape(node):
    """The node's tensor shape (a quantize/dequantize, which convert_pt2e leaves without one, has
    its input's)."""
    if not isinstance(node, torch.fx.Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(val.shape)
    return _shape(node.args[0]) if _name(node).startswith(_ELEMENTWISE) and node.args else None


def _broadcast_only(node, via, shape) -> bool:
    """Every use of ``via`` (the expand, or an elementwise q/dq of it) is a binary op whose other
    operand has ``shape``: broadcasting the unexpanded value there gives the same result."""
    name = _name(node)
    if name.startswith(_ELEMENTWISE):
        return bool(node.users) and all(_broadcast_only(u, node, shape) for u in node.users)
    if name not in _BINARY or len(node.args) < 2:
        return False
    a, b = node.args[:2]
    other = b if a is via else a
    return other is not via and _shape(other) == shape


def drop_broadcast_expands(gm: torch.fx.GraphModule) -> int:
    """In place: remove each ``aten.expand`` / ``expand_as`` whose uses only broadcast (``_broadcast_only``) -> how many."""
    dropped = 0
    for node in list(gm.graph.nodes):
        if _name(node) not in _EXPANDS or not node.users:
            continue
        shape = _shape(node)
        if shape is not None and all(_broadcast_only(u, node, shape) for u in node.users):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            dropped += 1
    if dropped:
        gm.graph.lint()
        gm.recompile()
    return dropped


def without_broadcast_expands(module, example_inputs: tuple, dynamic_shapes=None):
    """The module as torch.export captures it with those expands dropped, or None when it has none."""
    program = torch.export.export(module, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    gm = program.module()
    return gm if drop_broadcast_expands(gm) else None
