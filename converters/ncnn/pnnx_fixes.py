"""Traced ops that pnnx converts to ncnn wrongly *without an error*, rewritten before pnnx sees them.

Each rewrite computes the same values in torch; it only steers pnnx to a conversion that is exact:

- ``F.normalize``: pnnx fuses ``linalg_vector_norm``, ``clamp_min``, ``expand_as``, ``div`` into ncnn's
  ``Normalize``, which normalizes across channels only: over any other dim (EdgeNeXt's cross-covariance
  attention normalizes q and k over their last dim), or where pnnx does not know the batch axis, the
  numbers are wrong. ``clamp_min(x, eps)`` becomes ``clamp(x, eps, None)``: the pattern is no longer
  fused and each op maps to its exact ncnn layer (Reduction, Clip, BinaryOp).
- ``chunk`` into parts that do not divide the dim (88 channels in 3: 30, 30, 28): pnnx writes a
  ``Slice`` into equal parts, which ncnn cuts as 29, 29, 30. It becomes ``split_with_sizes``.
- ``BatchNorm1d`` (eval) on a 2-D ``(N, C)`` tensor with N > 1 (LeViT's ``bn(x.flatten(0, 1))``): pnnx
  takes N for the batch axis ncnn drops, and ncnn reads past the data (NaN). It becomes its affine form
  ``x.reshape(1, N, C) * scale + shift`` (what ncnn's BatchNorm computes), reshaped back to ``(N, C)``.
- A constant ``F.pad`` that also pads outer dims by zero (MobileBERT's trigram embedding pads
  ``(1, 127, 128)`` with ``(0, 0, 0, 1, 0, 0)``): pnnx reshapes the tensor to 3-D for it while the
  unpadded one stays 2-D, and the ``Concat`` of both reads garbage. The zero pairs are dropped.

The rewrites run on the forward graph of the traced module and of every submodule (not inlined, so
pnnx still sees the modules).
"""
from __future__ import annotations

from .torchscript import NotConstant, attribute, const, graphs, shape_of


def _replace(graph, node, kind: str, inputs) -> None:
    graph.setInsertPoint(node)
    new = graph.create(kind, [v if hasattr(v, "node") else graph.insertConstant(v) for v in inputs])
    graph.insertNode(new)
    new.output().setType(node.output().type())
    node.output().replaceAllUsesWith(new.output())
    graph.setInsertPoint(graph.return_node())  # not the node about to go
    node.destroy()


def unfuse_normalize(graph) -> int:
    nodes = list(graph.findAllNodes("aten::clamp_min"))
    for node in nodes:
        _replace(graph, node, "aten::clamp", [node.inputsAt(0), node.inputsAt(1), None])
    return len(nodes)


def uneven_chunks(graph) -> int:
    done = 0
    for node in list(graph.findAllNodes("aten::chunk")):
        sizes = shape_of(node.inputsAt(0))
        try:
            chunks, dim = const(node.inputsAt(1)), const(node.inputsAt(2))
        except NotConstant:
            continue
        if sizes is None or sizes[dim] % chunks == 0:
            continue
        part = -(-sizes[dim] // chunks)  # torch.chunk: ceil-sized parts, the last one shorter
        parts = [min(part, sizes[dim] - k) for k in range(0, sizes[dim], part)]
        _replace(graph, node, "aten::split_with_sizes", [node.inputsAt(0), parts, dim])
        done += 1
    return done


def batchnorm_rows(module, graph) -> int:
    """BatchNorm on (N, C), N > 1, as its affine form: a call of a BatchNorm1d submodule (pnnx keeps the
    module) or, in a graph that was inlined, the aten::batch_norm itself."""
    done = 0
    for node in [*graph.findAllNodes("prim::CallMethod"), *graph.findAllNodes("aten::batch_norm")]:
        call = node.kind() == "prim::CallMethod"
        if call and node.inputsSize() != 2:
            continue
        x = node.inputsAt(1 if call else 0)
        sizes = shape_of(x)
        if sizes is None or len(sizes) != 2 or sizes[0] == 1:
            continue
        if call:
            sub = attribute(module, node.inputsAt(0))
            norms = list(sub.graph.findAllNodes("aten::batch_norm")) \
                if getattr(sub, "original_name", None) == "BatchNorm1d" else []
            affine = _batchnorm_affine(sub, norms[0]) if len(norms) == 1 else None
        else:
            affine = _batchnorm_affine(module, node)
        if affine is None:
            continue
        n, c = sizes
        typ = x.type()
        graph.setInsertPoint(node)
        y = _op(graph, "aten::reshape", [x, [1, n, c]], typ.with_sizes([1, n, c]))
        y = _op(graph, "aten::mul", [y, graph.insertConstant(affine[0])], typ.with_sizes([1, n, c]))
        y = _op(graph, "aten::add", [y, graph.insertConstant(affine[1]), 1], typ.with_sizes([1, n, c]))
        node.output().replaceAllUsesWith(_op(graph, "aten::reshape", [y, [n, c]], typ.with_sizes([n, c])))
        graph.setInsertPoint(graph.return_node())
        node.destroy()
        done += 1
    return done


def _batchnorm_affine(module, norm):
    """(scale, shift) with batch_norm(x) = x * scale + shift (float32 tensors) for an ``aten::batch_norm``
    node of ``module``'s graph that uses running statistics held by (sub)modules, else None."""
    import torch

    try:
        training, eps = const(norm.inputsAt(5)), const(norm.inputsAt(7))
    except NotConstant:
        return None
    weight, bias, mean, var = (_attribute(module, norm.inputsAt(k)) for k in (1, 2, 3, 4))
    if training or mean is None or var is None:
        return None
    with torch.no_grad():
        scale = torch.rsqrt(var.double() + eps) * (weight.double() if weight is not None else 1.0)
        shift = (bias.double() if bias is not None else 0.0) - mean.double() * scale
    return scale.float(), shift.float()


def _attribute(module, value):
    """The tensor a chain of prim::GetAttr from the graph's self reads, or None."""
    import torch

    if value.node().kind() != "prim::GetAttr":
        return None
    found = attribute(module, value)
    return found if isinstance(found, torch.Tensor) else None


def _op(graph, kind: str, inputs, out_type):
    node = graph.create(kind, [v if hasattr(v, "node") else graph.insertConstant(v) for v in inputs])
    graph.insertNode(node)
    node.output().setType(out_type)
    return node.output()


def trim_pads(graph) -> int:
    done = 0
    for node in [*graph.findAllNodes("aten::pad"), *graph.findAllNodes("aten::constant_pad_nd")]:
        try:
            pad = const(node.inputsAt(1))
            constant = node.kind() == "aten::constant_pad_nd" or const(node.inputsAt(2)) == "constant"
        except NotConstant:
            continue
        keep = len(pad)
        while keep > 2 and pad[keep - 2:keep] == [0, 0]:
            keep -= 2
        if constant and keep < len(pad):
            graph.setInsertPoint(node)
            node.replaceInput(1, graph.insertConstant(pad[:keep]))
            graph.setInsertPoint(graph.return_node())
            done += 1
    return done


def apply(traced) -> list[str]:
    """Apply every rewrite to ``traced`` in place; returns what was rewritten, e.g. ["clamp_min x2"]."""
    counts = {"clamp_min": 0, "chunk": 0, "BatchNorm1d": 0, "pad": 0}
    for module, graph in graphs(traced):
        counts["clamp_min"] += unfuse_normalize(graph)
        counts["chunk"] += uneven_chunks(graph)
        counts["BatchNorm1d"] += batchnorm_rows(module, graph)
        counts["pad"] += trim_pads(graph)
    return [f"{op} x{n}" for op, n in counts.items() if n]
