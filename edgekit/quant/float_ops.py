"""Which compute ops a target's PT2E quantizer left float, for the report.

A PT2E quantizer annotates the ops it has an int8 pattern for; every other op runs in float between
a dequantize and a quantize, in the quantized reference and in the file. That is normal mixed
precision, but the user must see it: ``unannotated_ops`` counts, after the quantizer annotated the
graph and before edgekit's --keep-float strips anything, the float compute ops it left alone (layout
ops such as view or permute, integer index math and quantize/dequantize are not compute), and
``float_ops_note`` says it in one line. The runtime may still run some of them on an integer kernel
of its own (onnxruntime's QLinearSoftmax, TFLite's int8 resize): the per-layer views name the kernel
where they can.
"""
from __future__ import annotations

from collections import Counter

_NOT_COMPUTE = {
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "flatten", "squeeze", "unsqueeze", "expand",
    "expand_as", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "contiguous", "clone", "dropout",
    "alias", "detach", "size", "sym_size", "sym_numel", "to", "_to_copy", "type_as", "arange", "zeros", "ones", "full",
    "zeros_like", "ones_like", "full_like", "empty", "scalar_tensor", "lift_fresh_copy", "_assert_tensor_metadata",
    "_assert_scalar", "sym_constrain_range_for_size", "getitem", "identity", "copy", "index", "index_select"}


def op_name(target) -> str:
    """aten.conv2d.default -> conv2d; operator.getitem -> getitem."""
    name = getattr(target, "__name__", None) or str(target)
    parts = str(target).split(".")
    return parts[1] if len(parts) >= 2 and parts[0] == "aten" else name.split(".")[0]


def unannotated_ops(gm) -> Counter:
    """Float compute ops of ``gm`` (an annotated, not yet prepared graph) with no quantization annotation."""
    out: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or "quantization_annotation" in node.meta:
            continue
        name = op_name(node.target)
        if name in _NOT_COMPUTE or name.startswith("_assert") or "quantize" in name:
            continue
        val = node.meta.get("val")
        if getattr(val, "is_floating_point", None) is None or not val.is_floating_point():
            continue  # integer index math, shapes, tuples of outputs
        out[name] += 1
    return out


def float_ops_note(ops: Counter, limit: int = 12) -> str | None:
    """One report line: the ops the quantizer left float, most frequent first."""
    if not ops:
        return None
    items = ops.most_common()
    shown = ", ".join(f"{name} x{n}" for name, n in items[:limit])
    more = f", and {len(items) - limit} more op types" if len(items) > limit else ""
    return (f"float in the INT8 file (the target's quantizer did not quantize them: it has no int8 pattern for "
            f"them or did not match one; each runs in float between a dequantize and a quantize): {shown}{more}")
