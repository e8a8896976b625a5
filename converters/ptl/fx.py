"""PyTorch Mobile INT8, the FX graph around ``prepare_fx``/``convert_fx``: what edgekit changes so
that models written for eager PyTorch (timm, transformers) quantize, and the automatic keep-float
fallback (``quant.py`` drives both).

Before tracing: a ``forward(self, *args)`` wrapper gets a fixed number of arguments (torch.fx cannot
unpack ``*args``); a model torch.fx cannot trace is reported ``unsupported`` at the model's own line.
After ``prepare_fx``: every node of a layer kept float gets a ``float_boundary`` after it (else
``convert_fx`` lowers dequantize -> LayerNorm / F.elu -> quantize to the quantized op whatever its
qconfig); observers on values that are not float tensors are dropped (FX observes int64 token ids
and Python numbers computed from shapes). The fallback: an op whose quantized kernel edgekit cannot
simulate is kept float by object type (module class, function, tensor method), then by module path,
read from the prepared graph as it was before ``convert_fx`` rewrote it in place.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch
from torch import nn

from edgekit.errors import UnsupportedOpError


@dataclass(frozen=True)
class FloatOp:
    """One thing the automatic fallback keeps float: every instance of a module type, function or
    tensor method ("type"), one module by its path, with everything it calls ("name"), or one call
    of a function ("node": the n-th call of that function in that module's forward, as FX counts)."""

    kind: str  # "type", "name" or "node"
    key: object  # a module class, a function, a method name ("sigmoid"), a module path, or a _Call
    label: str

    def apply(self, mapping) -> None:
        if self.kind == "name":
            mapping.set_module_name(self.key, None)
        elif self.kind == "node":
            mapping.set_module_name_object_type_order(self.key.scope, self.key.target, self.key.index, None)
        else:
            mapping.set_object_type(self.key, None)


@dataclass(frozen=True)
class _Call:
    """One call_function node of the prepared graph: the module whose forward makes it, the function,
    how many calls of that function the module made before it (QConfigMapping's order), its name."""

    scope: str
    target: object
    index: int
    name: str


@dataclass(frozen=True)
class _Origin:
    """A node of the prepared (float, observed) graph: what the model computed there."""

    op: str
    target: object  # a module class for call_module, else the function or method name
    path: str  # the module path for call_module
    scope: str  # the module whose forward made the node


def graph_origins(prepared) -> dict[str, _Origin]:
    """Node name -> _Origin, read before convert_fx turns F.elu into quantized.elu and nn.LayerNorm
    into its quantized class in the same graph (keeping those float would be a no-op)."""
    attrs = getattr(prepared, "meta", {}).get("_observed_graph_module_attrs")
    scopes = getattr(attrs, "node_name_to_scope", None) or {}
    out = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module":
            out[node.name] = _Origin(node.op, type(prepared.get_submodule(node.target)), node.target, node.target)
        elif node.op in ("call_function", "call_method"):
            out[node.name] = _Origin(node.op, node.target, "", scopes.get(node.name, ("", None))[0])
    return out


def float_op_candidates(origins: dict[str, _Origin], node_name: str) -> list[FloatOp]:
    """What to keep float for the converted graph's node ``node_name`` (a module path for a module),
    widest first: a module by type (every instance, e.g. each SE block's gate, at once), then by
    path; a function (``F.hardswish``) or tensor method ("sigmoid") by object type, then the module
    that calls it by path. A node lowering re-made ("elu_1" for "elu") is found by its stem."""
    by_path = {o.path: o for o in origins.values() if o.path}
    stem = re.sub(r"_\d+$", "", node_name)
    o = by_path.get(node_name) or origins.get(node_name) or origins.get(stem)
    if o is None:
        return []
    if o.op == "call_module":
        return [FloatOp("type", o.target, o.target.__name__), FloatOp("name", o.path, o.path)]
    label = o.target if isinstance(o.target, str) else getattr(o.target, "__name__", str(o.target))
    out = [FloatOp("type", o.target, label if o.op == "call_function" else f"Tensor.{label}")]
    if o.scope:
        out.append(FloatOp("name", o.scope, o.scope))
    return out


def float_op_for_node(origins: dict[str, _Origin], node_name: str) -> FloatOp | None:
    """The narrowest FloatOp for the prepared graph's node ``node_name``: its module by path, or that one
    call of a function (not every call of it, not its whole module); None for a tensor method (FX
    cannot target one call of it) or a node the graph does not have."""
    o = origins.get(node_name)
    if o is not None and o.op == "call_module":
        return FloatOp("name", o.path, o.path)
    if o is None or o.op != "call_function":
        return None
    index = 0
    for name, other in origins.items():
        if name == node_name:
            break
        index += other.op == "call_function" and other.scope == o.scope and other.target is o.target
    label = f"{getattr(o.target, '__name__', str(o.target))} ({node_name}" + (f" in {o.scope})" if o.scope else ")")
    return FloatOp("node", _Call(o.scope, o.target, index, node_name), label)


_FIXED_ARITY = {  # forward(self, *args) with a fixed number of arguments (torch.fx cannot unpack *args)
    1: lambda self, a: self._edgekit_varargs_forward(a),
    2: lambda self, a, b: self._edgekit_varargs_forward(a, b),
    3: lambda self, a, b, c: self._edgekit_varargs_forward(a, b, c),
    4: lambda self, a, b, c, d: self._edgekit_varargs_forward(a, b, c, d),
}


def fixed_arity(model: nn.Module, n: int) -> nn.Module:
    """In place: a model whose forward takes ``*args`` (edgekit's own FlatOutputs wrapper of a model
    returning a dict) gets a forward of ``n`` named arguments, so that torch.fx can trace it; its
    module names are unchanged."""
    params = inspect.signature(type(model).forward).parameters.values()
    if n not in _FIXED_ARITY or not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return model
    cls = type(model)
    model.__class__ = type(cls.__name__, (cls,), {"forward": _FIXED_ARITY[n], "_edgekit_varargs_forward": cls.forward})
    return model


def fx_trace(model: nn.Module, module: bool = False):
    """``model`` traced by prepare_fx's tracer (same leaf modules, same module names) -> its Graph, or
    a GraphModule when ``module``. The model is left as it was: the prepare pipeline traces it several
    times (fusion sites, shape check, folding, traceability, prepare_fx), and a forward that caches on
    its modules in eval mode (timm LeViT's and EfficientFormerV2's ``attention_bias_cache``) would
    otherwise hand the next trace a node of the previous graph (``Argument 'getitem_4' of Node 'add_8'
    does not belong to this Graph``)."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    from edgekit.quant.shape_trace import unchanged_by_tracing

    with unchanged_by_tracing(model):
        tracer = QuantizationTracer([], [])
        graph = tracer.trace(model)
        return torch.fx.GraphModule(tracer.root, graph) if module else graph


def fold_parameter_expressions(model: nn.Module) -> tuple[nn.Module, int]:
    """Evaluate once every expression of parameters and buffers alone (LeViT's and EfficientFormerV2's
    ``attention_biases[:, attention_bias_idxs]``) and store its value as a buffer -> (model, how many).

    prepare_fx's fusion pass loses such a node when an add or mul it feeds is matched as a pattern
    (``KeyError: 'getitem_6'`` inside torch.ao's fuse, on timm levit_128s and efficientformerv2_s0,
    with PyTorch's own prepare_fx too). The value is what eval computes each call; the model is traced
    with prepare_fx's tracer (same leaf modules, same module names) and returned as a GraphModule only
    when something was folded; an untraceable model is returned unchanged for check_traceable to name."""
    try:
        gm = fx_trace(model, module=True)
    except Exception:  # noqa: BLE001 - check_traceable reports it with the model's line
        return model, 0
    values: dict[torch.fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            values[node] = _attr(gm, node.target)
        elif node.op in ("call_function", "call_method") and node.all_input_nodes \
                and all(a in values for a in node.all_input_nodes):
            args = torch.fx.node.map_arg(node.args, lambda a: values[a])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda a: values[a])
            fn = node.target if node.op == "call_function" else getattr(args[0], node.target)
            values[node] = fn(*args, **kwargs) if node.op == "call_function" else fn(*args[1:], **kwargs)
    folded = _inline_literals(gm, values)
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, torch.Tensor) or all(u in values for u in node.users):
            continue
        name = f"_edgekit_folded_{folded}"
        gm.register_buffer(name, value.detach().clone())
        with gm.graph.inserting_before(node):
            node.replace_all_uses_with(gm.graph.get_attr(name))
        folded += 1
    if not folded:
        return model, 0
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval(), folded


_LITERALS = (torch.device, torch.dtype, int, float, bool)


def _inline_literals(gm: torch.fx.GraphModule, values: dict) -> int:
    """In place: a device, dtype or number read from a parameter alone (EdgeNeXt's positional encoding
    reads ``self.token_projection.weight.device`` and ``.dtype``) becomes a literal in the graph. Left
    as a node, it reads the attribute of a quantized conv's ``weight``, which after convert_fx is a
    method: the converted module fails, and its simulation cannot be generated. -> how many."""
    inlined = 0
    for node, value in values.items():
        if node.op == "get_attr" or not isinstance(value, _LITERALS) or all(u in values for u in node.users):
            continue
        for user in list(node.users):
            user.args = torch.fx.node.map_arg(user.args, lambda a, n=node, v=value: v if a is n else a)
            user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a, n=node, v=value: v if a is n else a)
        inlined += 1
    return inlined


def _attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def restride_bilinear_inputs(gm: torch.fx.GraphModule) -> int:
    """In place: the input of every bilinear ``F.interpolate`` is cloned channels_last with fresh strides
    -> how many. PyTorch's quantized upsample_bilinear2d (qnnpack engine, eager and lite interpreter)
    computes wrong values from a channels_last *view* whose batch stride is not C*H*W, which is what a
    transformer decoder's ``x.permute(0, 2, 1).reshape(1, C, H, W)`` of a quantized tensor gives:
    measured 85 steps off on a (1, 16, 7, 7) -> 14x14 resize, 211-240 steps on SegFormer's decoder;
    the same values freshly strided are within 0.5 step. Float resizes are unaffected by the copy."""
    import torch.nn.functional as F

    count = 0
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target is F.interpolate and node.args
                and node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest") == "bilinear"):
            continue
        with gm.graph.inserting_before(node):
            fresh = gm.graph.call_method("clone", (node.args[0],), {"memory_format": torch.channels_last})
        node.args = (fresh, *node.args[1:])
        count += 1
    if count:
        gm.recompile()
    return count


def with_fixed_shapes(model: nn.Module, example_inputs: tuple) -> tuple[nn.Module, bool]:
    """-> (the model, False) when prepare_fx's tracer follows it; else (the model traced by that tracer
    with the example's shapes fixed, True) when that works (timm MobileViT, Hugging Face BERT and
    YOLOS branch on shapes); else (the model, False) for check_traceable to name the line."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    from edgekit.quant.shape_trace import trace_with_shapes

    try:
        fx_trace(model)
        return model, False
    except Exception:  # noqa: BLE001 - symbolic tracing of a user model can raise anything
        pass
    try:
        traced = trace_with_shapes(model, example_inputs, QuantizationTracer,
                                   skipped_module_names=[], skipped_module_classes=[])
    except Exception:  # noqa: BLE001 - check_traceable reports the plain tracer's error, at the model's line
        return model, False
    return traced.train(model.training), True


def check_traceable(model: nn.Module) -> None:
    """Trace ``model`` the way prepare_fx does (its tracer); what torch.fx cannot follow is raised as
    UnsupportedOpError at the model's own line, before prepare_fx (whose other errors stay errors)."""
    try:
        fx_trace(model)
    except (torch.fx.proxy.TraceError, TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise untraceable(exc) from exc


def untraceable(exc: Exception) -> UnsupportedOpError:
    """FX graph mode quantization starts with torch.fx symbolic tracing, which cannot follow Python
    control flow or shape arithmetic on traced values (HF BERT's ``position_ids[:, :seq_length]``,
    a loop over a traced shape): the model is unsupported by ptl INT8, named at the model's own line."""
    import traceback

    frames, inner = [], exc
    while inner is not None and not frames:  # the model's deepest line; else that of the exception it re-raised
        frames = [f for f in traceback.extract_tb(inner.__traceback__) if f.filename and f.filename != __file__
                  and not any(part in f.filename for part in ("/torch/", "/typing_extensions"))]
        inner = inner.__cause__
    where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno} {(frames[-1].line or '').strip()}" \
        if frames else None
    first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]
    return UnsupportedOpError(
        "ptl", f"torch.fx symbolic tracing ({type(exc).__name__}: {first[:160]})", where,
        "ptl INT8 (FX graph mode) needs a model torch.fx can trace; export ptl with --quant dynamic "
        "(Linear weights int8, embeddings float) or in fp32, or use an INT8 target that exports with torch.export")


def float_boundary(x):
    """Identity. Placed after a layer kept float, it stands between that layer and the quantize of
    the next layer's input: convert_fx lowers every dequantize -> LayerNorm (F.elu, ...) -> quantize
    to the quantized op whatever its qconfig, so a LayerNorm the recipe keeps float would otherwise
    run quantized. torch.jit.trace records nothing for it."""
    return x


def _kept(node, scopes: dict, prepared, matched, float_ops) -> bool:
    def under(path: str, prefix: str) -> bool:
        return path == prefix or path.startswith(prefix + ".")

    if node.op == "call_module":
        path, cls = node.target, type(prepared.get_submodule(node.target))
        return any(under(path, m) for m in matched) or any(
            (op.kind == "type" and op.key is cls) or (op.kind == "name" and under(path, op.key)) for op in float_ops)
    if node.op in ("call_function", "call_method"):
        scope = scopes.get(node.name, ("", None))[0]
        return any(scope and under(scope, m) for m in matched) or any(
            (op.kind == "type" and op.key is node.target) or (op.kind == "name" and scope and under(scope, op.key))
            or (op.kind == "node" and op.key.name == node.name) for op in float_ops)
    return False


def guard_float(prepared, matched, float_ops) -> None:
    """In place: a float_boundary after every node of a layer kept float (by the recipe or the fallback)."""
    from torch.ao.quantization.observer import ObserverBase

    attrs = getattr(prepared, "meta", {}).get("_observed_graph_module_attrs")
    scopes = getattr(attrs, "node_name_to_scope", None) or {}
    ops = [op for op in float_ops if isinstance(op, FloatOp)]
    changed = False
    for node in list(prepared.graph.nodes):
        if node.op == "call_module" and isinstance(prepared.get_submodule(node.target), ObserverBase):
            continue
        if not node.users or not _kept(node, scopes, prepared, matched, ops):
            continue
        with prepared.graph.inserting_after(node):
            guard = prepared.graph.call_function(float_boundary, (node,))
        node.replace_all_uses_with(guard, delete_user_cb=lambda user: user is not guard)
        changed = True
    if changed:
        prepared.recompile()


def unobserve_non_float(prepared, example_inputs: tuple) -> int:
    """In place: drop every activation observer whose input, on the example inputs, is not a float
    tensor; -> how many. FX's own test is static and inexact: it observes integer tensors (token ids,
    an attention mask) and Python numbers computed from shapes (an attention scale ``d ** -0.5``,
    since it counts a float argument as a tensor), then the converted module quantizes them
    (``quantize_per_tensor`` of an int64 mask; of a Python float, which only the tracer accepts)."""
    from torch.ao.quantization.observer import ObserverBase

    observers = {n for n in prepared.graph.nodes
                 if n.op == "call_module" and isinstance(prepared.get_submodule(n.target), ObserverBase)}
    not_float = set()

    class _Probe(torch.fx.Interpreter):
        def run_node(self, n):
            if n in observers:
                value = self.env.get(n.args[0]) if isinstance(n.args[0], torch.fx.Node) else n.args[0]
                if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
                    not_float.add(n)
                    return value
            return super().run_node(n)

    with torch.no_grad():
        _Probe(prepared).run(*example_inputs)
    for node in not_float:
        node.replace_all_uses_with(node.args[0])
        prepared.graph.erase_node(node)
    if not_float:
        prepared.recompile()
    return len(not_float)
