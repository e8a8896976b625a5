"""Reading a traced TorchScript module, for the rewrites edgekit makes before pnnx sees it
(layout.py, pnnx_fixes.py)."""
from __future__ import annotations


class NotConstant(Exception):
    """An op argument the trace computes instead of recording as a constant."""


def const(value):
    """The value of a ``prim::Constant`` (or a list of them), else NotConstant."""
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [const(v) for v in node.inputs()]
    raise NotConstant(node.kind())


def shape_of(value) -> list[int] | None:
    """The traced shape of a tensor value, or None (not a tensor, or a shape the trace did not record)."""
    import torch

    if not isinstance(value.type(), torch._C.TensorType):
        return None
    try:
        found = value.type().sizes()
    except RuntimeError:
        return None
    return found if found is not None and all(isinstance(s, int) for s in found) else None


def graphs(traced):
    """(module, its forward graph) for ``traced`` and every submodule that was called. A traced
    submodule has a graph of its own with its traced shapes; pnnx reads them as they are."""
    for module in traced.modules():
        try:
            yield module, module.graph
        except (AttributeError, RuntimeError):  # a submodule never called has no forward
            continue


def attribute(module, owner):
    """What a chain of ``prim::GetAttr`` from the self of ``module``'s graph reads (a submodule, a
    parameter, a buffer), or None."""
    names = []
    while owner.node().kind() == "prim::GetAttr":
        names.append(owner.node().s("name"))
        owner = owner.node().inputsAt(0)
    try:
        for name in reversed(names):
            module = getattr(module, name)
    except AttributeError:
        return None
    return module
