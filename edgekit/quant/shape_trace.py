"""torch.fx tracing with the example input's shapes fixed, for models that branch on tensor shapes.

torch.fx's symbolic tracing gives every tensor a Proxy with no value, so a model that reads a shape
to decide something fails before any target sees it: timm MobileViT's ``if new_h != H``, Hugging
Face BERT's ``position_ids[:, :seq_length]``, YOLOS's ``if num_channels != self.num_channels``.
The INT8 paths built on FX (ptl's ``prepare_fx``, ncnn's quantized reference) then had to call such
a model unsupported.

``trace_with_shapes`` runs the model on the example inputs alongside the trace, op by op, so every
Proxy knows its value. A shape, a dimension count, a dtype or a device read from a Proxy is answered
with the real one and enters the graph as a constant; everything else is traced as torch.fx traces
it. What the graph computes is therefore exact for inputs of the example's shapes, which is what
INT8 export with static shapes uses. A branch on tensor *values* (``if mask.all():``) still fails as
in plain torch.fx: specialising on data would make a graph that is wrong for the next input.

``unchanged_by_tracing`` undoes what a model's forward stores on its modules while it is traced: timm
LeViT's and EfficientFormerV2's eval-mode ``attention_bias_cache`` keeps the first trace's Proxy, which
the next trace of the same model would return, a node of the first graph (``Argument 'getitem_4' of
Node 'add_8' does not belong to this Graph``).
"""
from __future__ import annotations

import contextlib
import copy
import inspect

import torch
from torch import fx

# read from the value, never traced: what a tensor is, not what it holds
_FACTS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "is_quantized", "is_sparse", "layout"})
_FACT_METHODS = frozenset({"size", "dim", "numel", "nelement", "element_size", "is_floating_point",
                           "is_complex", "get_device"})
_NO_VALUE = object()


def _untraced():
    """While the real values are computed, torch.fx's patches of ``Module.__call__`` and
    ``Module.__getattr__`` (which turn module calls and parameters into Proxies) are lifted."""
    revert = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", None)  # private: torch 2.13
    return revert() if revert is not None else contextlib.nullcontext()


@contextlib.contextmanager
def unchanged_by_tracing(model: torch.nn.Module):
    """Every module of ``model`` has, after the block, the attributes it had before (the same objects;
    a dict, list or set attribute with its former items): a forward traced by torch.fx runs the
    model's Python code, which may store Proxies on the modules (a cache filled in eval mode), and the
    next trace of the model would read them. A GraphModule built from the trace inside the block keeps
    what it copied (buffers, leaf modules)."""
    saved = []
    for module in model.modules():
        attrs = dict(module.__dict__)
        items = {k: copy.copy(v) for k, v in attrs.items() if type(v) in (dict, list, set)}
        saved.append((module, attrs, items))
    try:
        yield model
    finally:
        for module, attrs, items in saved:
            state = module.__dict__
            for k in [k for k in state if k not in attrs]:
                del state[k]
            for k, v in attrs.items():
                state[k] = v
                if k in items:  # the same container, with its former items
                    v.clear()
                    if isinstance(v, list):
                        v.extend(items[k])
                    else:
                        v.update(items[k])


class _ShapedProxy(fx.Proxy):
    """A Proxy that answers questions about its tensor's shape with the traced example's."""

    def _example(self):
        return self.tracer.example_values.get(self.node, _NO_VALUE)

    def __getattr__(self, k: str):
        value = self._example()
        if isinstance(value, torch.Tensor) and (k in _FACTS or k in _FACT_METHODS):
            return getattr(value, k)
        return super().__getattr__(k)

    def __len__(self) -> int:
        value = self._example()
        if isinstance(value, (torch.Tensor, tuple, list)):
            return len(value)
        return super().__len__()

    def __iter__(self):
        value = self._example()
        if isinstance(value, (torch.Tensor, tuple, list)):
            return iter([self[i] for i in range(len(value))])
        return self.tracer.iter(self)


class _ShapeMixin:
    """Mixed into a torch.fx Tracer (torch.fx's own, or prepare_fx's QuantizationTracer, so the
    leaf modules and module names are the ones that tracer gives)."""

    def _start(self, root: torch.nn.Module, example_inputs: tuple) -> None:
        self.example_values: dict[fx.Node, object] = {}
        self._inputs = {}
        for i, p in enumerate(inspect.signature(root.forward).parameters.values()):
            if p.kind is inspect.Parameter.VAR_POSITIONAL:  # torch.fx names its placeholder "*args"
                self._inputs["*" + p.name] = tuple(example_inputs[i:])
                break
            if i < len(example_inputs):
                self._inputs[p.name] = example_inputs[i]

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        value = self._evaluate(kind, target, args, kwargs)
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind != "output":
            self.example_values[proxy.node] = value
        return proxy

    def _evaluate(self, kind, target, args, kwargs):
        def real(a):
            return self.example_values[a.node] if isinstance(a, fx.Proxy) else a

        args, kwargs = fx.node.map_aggregate(args, real), fx.node.map_aggregate(kwargs, real)
        with torch.no_grad(), _untraced():
            if kind == "placeholder":
                return self._inputs.get(target, args[0] if args else None)
            if kind == "get_attr":
                value = self.root
                for part in target.split("."):
                    value = getattr(value, part)
                return value
            if kind == "call_module":
                return self.root.get_submodule(target)(*args, **kwargs)
            if kind == "call_function":
                return target(*args, **kwargs)
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
        return None


def trace_with_shapes(model: torch.nn.Module, example_inputs: tuple, tracer_class=fx.Tracer,
                      **tracer_kwargs) -> fx.GraphModule:
    """``model`` traced by ``tracer_class`` with every shape read fixed to ``example_inputs``' ->
    GraphModule (same module paths). Raises what torch.fx raises for a branch on tensor values. The
    model is left as it was (unchanged_by_tracing)."""
    tracer = type(f"Shaped{tracer_class.__name__}", (_ShapeMixin, tracer_class), {})(**tracer_kwargs)
    tracer._start(model, tuple(example_inputs))
    with unchanged_by_tracing(model):
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
