"""PyTorch Mobile INT8: FX static PTQ for the qnnpack engine with edgekit's calibrated ranges, and
the quantized reference: a float simulation built from the converted module's own qparams.

``quantize(model, example_inputs, samples, recipe) -> PtlQuantized``:
1. copy the model; with ``recipe.fuse_relu6`` each ReLU6 that follows a conv/BatchNorm in a
   Sequential becomes a ReLU marked with a cap of 6: FX fuses it into the conv (ConvReLU2d) and the
   conv's output range is capped at 6, which is ReLU6 after quantization. This also avoids the
   torch 2.13 qnnpack bug (quantized hardtanh/ReLU6/clamp on a channels_last quint8 tensor returns
   NHWC data labelled NCHW; qnnpack convolutions return channels_last tensors). A ReLU6 left over
   (elsewhere, or with fuse_relu6 off) runs on a contiguous copy of its input, which the kernel
   handles correctly;
2. ``prepare_fx`` with the qnnpack backend config: weights int8 symmetric per output channel
   (-127..127, the recipe's scheme), activations quint8 per tensor; layers the recipe keeps float
   get no qconfig;
3. every activation observer is replaced by an edgekit site (two passes, 1 thread: min/max, then
   histogram, ``TensorStatsCollector``); the recipe's calibrator turns each site's statistics into
   a range, and the observer becomes a MinMaxObserver holding exactly that range (PyTorch does not
   re-calibrate): quint8 scale = (hi - lo) / 255, zero point = the int8 one + 128, the same grid as
   ``edgekit.quant.qparams``;
4. ``convert_fx``: the quantized module (what the .ptl runs, on qnnpack kernels);
5. ``simulate``: the independent reference. Each quantized op becomes its float op followed by
   fake-quantization with the scale and zero point read from the converted module itself (weights
   are the dequantized int8 weights), so the reference shares the artifact's numbers but none of
   its integer kernels.
"""
from __future__ import annotations

import copy
import operator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UnsupportedOpError
from edgekit.quant.calibrators import TensorStatsCollector, get as get_calibrator
from edgekit.quant.probe import RangeProbe
from edgekit.quant.recipe import WEIGHT_SCALE_FLOOR, QuantRecipe, keep_float_modules

QMIN, QMAX = 0, 255  # quint8 activations (qnnpack)
_CAP = "_edgekit_cap"  # attribute on a ReLU that replaced a ReLU6: its output range is capped here


@dataclass
class PtlQuantized:
    module: torch.fx.GraphModule  # convert_fx output: quantized ops, qnnpack packed weights
    simulation: torch.fx.GraphModule  # float simulation with the same qparams (the reference)
    ranges: dict[str, tuple[float, float]]  # observer -> calibrated (lo, hi)
    output_scales: list[float | None]
    input_qparams: list[tuple[float, int] | None]
    kept_float: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@contextmanager
def qnnpack_engine():
    """Quantized engine qnnpack for the duration (weights are packed for the engine active at convert)."""
    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = "qnnpack"
    try:
        yield
    finally:
        torch.backends.quantized.engine = old


class ContiguousReLU6(nn.Module):
    """ReLU6 on a contiguous copy: the qnnpack hardtanh kernel is wrong on channels_last input."""

    def forward(self, x):
        return F.hardtanh(x.contiguous(), 0.0, 6.0)


def _is_relu6(m: nn.Module) -> bool:
    return type(m) is nn.ReLU6 or (type(m) is nn.Hardtanh and m.min_val == 0.0 and m.max_val == 6.0)


def _drop_sequential_identities(model: nn.Module) -> None:
    """In place: remove nn.Identity children of every nn.Sequential (a BatchNorm folded away by learned
    rounding leaves one between a conv and its ReLU6, which would stop FX fusing conv+ReLU). The other
    children keep their names ("features.0.0", "features.0.2"), so --keep-float names still match."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for name in [n for n, c in seq._modules.items() if isinstance(c, nn.Identity)]:
            del seq._modules[name]


def rewrite_relu6(model: nn.Module, fuse: bool) -> tuple[int, int]:
    """In place: ReLU6 after a Conv2d/BatchNorm2d in a Sequential -> capped ReLU (when ``fuse``);
    every other ReLU6 -> ContiguousReLU6. Returns (fused, made contiguous)."""
    fused = contiguous = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for k, (name, child) in enumerate(children):
            if not _is_relu6(child):
                continue
            prev = children[k - 1][1] if k > 0 and isinstance(parent, nn.Sequential) else None
            if fuse and isinstance(prev, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                relu = nn.ReLU()
                setattr(relu, _CAP, 6.0)
                setattr(parent, name, relu)
                fused += 1
            else:
                setattr(parent, name, ContiguousReLU6())
                contiguous += 1
    return fused, contiguous


def qconfig():
    """The recipe's scheme for qnnpack: per-channel symmetric int8 weights, per-tensor quint8 activations."""
    from torch.ao.quantization import QConfig
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    return QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8, quant_min=QMIN, quant_max=QMAX),
                   weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                             quant_min=-127, quant_max=127, eps=WEIGHT_SCALE_FLOOR))


def _observer_groups(prepared) -> dict[int, list[str]]:
    """id(observer) -> the top-level names that refer to it (FX shares one observer between an op and
    the ops that keep its qparams, e.g. ReLU6, pooling, flatten)."""
    from torch.ao.quantization.observer import ObserverBase

    groups: dict[int, list[str]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and isinstance(prepared.get_submodule(node.target), ObserverBase):
            groups.setdefault(id(prepared.get_submodule(node.target)), []).append(node.target)
    return groups


def _caps(prepared, groups) -> dict[int, float]:
    """Observer groups that observe a capped ReLU's output (directly or fused into a conv)."""
    names = {n: gid for gid, ns in groups.items() for n in ns}
    caps = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target in names:
            src = node.args[0]
            if isinstance(src, torch.fx.Node) and src.op == "call_module":
                mod = prepared.get_submodule(src.target)
                cap = [getattr(m, _CAP) for m in mod.modules() if hasattr(m, _CAP)]
                if cap:
                    caps[names[node.target]] = min(cap)
    return caps




def _output_groups(prepared, groups) -> set[int]:
    """Observer groups whose tensor is a model output (recipe.minmax_output: never clipped)."""
    names = {n: gid for gid, ns in groups.items() for n in ns}
    return {names[n.target] for n in prepared.graph.nodes
            if n.op == "call_module" and n.target in names and any(u.op == "output" for u in n.users)}


def _run(module, samples) -> None:
    with torch.no_grad():
        for s in samples:
            module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in s])


def calibrate(prepared, samples, recipe: QuantRecipe) -> dict[str, tuple[float, float]]:
    """Edgekit's two-pass calibration through every activation observer; each becomes a fixed range."""
    from torch.ao.quantization.observer import MinMaxObserver

    groups = _observer_groups(prepared)
    caps = _caps(prepared, groups)
    collector = TensorStatsCollector(recipe.bins)
    originals = {}
    fixed = {gid for gid, names in groups.items()
             if getattr(prepared.get_submodule(names[0]), "qscheme", None) not in (torch.per_tensor_affine, torch.per_tensor_symmetric)
             or "FixedQParams" in type(prepared.get_submodule(names[0])).__name__}
    groups = {gid: names for gid, names in groups.items() if gid not in fixed}  # fixed-qparams ops keep PyTorch's
    for gid, names in groups.items():
        originals[gid] = prepared.get_submodule(names[0])
        site = RangeProbe(names[0], collector, caps.get(gid))
        for n in names:
            setattr(prepared, n, site)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _run(prepared, samples)
        collector.next_phase()
        _run(prepared, samples)
    finally:
        torch.set_num_threads(n_threads)
    stats = collector.stats()
    calibrator = get_calibrator(recipe.calibrator)
    outputs = _output_groups(prepared, groups) if recipe.minmax_output else set()
    ranges = {}
    for gid, names in groups.items():
        s = stats.get(names[0])
        fn = get_calibrator("minmax") if gid in outputs else calibrator
        lo, hi = fn(s, recipe) if s is not None else (0.0, 1.0)
        if gid in caps:
            hi = min(hi, caps[gid])
        old = originals[gid]
        obs = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min, quant_max=old.quant_max)
        obs.min_val, obs.max_val = torch.tensor(float(lo)), torch.tensor(float(hi))
        for n in names:
            setattr(prepared, n, obs)
        ranges[names[0]] = (float(lo), float(hi))
    return ranges


def prepare(model: nn.Module, example_inputs: tuple, recipe: QuantRecipe, float_ops: tuple = ()):
    """-> (prepared FX module with PyTorch's observers, kept-float matches, notes). ``float_ops``:
    functions or module names kept float because their quantized kernel has no simulation."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = copy.deepcopy(model).eval()
    _drop_sequential_identities(model)
    fused, contiguous = rewrite_relu6(model, recipe.fuse_relu6)
    model.eval()  # the new modules too (FX fusion wants conv, bn and relu in one mode)
    notes = []
    if fused:
        notes.append(f"{fused} conv+ReLU6 fused (ReLU with the output range capped at 6)")
    if contiguous:
        notes.append(f"{contiguous} ReLU6 run on a contiguous copy (qnnpack channels_last hardtanh bug)")
    matched = keep_float_modules(model, recipe)
    mapping = QConfigMapping().set_global(qconfig())
    for name in matched:
        mapping.set_module_name(name, None)
    for op in float_ops:
        if isinstance(op, str):
            mapping.set_module_name(op, None)
        else:
            mapping.set_object_type(op, None)
    prepared = prepare_fx(model, mapping, tuple(example_inputs), backend_config=get_qnnpack_backend_config())
    return prepared, matched, notes


def quantize(model: nn.Module, example_inputs: tuple, samples, recipe: QuantRecipe) -> PtlQuantized:
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx

    from edgekit.quant.adaround import describe, round_weights

    samples = tuple(samples)[: recipe.max_samples]
    model, learned = round_weights(model, example_inputs, samples, recipe)  # unchanged for rounding="nearest"
    float_ops: list = []  # ops whose quantized kernel edgekit cannot simulate: kept float, said in the notes
    while True:
        with qnnpack_engine():
            prepared, matched, notes = prepare(model, example_inputs, recipe, tuple(float_ops))
            ranges = calibrate(prepared, samples, recipe)
            converted = convert_fx(prepared, backend_config=get_qnnpack_backend_config())
        try:
            sim, out_qp, in_qp = simulate(converted)
            break
        except UnsupportedOpError as gap:
            op = _float_op(prepared, gap.node)
            if op is None or op in float_ops or len(float_ops) >= MAX_FLOAT_FALLBACKS:
                raise
            float_ops.append(op)
    kept = dict(matched)
    for op in float_ops:
        label = op if isinstance(op, str) else getattr(op, "__name__", str(op))
        kept[label] = "auto"
        notes.append(f"{label} kept in float automatically: edgekit has no simulation of qnnpack's quantized "
                     f"kernel for it, so its INT8 output could not be verified (mixed precision)")
    if learned:
        notes.insert(0, describe(learned))
    return PtlQuantized(converted, sim, ranges, [q[0] if q else None for q in out_qp], in_qp, kept, notes)


MAX_FLOAT_FALLBACKS = 16


def _float_op(prepared, node_name):
    """What to keep float for the converted graph's node ``node_name``: its float function (for a
    functional op: ``F.hardswish``) or its module path (for a module), read from the prepared graph,
    whose node names the converted graph keeps."""
    for node in prepared.graph.nodes:
        if node.name == node_name or (node.op == "call_module" and node.target == node_name):
            if node.op == "call_module":  # by type: every instance (e.g. each SE block's gate) at once
                return type(prepared.get_submodule(node.target))
            return node.target if node.op == "call_function" else None
    return None


# ---- the float simulation ------------------------------------------------------------------------

def fake_quant(x, scale: float, zero_point: int):
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, QMIN, QMAX)


class SimLinear(nn.Module):
    """A quantized Conv2d/Linear (optionally with fused ReLU) in float: dequantized int8 weights,
    float bias, output fake-quantized to the module's own scale and zero point."""

    def __init__(self, qmod, relu: bool):
        super().__init__()
        self.register_buffer("weight", qmod.weight().dequantize())
        bias = qmod.bias()
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.conv = qmod.weight().dim() == 4
        if self.conv:
            self.stride, self.padding, self.dilation, self.groups = qmod.stride, qmod.padding, qmod.dilation, qmod.groups
        self.relu, self.scale, self.zero_point = relu, float(qmod.scale), int(qmod.zero_point)

    def forward(self, x):
        if self.conv:
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.relu:
            y = F.relu(y)
        return fake_quant(y, self.scale, self.zero_point)


class SimQActivation(nn.Module):
    """A quantized elementwise activation module (Hardswish, LeakyReLU, ELU) in float: its float op,
    then fake-quant to the module's own scale and zero point. (Quantized LayerNorm/GroupNorm/
    InstanceNorm modules are not simulated: their .ptl failed the export's trace check on an
    attention block, measured; they are reported unsupported, naming the layer.)"""

    KINDS = ("Hardswish", "LeakyReLU", "ELU")

    def __init__(self, qmod):
        super().__init__()
        self.kind, self.scale, self.zero_point = type(qmod).__name__, float(qmod.scale), int(qmod.zero_point)
        self.negative_slope = float(getattr(qmod, "negative_slope", 0.01))
        self.alpha = float(getattr(qmod, "alpha", 1.0))

    def forward(self, x):
        if self.kind == "Hardswish":
            y = F.hardswish(x)
        elif self.kind == "LeakyReLU":
            y = F.leaky_relu(x, self.negative_slope)
        else:
            y = F.elu(x, self.alpha)
        return fake_quant(y, self.scale, self.zero_point)


def _sim_add(a, b, scale, zp):
    return fake_quant(a + b, scale, zp)


def _sim_add_relu(a, b, scale, zp):
    return fake_quant(F.relu(a + b), scale, zp)


def _sim_mul(a, b, scale, zp):
    return fake_quant(a * b, scale, zp)


def _dequantized(x):
    """Marks where the converted graph dequantizes: the simulated value is already float."""
    return x


def _sim_matmul(a, b, scale, zp):
    return fake_quant(torch.matmul(a, b), scale, zp)


# quantized binary ops FX emits -> their simulation
_BINARY = {"quantized.add": _sim_add, "quantized.add_relu": _sim_add_relu, "quantized.mul": _sim_mul,
           "quantized.matmul": _sim_matmul}
# quantized unary ops whose last two arguments are the output's (scale, zero point): float op, then fake-quant
_UNARY = {"quantized.hardswish": lambda x: F.hardswish(x), "quantized.sigmoid": torch.sigmoid,
          "quantized.layer_norm": lambda x, shape, w, b, eps: F.layer_norm(x, shape, w, b, eps),
          "quantized.group_norm": lambda x, groups, w, b, eps: F.group_norm(x, groups, w, b, eps),
          "quantized.instance_norm": lambda x, w, b, eps: F.instance_norm(x, weight=w, bias=b, eps=eps),
          "quantized.leaky_relu": lambda x, slope, inplace: F.leaky_relu(x, slope),
          "quantized.softmax": lambda x, dim: torch.softmax(x, dim)}
# float ops that qnnpack runs on a quantized tensor with FIXED output qparams (quint8): (scale, zero point)
_FIXED_QPARAMS = {F.hardsigmoid: (1.0 / 256, 0), torch.sigmoid: (1.0 / 256, 0), F.sigmoid: (1.0 / 256, 0),
                  torch.tanh: (2.0 / 256, 128), F.tanh: (2.0 / 256, 128)}


_FIXED_QPARAMS_MODULES = {nn.Hardsigmoid: (1.0 / 256, 0), nn.Sigmoid: (1.0 / 256, 0), nn.Tanh: (2.0 / 256, 128)}


def _sim_unary(op: str, x, *rest):
    """``op``: a key of _UNARY (a name, so the generated graph code can hold it)."""
    *args, scale, zp = rest
    return fake_quant(_UNARY[op](x, *args), float(scale), int(zp))
# ops on a quantized tensor that keep its qparams (requantized to them: pooling rounds, clamps cut at grid points)
_SAME_QPARAMS_FUNCS = {F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, torch.flatten, F.relu, F.hardtanh,
                       torch.clamp, torch.mean, torch.nn.functional.relu6, torch.cat, operator.getitem,
                       torch.reshape, torch.transpose, torch.permute, F.pad, F.interpolate, torch.chunk, torch.split,
                       torch.squeeze, torch.unsqueeze, torch.narrow}
# calls on a quantized tensor whose result is not a tensor (shapes, sizes): passed through, not fake-quantized
_NON_TENSOR = {getattr, "size", "dim", "numel"}
_SAME_QPARAMS_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d,
                         nn.Flatten, nn.Identity, nn.Dropout, ContiguousReLU6)
_SHAPE_METHODS = {"contiguous", "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
                  "size", "dim", "mean", "clamp", "relu", "hardtanh"}


def _op_name(target) -> str:
    return str(target).removeprefix("torch.ops.").removesuffix(".default")


def simulate(qgm: torch.fx.GraphModule):
    """-> (float simulation GraphModule, [(scale, zp) of each output or None], [(scale, zp) of each
    input's quantize or None]). Raises UnsupportedOpError on a quantized op it cannot simulate."""
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq

    root = nn.Module()
    g = torch.fx.Graph()
    env: dict = {}
    qp: dict = {}  # simulated node -> (scale, zp) of the quantized tensor it stands for
    consts: dict = {}
    inputs = []

    def arg(a):
        return torch.fx.node.map_arg(a, lambda n: consts[n] if n in consts else env[n])

    def src_qp(node):
        ins = [a for a in node.all_input_nodes if a in env and env[a] in qp]
        return qp[env[ins[0]]] if ins else None

    for node in qgm.graph.nodes:
        if node.op == "placeholder":
            env[node] = g.placeholder(node.target)
            inputs.append(node)
        elif node.op == "get_attr":
            value = qgm
            for part in node.target.split("."):
                value = getattr(value, part)
            consts[node] = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        elif node.op == "call_function" and node.target is torch.quantize_per_tensor:
            x, s, zp, _ = arg(node.args)
            env[node] = g.call_function(fake_quant, (x, float(s), int(zp)))
            qp[env[node]] = (float(s), int(zp))
        elif node.op == "call_function" and _op_name(node.target) in _BINARY:
            a, b, s, zp = arg(node.args)
            env[node] = g.call_function(_BINARY[_op_name(node.target)], (a, b, float(s), int(zp)))
            qp[env[node]] = (float(s), int(zp))
        elif node.op == "call_function" and _op_name(node.target) in _UNARY:
            args = (*arg(node.args), *arg(node.kwargs).values())  # FX passes the output qparams either way
            env[node] = g.call_function(_sim_unary, (_op_name(node.target), *args))
            qp[env[node]] = (float(args[-2]), int(args[-1]))
        elif node.op == "call_module" and type(qgm.get_submodule(node.target)) in _FIXED_QPARAMS_MODULES and src_qp(node) is not None:
            fixed = _FIXED_QPARAMS_MODULES[type(qgm.get_submodule(node.target))]
            _put(root, node.target, copy.deepcopy(qgm.get_submodule(node.target)))
            env[node] = g.call_function(fake_quant, (g.call_module(node.target, arg(node.args), arg(node.kwargs)), *fixed))
            qp[env[node]] = fixed
        elif node.op == "call_function" and node.target in _FIXED_QPARAMS and src_qp(node) is not None:
            fixed = _FIXED_QPARAMS[node.target]
            env[node] = g.call_function(fake_quant, (g.call_function(node.target, arg(node.args), arg(node.kwargs)), *fixed))
            qp[env[node]] = fixed
        elif node.op == "call_module":
            mod = qgm.get_submodule(node.target)
            name = node.target  # the model's own module path: reports and --keep-float suggestions name it
            q_in = src_qp(node)
            if isinstance(mod, (nniq.ConvReLU2d, nniq.LinearReLU, nnq.Conv2d, nnq.Linear)):
                _put(root, name, SimLinear(mod, relu=isinstance(mod, (nniq.ConvReLU2d, nniq.LinearReLU))))
                env[node] = g.call_module(name, arg(node.args), arg(node.kwargs))
                qp[env[node]] = (float(mod.scale), int(mod.zero_point))
            elif q_in is not None and type(mod).__name__ in SimQActivation.KINDS and hasattr(mod, "scale"):
                _put(root, name, SimQActivation(mod))
                env[node] = g.call_module(name, arg(node.args), arg(node.kwargs))
                qp[env[node]] = (float(mod.scale), int(mod.zero_point))
            elif q_in is None or isinstance(mod, _SAME_QPARAMS_MODULES):
                _put(root, name, copy.deepcopy(mod))
                env[node] = g.call_module(name, arg(node.args), arg(node.kwargs))
                if q_in is not None:
                    env[node] = g.call_function(fake_quant, (env[node], *q_in))
                    qp[env[node]] = q_in
            else:
                raise UnsupportedOpError("ptl", f"quantized {type(mod).__name__}", node.target,
                                         "keep this layer in float (--keep-float) or export ptl in fp32")
        elif node.op == "call_method" and node.target == "dequantize":
            env[node] = g.call_function(_dequantized, (arg(node.args)[0],))  # a float value from here on (no qparams)
        elif node.op in ("call_function", "call_method"):
            q_in = src_qp(node)
            known = (node.target in _SAME_QPARAMS_FUNCS or node.target in _NON_TENSOR
                     or (node.op == "call_method" and node.target in _SHAPE_METHODS))
            if q_in is not None and not known:
                raise UnsupportedOpError("ptl", f"quantized {_op_name(node.target)}", node.name,
                                         "keep the layer that computes it in float (--keep-float) or export ptl in fp32")
            make = g.call_function if node.op == "call_function" else g.call_method
            env[node] = make(node.target, arg(node.args), arg(node.kwargs))
            if q_in is not None and node.target not in _NON_TENSOR:
                env[node] = g.call_function(fake_quant, (env[node], *q_in))
                qp[env[node]] = q_in
        elif node.op == "output":
            out = node.args[0]
            flat = out if isinstance(out, (tuple, list)) else (out,)
            out_qp = [_dequantized_qp(n, env, qp) for n in flat]
            g.output(arg(out))
    in_qp = []
    for ph in inputs:
        users = [u for u in ph.users if u.op == "call_function" and u.target is torch.quantize_per_tensor]
        in_qp.append((float(qp[env[users[0]]][0]), int(qp[env[users[0]]][1])) if users else None)
    return torch.fx.GraphModule(root, g, "PtlInt8Simulation"), out_qp, in_qp


def _put(root: nn.Module, dotted: str, mod: nn.Module) -> None:
    """Add ``mod`` under its dotted path ("features.0.2"), creating empty parents on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    root.add_module(leaf, mod)


def _dequantized_qp(node, env, qp):
    """(scale, zp) of the quantized tensor an output was dequantized from, None for a float output."""
    if isinstance(node, torch.fx.Node) and node.op == "call_method" and node.target == "dequantize":
        return qp.get(env[node.args[0]])
    return None
