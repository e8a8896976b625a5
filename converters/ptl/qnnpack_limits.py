"""PyTorch Mobile INT8: the quantized ops qnnpack refuses to create with the calibrated qparams,
found before anything runs (``quant.py`` keeps each one float and quantizes again).

qnnpack checks an operator's parameters when it creates it, at run time, and the .ptl then fails
with an internal assert that names neither the op nor the layer. The limits (PyTorch's vendored
qnnpack, aten/src/ATen/native/quantized/cpu/qnnpack/src/):

- ``add.c`` ``pytorch_qnnp_create_add_nc_q8``: each input's scale over the output's scale must be
  in [2**-14, 2**8) ("failed to create add operator with ... A-to-output scale ratio: scale ratio
  must be in [2**-14, 2**8) range"). ``quantized::add``/``add_relu`` (BinaryOps.cpp ``qadd``) calls
  it only for two quint8 inputs of the same shape (broadcasting takes PyTorch's generic kernel), so
  an add of a residual branch that calibrated to zero (scale 2**-23) is refused;
- ``average-pooling.c`` ``pytorch_qnnp_create_average_pooling2d_nhwc_q8``: a 1x1 pooling window is
  refused ("1x1 pooling is meaningless"); ``avg_pool2d`` (AveragePool2d.cpp) takes qnnpack for a
  quint8 input without ceil_mode, and gives the output the input's qparams, so its scale-ratio limit
  ([2**-8, 2**8)) always holds. ``global-average-pooling.c`` has the same ratio limit, also met
  (adaptive_avg_pool2d and mean keep the input's qparams).

The check reads the calibrated, prepared graph (before convert_fx): each op's input and output
qparams are its observers' (what convert_fx gives the quantized op), its shapes come from one float
run on the example inputs with the observers passed by (so the calibrated ranges stay as they are).
The nodes it names are the prepared graph's, which the keep-float fallback targets one by one.

Measured on this torch (2.13, qnnpack engine; the run-time errors are "failed to create QNNPACK Add
operator" at BinaryOps.cpp:204 and "failed to create QNNPACK Average Pooling operator" at
AveragePool2d.cpp:320): these refuse, while a broadcast add with the same off-limit scales,
avg_pool2d with ceil_mode, adaptive_avg_pool2d and mean of a 1x1 map, and mul, cat, hardswish,
leaky_relu and elu with extreme output scales run.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ADD_RATIO = (2.0 ** -14, 2.0 ** 8)  # add.c: [lo, hi) for each input scale / output scale
_ADDS = {operator.add, torch.add, operator.iadd}
_RELUS = {F.relu, torch.relu, "relu"}
_AVG_POOL_FUNCS = {F.avg_pool2d, torch._C._nn.avg_pool2d}


@dataclass(frozen=True)
class Refusal:
    """A node of the prepared graph qnnpack would refuse once quantized, and why."""

    node: str
    reason: str


def qnnpack_refusals(prepared: torch.fx.GraphModule, example_inputs: tuple) -> list[Refusal]:
    """Every add and average pooling of the calibrated ``prepared`` graph that qnnpack cannot create
    with the qparams its observers give it."""
    shapes = _shapes(prepared, example_inputs)
    out = []
    for node in prepared.graph.nodes:
        why = _add_refused(prepared, node, shapes) or _avg_pool_refused(prepared, node)
        if why:
            out.append(Refusal(node.name, why))
    return out


def _observer(gm, node):
    """The activation observer ``node`` calls, else None."""
    from torch.ao.quantization.observer import ObserverBase

    if isinstance(node, torch.fx.Node) and node.op == "call_module":
        mod = gm.get_submodule(node.target)
        return mod if isinstance(mod, ObserverBase) else None
    return None


def _scale(observer) -> float:
    return float(observer.calculate_qparams()[0].reshape(-1)[0])


def _shapes(prepared, example_inputs: tuple) -> dict:
    """Node -> its output's shape on the example inputs, the observers passed by ({} when the run fails:
    then every add counts as same-shape, i.e. as going to qnnpack's kernel)."""
    shapes = {}

    class _Shapes(torch.fx.Interpreter):
        def run_node(self, n):
            if _observer(prepared, n) is not None:
                value = self.env[n.args[0]] if isinstance(n.args[0], torch.fx.Node) else n.args[0]
            else:
                value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n] = tuple(value.shape)
            return value

    try:
        with torch.no_grad():
            _Shapes(prepared).run(*example_inputs)
    except Exception:  # noqa: BLE001 - shapes only narrow the check; without them it is conservative
        return {}
    return shapes


def _output_observer(gm, node):
    """The observer of ``node``'s quantized output: right after it, or after the ReLU fused into it."""
    users = list(node.users)
    if len(users) != 1:
        return None
    user = users[0]
    if _observer(gm, user) is not None:
        return _observer(gm, user)
    relu = (user.op in ("call_function", "call_method") and user.target in _RELUS) or (
        user.op == "call_module" and isinstance(gm.get_submodule(user.target), nn.ReLU))
    return _observer(gm, next(iter(user.users))) if relu and len(user.users) == 1 else None


def _ratio(a: float, b: float) -> float:
    return float(np.float32(a) / np.float32(b))  # as qnnpack computes it, in float


def _add_refused(gm, node, shapes: dict) -> str | None:
    """An add of two observed tensors of one shape (qnnpack's add kernel) with a scale ratio off limits."""
    if node.op != "call_function" or node.target not in _ADDS or len(node.args) != 2:
        return None
    ins, out = [_observer(gm, a) for a in node.args], _output_observer(gm, node)
    if out is None or any(o is None for o in ins):
        return None  # not quantized (kept float) or not a tensor-tensor add
    sa, sb = (shapes.get(a) for a in node.args)
    if sa is not None and sb is not None and sa != sb:
        return None  # broadcast: PyTorch's generic kernel, no limit
    lo, hi = ADD_RATIO
    for obs in ins:
        r = _ratio(_scale(obs), _scale(out))
        if not lo <= r < hi:
            return (f"qnnpack add: input/output scale ratio {r:.3g} outside [2**-14, 2**8) (input scale "
                    f"{_scale(obs):.3g}, output scale {_scale(out):.3g}; qnnpack add.c)")
    return None


def _avg_pool_refused(gm, node) -> str | None:
    """avg_pool2d with a 1x1 window (module or function) on an observed input, without ceil_mode."""
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.AvgPool2d):
        mod = gm.get_submodule(node.target)
        kernel, ceil = mod.kernel_size, mod.ceil_mode
    elif node.op == "call_function" and node.target in _AVG_POOL_FUNCS:
        kernel = node.kwargs.get("kernel_size", node.args[1] if len(node.args) > 1 else None)
        ceil = node.kwargs.get("ceil_mode", node.args[4] if len(node.args) > 4 else False)
    else:
        return None
    if not node.args or _observer(gm, node.args[0]) is None or ceil or kernel is None:
        return None
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    if kh * kw != 1:
        return None
    return "qnnpack avg_pool2d: a 1x1 pooling window is refused (\"1x1 pooling is meaningless\"; qnnpack average-pooling.c)"
