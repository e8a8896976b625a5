"""Conv/Linear subclasses with a forward of their own, made plain for the FX-based INT8 paths.

Models often subclass ``nn.Conv2d`` to add something around the convolution (TensorFlow "SAME"
padding, then the conv: EfficientNet-Lite, timm's ``Conv2dSame``, ``Conv2dStaticSamePadding``).
torch.fx traces *into* such a module, so the convolution becomes an ``F.conv2d`` call on bare weights:
FX quantization (ptl) then cannot fuse it with its BatchNorm, and ncnn's writer finds no conv module
to match. ``plain_layers(model)`` returns a copy in which each such module is replaced by the
GraphModule of its own forward, where the one ``F.conv1d/F.conv2d/F.linear`` call on its own weight
is a call of a plain ``nn.Conv1d/Conv2d/Linear`` (its child ``CHILD``, which reports leave out of
module names: ``original_name``) holding the same parameters, with the stride,
padding, dilation and groups that call used. What the forward does around it (the padding) stays as
traced. A module whose forward does not trace, or calls its layer other than exactly once, is left
as it is. The result computes what the model computes (tests/quant/test_plain_layers.py).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

_LAYERS = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Linear: F.linear}
CHILD = "_edgekit_plain"  # the plain layer's name inside its wrapper; reports name the wrapper (original_name)
_CONV_ARGS = ("stride", "padding", "dilation", "groups")  # F.conv*(input, weight, bias, stride, padding, dilation, groups)


def plain_layers(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """-> (a copy of ``model`` with its conv/linear subclasses made plain, their module names)."""
    model = copy.deepcopy(model)
    replaced = []
    for name, mod in list(model.named_modules()):
        base = next((b for b in _LAYERS if type(mod) is not b and isinstance(mod, b)), None)
        if not name or base is None or type(mod).forward is base.forward or any(name.startswith(r + ".") for r in replaced):
            continue
        gm = _plain(mod, base)
        if gm is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, gm)
            replaced.append(name)
    return model, replaced


def original_name(name: str) -> str:
    """A module path of the plain model as the user's model names it ("fc._edgekit_plain" -> "fc")."""
    return name.replace(f".{CHILD}", "").removeprefix(f"{CHILD}.").replace(CHILD, "")


def _plain(mod: nn.Module, base: type) -> torch.fx.GraphModule | None:
    try:
        gm = torch.fx.symbolic_trace(mod)
    except Exception:  # a forward FX cannot trace (data-dependent control flow): left as it is
        return None
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is _LAYERS[base]]
    if len(calls) != 1 or not _reads_own(calls[0], 1, "weight") or not _bias_ok(calls[0]):
        return None
    call = calls[0]
    layer = copy.copy(mod)  # shares the Parameters; the base class's forward, none of the subclass's children
    layer.__class__ = base
    layer._modules = {}
    layer._parameters = dict(mod._parameters)
    if base is not nn.Linear:
        values = dict(zip(_CONV_ARGS, call.args[3:]), **{k: v for k, v in call.kwargs.items() if k in _CONV_ARGS})
        if any(isinstance(v, torch.fx.Node) for v in values.values()):
            return None  # computed at run time: not a plain conv
        for key, value in values.items():
            setattr(layer, key, value)
        layer.padding_mode = "zeros"
    gm.add_submodule(CHILD, layer)
    with gm.graph.inserting_before(call):
        new = gm.graph.call_module(CHILD, (call.args[0],))
    call.replace_all_uses_with(new)
    gm.graph.erase_node(call)
    gm.graph.eliminate_dead_code()
    for p in ("weight", "bias"):
        if p in gm._parameters:
            del gm._parameters[p]
    gm.recompile()
    return gm


def _reads_own(node: torch.fx.Node, index: int, attr: str) -> bool:
    arg = node.args[index] if len(node.args) > index else node.kwargs.get(attr)
    return isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target == attr


def _bias_ok(node: torch.fx.Node) -> bool:
    arg = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return arg is None or _reads_own(node, 2, "bias")
