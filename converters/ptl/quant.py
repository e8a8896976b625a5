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
   get no qconfig and a float boundary after them; integer tensors (token ids, masks) and numbers
   computed from shapes are not observed (``fx.py``); a model torch.fx cannot trace is
   ``unsupported``, named at its own source line;
3. every activation observer is replaced by an edgekit site (two passes, 1 thread: min/max, then
   histogram, ``TensorStatsCollector``); the recipe's calibrator turns each site's statistics into
   a range, and the observer becomes a MinMaxObserver holding exactly that range (PyTorch does not
   re-calibrate): quint8 scale = (hi - lo) / 255, zero point = the int8 one + 128, the same grid as
   ``edgekit.quant.qparams``;
4. ``convert_fx``: the quantized module (what the .ptl runs, on qnnpack kernels);
5. ``simulate``: the independent reference. Each quantized op becomes its float op followed by
   fake-quantization with the scale and zero point read from the converted module itself (weights
   are the dequantized int8 weights), so the reference shares the artifact's numbers but none of
   its integer kernels. Modules, functional ops (``F.linear`` on prepacked weights) and tensor
   methods (``x.sigmoid()``, fixed output qparams) are simulated. An op it cannot simulate is kept
   float automatically (by object type, then by module path; ``fx.float_op_candidates``) and
   steps 2-5 are run again, said in the notes.

Between 3 and 4, the calibrated graph is checked against qnnpack's operator limits
(``qnnpack_limits``: an add whose input/output scale ratio is outside [2**-14, 2**8), a 1x1 average
pooling), which qnnpack would otherwise refuse when the .ptl runs. Each such op alone (that call of
``+``, that pooling module) is kept float, steps 2-3 run again, and the note names the op and the
limit; the simulation is built from the module that is exported, so it follows.
"""
from __future__ import annotations

import copy
import inspect
import operator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.errors import UnsupportedOpError, UserError
from edgekit.quant.calibrators import TensorStatsCollector, calibrate_ranges, learned_note
from edgekit.quant.probe import RangeProbe
from edgekit.quant.recipe import WEIGHT_SCALE_FLOOR, QuantRecipe, keep_float_modules

from .fx import (FloatOp, check_traceable, fixed_arity, float_op_candidates, float_op_for_node,
                 fold_parameter_expressions, fx_trace, graph_origins, guard_float, unobserve_non_float,
                 restride_bilinear_inputs, with_fixed_shapes)

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


def _called_after_layers(model: nn.Module) -> set[str]:
    """Paths of the ReLU6 modules that every call of which reads the output of a Conv2d, BatchNorm2d or
    Linear module used nowhere else (``self.act(self.bn(self.conv(x)))`` outside a Sequential, one
    module shared by several such sites, as EfficientNet-Lite's ``_swish``): FX fuses each site."""
    try:
        graph = fx_trace(model)
    except Exception:  # untraceable: check_traceable says why, later
        return set()
    mods = dict(model.named_modules())
    fusable, other = set(), set()
    for n in graph.nodes:
        if n.op != "call_module" or not _is_relu6(mods.get(n.target)):
            continue
        src = n.args[0] if n.args else None
        after = (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1
                 and isinstance(mods.get(src.target), (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))
        (fusable if after else other).add(n.target)
    return fusable - other


def rewrite_relu6(model: nn.Module, fuse: bool) -> tuple[int, int]:
    """In place: ReLU6 after a Conv2d/BatchNorm2d/Linear (in a Sequential, or at every call in the
    traced graph) -> capped ReLU (when ``fuse``); every other ReLU6 -> ContiguousReLU6.
    Returns (fused, made contiguous)."""
    fused = contiguous = 0
    after_layers = _called_after_layers(model) if fuse else set()
    for path, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for k, (name, child) in enumerate(children):
            if not _is_relu6(child):
                continue
            prev = children[k - 1][1] if k > 0 and isinstance(parent, nn.Sequential) else None
            if fuse and (isinstance(prev, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))
                         or (f"{path}.{name}" if path else name) in after_layers):
                relu = nn.ReLU()
                setattr(relu, _CAP, 6.0)
                setattr(parent, name, relu)
                fused += 1
            else:
                setattr(parent, name, ContiguousReLU6())
                contiguous += 1
    return fused, contiguous


def float_activations(model: nn.Module, matched: dict[str, str]) -> dict[str, str]:
    """In place: the ReLU or ReLU6 right after a kept-float conv/linear (its BatchNorm between, in a
    Sequential) stays float with it, so two float neighbours exchange a float tensor (otherwise its
    int8 output adds the very noise keeping the layers float removes; edgekit.quant.pt2e does the same
    for the PT2E targets). A capped ReLU that is float, kept or freed, is a ReLU6 again: no int8 grid
    caps a float tensor. -> {activation path: the keep_float entry of its layer}."""
    freed: dict[str, str] = {}
    for path, parent in list(model.named_modules()):
        children = list(parent.named_children()) if isinstance(parent, nn.Sequential) else []
        for k, (name, child) in enumerate(children):
            entry = matched.get(f"{path}.{name}" if path else name)
            if entry is None or not isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            j = k + 1 + (k + 1 < len(children) and isinstance(children[k + 1][1], (nn.BatchNorm1d, nn.BatchNorm2d)))
            if j < len(children) and type(children[j][1]) in (nn.ReLU, nn.ReLU6, ContiguousReLU6):
                freed[f"{path}.{children[j][0]}" if path else children[j][0]] = entry
    for act in [*freed, *matched]:
        parent_path, _, name = act.rpartition(".")
        parent = model.get_submodule(parent_path)
        if getattr(getattr(parent, name, None), _CAP, None) is not None:
            setattr(parent, name, nn.ReLU6().eval())
    return freed


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


def _layer_reads(prepared, groups) -> dict[str, set[str]]:
    """Group lead -> the user's names of the conv/linear layers (fused or not) whose input the group's one
    tensor is (learned QAT ranges). A group of several names holds other tensors too (a pooling's
    input and output): a layer input's learned range is not applied to it."""
    from edgekit.quant.plain_layers import original_name

    lead = {ns[0]: ns for ns in groups.values() if len(ns) == 1}
    reads: dict[str, set[str]] = {}
    for node in prepared.graph.nodes:
        if node.op != "call_module" or node.target not in lead:
            continue
        for user in node.users:
            if user.op == "call_module" and user.args and user.args[0] is node and _is_layer(prepared.get_submodule(user.target)):
                reads.setdefault(node.target, set()).add(original_name(user.target))
    return reads


def _is_layer(mod) -> bool:
    first = mod[0] if isinstance(mod, nn.Sequential) and len(mod) else mod  # a fused ConvReLU2d / LinearReLU
    return isinstance(first, (nn.Conv1d, nn.Conv2d, nn.Linear))


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
    outputs = _output_groups(prepared, groups) if recipe.minmax_output else set()
    found = calibrate_ranges(collector, lambda: _run(prepared, samples), recipe, [ns[0] for ns in groups.values()],
                             exact={groups[g][0] for g in outputs}, caps={groups[g][0]: c for g, c in caps.items() if g in groups},
                             reads=_layer_reads(prepared, groups))
    ranges = {}
    for gid, names in groups.items():
        lo, hi = found[names[0]]
        old = originals[gid]
        obs = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min, quant_max=old.quant_max)
        obs.min_val, obs.max_val = torch.tensor(float(lo)), torch.tensor(float(hi))
        for n in names:
            setattr(prepared, n, obs)
        ranges[names[0]] = (float(lo), float(hi))
    return ranges


def prepare(model: nn.Module, example_inputs: tuple, recipe: QuantRecipe, float_ops: tuple = ()):
    """-> (prepared FX module with PyTorch's observers, kept-float matches, notes). ``float_ops``:
    FloatOps (or functions / module names) kept float because their quantized kernel has no simulation."""
    from torch.ao.quantization import QConfigMapping
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import prepare_fx

    model = fixed_arity(copy.deepcopy(model).eval(), len(example_inputs))
    _drop_sequential_identities(model)
    fused, contiguous = rewrite_relu6(model, recipe.fuse_relu6)
    model.eval()  # the new modules too (FX fusion wants conv, bn and relu in one mode)
    matched = keep_float_modules(model, recipe)  # before folding: class names still name the user's modules
    float_layers = {**matched, **float_activations(model, matched)}
    model, shaped = with_fixed_shapes(model, tuple(example_inputs))
    model, constants = fold_parameter_expressions(model)
    notes = [f"{constants} expression(s) of parameters alone (e.g. attention-bias gathers) evaluated once "
             "and stored as constants"] if constants else []
    if shaped:
        notes.append("traced with the example input's shapes fixed (the model reads tensor shapes in "
                     "Python control flow or indexing, which torch.fx alone cannot follow)")
    if fused:
        notes.append(f"{fused} conv+ReLU6 fused (ReLU with the output range capped at 6)")
    if contiguous:
        notes.append(f"{contiguous} ReLU6 run on a contiguous copy (qnnpack channels_last hardtanh bug)")
    mapping = QConfigMapping().set_global(qconfig())
    for name in float_layers:
        mapping.set_module_name(name, None)
    for op in float_ops:
        if isinstance(op, FloatOp):
            op.apply(mapping)
        elif isinstance(op, str):
            mapping.set_module_name(op, None)
        else:
            mapping.set_object_type(op, None)
    check_traceable(model)
    prepared = prepare_fx(model, mapping, tuple(example_inputs), backend_config=get_qnnpack_backend_config())
    guard_float(prepared, float_layers, float_ops)
    if unobserve_non_float(prepared, tuple(example_inputs)):
        notes.append("integer tensors (token ids, masks) and numbers computed from shapes stay unquantized")
    return prepared, matched, notes


def quantize(model: nn.Module, example_inputs: tuple, samples, recipe: QuantRecipe) -> PtlQuantized:
    from edgekit.quant.adaround import describe, round_weights
    from edgekit.quant.equalize import equalized
    from edgekit.quant.plain_layers import plain_layers

    if recipe.bias_correction:
        raise UserError("E-TARGET-PRECISION", "ptl's INT8 path does not implement bias correction",
                        "drop --bias-correction for ptl (tflite, executorch, onnx, mnn and openvino implement it)")
    samples = tuple(samples)[: recipe.max_samples]
    model, levers = equalized(model, recipe)
    model, learned = round_weights(model, example_inputs, samples, recipe)  # unchanged for rounding="nearest"
    model, plain = plain_layers(model)  # conv subclasses with a forward of their own: FX would inline them, unfused
    run = _convert_until_runnable(model, example_inputs, samples, recipe)
    notes = run.notes
    kept = dict(run.matched)
    for op in run.float_ops:
        kept[op.label] = "auto"
        notes.append(f"{op.label} kept in float automatically: " + run.refused.get(
            op, f"edgekit cannot simulate its INT8 form ({run.gaps.get(op, 'no simulation of qnnpack kernel')}), "
                "so its INT8 output could not be verified (mixed precision)"))
    if learned:
        notes.insert(0, describe(learned))
    if plain:
        notes.append(f"{len(plain)} conv/linear subclass(es) with a forward of their own (e.g. {plain[0]}) quantized as "
                     "plain layers, so their BatchNorm and activation fuse into them")
    notes[:0] = levers
    in_qp = run.in_qp[: len(example_inputs)]  # optional arguments (attn_mask=None) are not model inputs
    return PtlQuantized(run.converted, run.sim, run.ranges, [q[0] if q else None for q in run.out_qp], in_qp,
                        kept, notes)


MAX_FLOAT_FALLBACKS = 16  # ops kept float because edgekit has no simulation of their quantized kernel
MAX_REFUSED_FALLBACKS = 64  # ops kept float because qnnpack refuses their calibrated qparams


@dataclass
class _Converted:
    """One quantization that simulates and that qnnpack can run, and what was kept float for it."""

    converted: torch.fx.GraphModule
    sim: torch.fx.GraphModule  # its float simulation
    out_qp: list  # simulate's (scale, zp) of each output
    in_qp: list  # and of each input
    ranges: dict
    matched: dict  # the recipe's keep_float layers
    notes: list
    float_ops: list  # FloatOps kept float automatically, in the order found
    refused: dict  # FloatOp -> why qnnpack refuses it
    gaps: dict  # FloatOp -> the quantized op edgekit could not simulate for it


def _convert_until_runnable(model, example_inputs: tuple, samples, recipe: QuantRecipe) -> _Converted:
    """prepare, calibrate, convert and simulate. An op qnnpack refuses with its calibrated qparams (a static
    check of the calibrated graph, qnnpack_limits) or one edgekit cannot simulate is kept float, and
    everything runs again; the simulation is always that of the module exported."""
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx

    from edgekit.quant.plain_layers import original_name

    float_ops: list[FloatOp] = []
    refused: dict[FloatOp, str] = {}
    gaps: dict[FloatOp, str] = {}
    while True:
        with qnnpack_engine():
            prepared, matched, notes = prepare(model, example_inputs, recipe, tuple(float_ops))
            ranges = calibrate(prepared, samples, recipe)
            read = {layer for layers in _layer_reads(prepared, _observer_groups(prepared)).values() for layer in layers}
            origins = graph_origins(prepared)  # before convert_fx, which rewrites the prepared graph in place
            new = _refused_float_ops(prepared, example_inputs, origins, float_ops)
            if new and len(refused) + len(new) <= MAX_REFUSED_FALLBACKS:
                refused.update(new)
                float_ops.extend(new)
                continue
            converted = convert_fx(prepared, backend_config=get_qnnpack_backend_config())
        restrided = restride_bilinear_inputs(converted)
        try:
            sim, out_qp, in_qp = simulate(converted, {n: original_name(o.scope) for n, o in origins.items()})
        except UnsupportedOpError as gap:
            op = next((c for c in float_op_candidates(origins, gap.node) if c not in float_ops), None)
            if op is None or len(float_ops) - len(refused) >= MAX_FLOAT_FALLBACKS:
                raise
            float_ops.append(op)
            gaps[op] = gap.op
            continue
        notes += [n for n in [learned_note(read, recipe)] if n]
        notes += [f"{restrided} bilinear resize input(s) copied with fresh channels_last strides (qnnpack's "
                  "quantized bilinear resize is wrong on a channels_last view, e.g. after permute+reshape)"] if restrided else []
        return _Converted(converted, sim, out_qp, in_qp, ranges, matched, notes, float_ops, refused, gaps)


def _refused_float_ops(prepared, example_inputs: tuple, origins, float_ops) -> dict:
    """FloatOp -> reason, for each op qnnpack would refuse with its calibrated qparams that is not kept
    float yet (that one op: a module by path, one call of a function)."""
    from .qnnpack_limits import qnnpack_refusals

    out = {}
    for refusal in qnnpack_refusals(prepared, example_inputs):
        op = float_op_for_node(origins, refusal.node)
        if op is not None and op not in float_ops:
            out.setdefault(op, refusal.reason)
    return out


# ---- the float simulation ------------------------------------------------------------------------

def fake_quant(x, scale: float, zero_point: int):
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, QMIN, QMAX)


class SimLinear(nn.Module):
    """A quantized Conv2d/Linear (optionally with fused ReLU) in float: dequantized int8 weights,
    float bias, output fake-quantized to the module's own scale and zero point."""

    def __init__(self, qweight, bias, conv: tuple | None, relu: bool, scale: float, zero_point: int):
        super().__init__()
        self.register_buffer("weight", qweight.dequantize())
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())
        self.conv = conv is not None
        if self.conv:
            self.stride, self.padding, self.dilation, self.groups = conv
        self.relu, self.scale, self.zero_point = relu, float(scale), int(zero_point)

    @classmethod
    def of_module(cls, qmod, relu: bool) -> "SimLinear":
        conv = (qmod.stride, qmod.padding, qmod.dilation, qmod.groups) if qmod.weight().dim() == 4 else None
        return cls(qmod.weight(), qmod.bias(), conv, relu, qmod.scale, qmod.zero_point)

    @classmethod
    def of_packed(cls, op: str, packed, scale, zero_point) -> "SimLinear":
        """From a functional quantized op (``F.linear``/``F.conv2d`` in a model's forward, e.g. timm's
        Linear): ``op`` is "quantized.linear", "quantized.conv2d_relu", ...; ``packed`` its weights."""
        relu = op.endswith("_relu")
        if op.startswith("quantized.conv2d"):
            w, b = packed.unpack()
            conv = (tuple(packed.stride()), tuple(packed.padding()), tuple(packed.dilation()), int(packed.groups()))
        else:
            (w, b), conv = torch.ops.quantized.linear_unpack(packed), None
        return cls(w, b, conv, relu, scale, zero_point)

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


class SimQNorm(nn.Module):
    """A quantized LayerNorm/GroupNorm module in float: its float op on the dequantized input with the
    module's float weight and bias, then fake-quant to the module's own scale and zero point. Kept
    float by the fallback, such a norm still comes out quantized: FX lowers dequantize -> LayerNorm ->
    quantize (the quantize is the next layer's input) to the quantized module."""

    KINDS = ("LayerNorm", "GroupNorm")

    def __init__(self, qmod):
        super().__init__()
        self.kind, self.scale, self.zero_point = type(qmod).__name__, float(qmod.scale), int(qmod.zero_point)
        self.eps = float(qmod.eps)
        self.shape = tuple(getattr(qmod, "normalized_shape", ()))
        self.groups = int(getattr(qmod, "num_groups", 1))
        for attr in ("weight", "bias"):
            value = getattr(qmod, attr, None)
            self.register_buffer(attr, value.detach().clone() if isinstance(value, torch.Tensor) else None)

    def forward(self, x):
        if self.kind == "LayerNorm":
            y = F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)
        else:
            y = F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
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


# the same as tensor methods (timm's Sigmoid module calls x.sigmoid())
_FIXED_QPARAMS_METHODS = {"sigmoid": (1.0 / 256, 0), "tanh": (2.0 / 256, 128)}
# functional conv/linear (F.linear in a model's forward): quantized ops on prepacked weights
_PACKED = {"quantized.linear", "quantized.linear_relu", "quantized.conv2d", "quantized.conv2d_relu"}


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
# modules that return their input in eval mode: no op in the traced, frozen .ptl, so no activation in the reference
_PASS_THROUGH_MODULES = (nn.Identity, nn.Dropout)
_SHAPE_METHODS = {"contiguous", "clone", "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze",
                  "size", "dim", "mean", "clamp", "relu", "hardtanh"}


def _op_name(target) -> str:
    return str(target).removeprefix("torch.ops.").removesuffix(".default")


def simulate(qgm: torch.fx.GraphModule, scopes: dict | None = None):
    """-> (float simulation GraphModule, [(scale, zp) of each output or None], [(scale, zp) of each
    input's quantize or None]). Raises UnsupportedOpError on a quantized op it cannot simulate.
    ``scopes``: node name -> the model's module path that made it (prepare_fx's record), to name the
    simulation of a functional conv/linear after its module."""
    sim = _Simulation(qgm, scopes or {})
    for node in qgm.graph.nodes:
        sim.add(node)
    in_qp = []
    for ph in sim.inputs:
        users = [u for u in ph.users if u.op == "call_function" and u.target is torch.quantize_per_tensor]
        in_qp.append((float(sim.qp[sim.env[users[0]]][0]), int(sim.qp[sim.env[users[0]]][1])) if users else None)
    return torch.fx.GraphModule(sim.root, sim.g, "PtlInt8Simulation"), sim.out_qp, in_qp


class _Simulation:
    """Builds the float simulation node by node: ``env`` maps each node of the converted graph to its
    simulated value, ``qp`` each simulated value that stands for a quantized tensor to its (scale, zp)."""

    def __init__(self, qgm, scopes: dict):
        self.qgm, self.scopes = qgm, scopes
        self.root, self.g = nn.Module(), torch.fx.Graph()
        self.env: dict = {}
        self.qp: dict = {}
        self.consts: dict = {}
        self.inputs: list = []
        self.out_qp: list = []

    def arg(self, a):
        return torch.fx.node.map_arg(a, lambda n: self.consts[n] if n in self.consts else self.env[n])

    def src_qp(self, node):
        ins = [a for a in node.all_input_nodes if a in self.env and self.env[a] in self.qp]
        return self.qp[self.env[ins[0]]] if ins else None

    def put(self, node, value, qparams=None) -> None:
        """Record a node's simulated value (fake-quantized to ``qparams`` when it is quantized)."""
        self.env[node] = value
        if qparams is not None:
            self.qp[value] = (float(qparams[0]), int(qparams[1]))

    def fixed(self, node, value, qparams) -> None:
        self.put(node, self.g.call_function(fake_quant, (value, *qparams)), qparams)

    def add(self, node) -> None:
        op, name = node.op, _op_name(node.target) if node.op == "call_function" else None
        if op == "placeholder":  # an optional argument (timm's attn_mask=None) keeps its default
            default = node.args[0] if node.args else inspect.Signature.empty
            self.put(node, self.g.placeholder(node.target, default_value=default))
            self.inputs.append(node)
        elif op == "get_attr":
            value = self.qgm
            for part in node.target.split("."):
                value = getattr(value, part)
            self.consts[node] = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
        elif op == "call_function" and node.target is torch.quantize_per_tensor:
            x, s, zp, _ = self.arg(node.args)
            self.put(node, self.g.call_function(fake_quant, (x, float(s), int(zp))), (s, zp))
        elif name == "quantized.dropout" and not node.kwargs.get("training", False):
            self.env[node] = self.arg(node.args[0])  # eval mode: the kernel returns its input, qparams and all
        elif name == "quantized.mul" and len(node.args) == 2:
            self.mul_scalar(node)
        elif name == "quantized.add" and len(node.args) == 2:
            self.add_scalar(node)
        elif name in _BINARY:
            a, b, s, zp = self.arg(node.args)
            self.put(node, self.g.call_function(_BINARY[name], (a, b, float(s), int(zp))), (s, zp))
        elif name in _PACKED:
            x, packed, s, zp = self.arg(node.args)
            path = _free_path(self.root, self.scopes.get(node.name) or node.name, node.name)
            _put(self.root, path, SimLinear.of_packed(name, packed, s, zp))
            self.put(node, self.g.call_module(path, (x,)), (s, zp))
        elif op == "call_method" and node.target in _FIXED_QPARAMS_METHODS and self.src_qp(node) is not None:
            value = self.g.call_method(node.target, self.arg(node.args), self.arg(node.kwargs))
            self.fixed(node, value, _FIXED_QPARAMS_METHODS[node.target])
        elif name in _UNARY:
            args = (*self.arg(node.args), *self.arg(node.kwargs).values())  # FX passes the output qparams either way
            self.put(node, self.g.call_function(_sim_unary, (name, *args)), args[-2:])
        elif op == "call_module":
            self.module(node)
        elif op == "call_function" and node.target in _FIXED_QPARAMS and self.src_qp(node) is not None:
            value = self.g.call_function(node.target, self.arg(node.args), self.arg(node.kwargs))
            self.fixed(node, value, _FIXED_QPARAMS[node.target])
        elif op == "call_method" and node.target == "dequantize":
            self.put(node, self.g.call_function(_dequantized, (self.arg(node.args)[0],)))  # float from here on
        elif op in ("call_function", "call_method"):
            self.other(node)
        elif op == "output":
            out = node.args[0]
            self.out_qp = [_dequantized_qp(n, self.env, self.qp) for n in (out if isinstance(out, (tuple, list)) else (out,))]
            self.g.output(self.arg(out))

    def module(self, node) -> None:
        """A call_module node: simulated quantized modules, float modules (fake-quantized to their
        input's qparams when they only pass quantized values on), else UnsupportedOpError."""
        import torch.ao.nn.intrinsic.quantized as nniq
        import torch.ao.nn.quantized as nnq

        mod, name, q_in = self.qgm.get_submodule(node.target), node.target, self.src_qp(node)

        def call():
            return self.g.call_module(name, self.arg(node.args), self.arg(node.kwargs))

        if type(mod) in _FIXED_QPARAMS_MODULES and q_in is not None:
            _put(self.root, name, copy.deepcopy(mod))
            self.fixed(node, call(), _FIXED_QPARAMS_MODULES[type(mod)])
        elif isinstance(mod, _PASS_THROUGH_MODULES):  # the trace records nothing for them: no tensor of its own
            self.env[node] = self.arg(node.args[0])
        elif isinstance(mod, (nniq.ConvReLU2d, nniq.LinearReLU, nnq.Conv2d, nnq.Linear)):
            _put(self.root, name, SimLinear.of_module(mod, relu=isinstance(mod, (nniq.ConvReLU2d, nniq.LinearReLU))))
            self.put(node, call(), (mod.scale, mod.zero_point))
        elif q_in is not None and hasattr(mod, "scale") and type(mod).__name__ in SimQNorm.KINDS + SimQActivation.KINDS:
            sim = SimQNorm(mod) if type(mod).__name__ in SimQNorm.KINDS else SimQActivation(mod)
            _put(self.root, name, sim)
            self.put(node, call(), (mod.scale, mod.zero_point))
        elif q_in is None and type(mod).__module__.startswith("torch.ao.nn.quantized"):
            # a module called more than once (ALBERT's shared layers) that convert_fx quantized while
            # one of its calls reads a float tensor: that call fails in the runtime; kept float instead
            raise UnsupportedOpError("ptl", f"quantized {type(mod).__name__} called on a float input", node.name,
                                     "keep this layer in float (--keep-float) or export ptl in fp32")
        elif q_in is None or isinstance(mod, _SAME_QPARAMS_MODULES):
            _put(self.root, name, copy.deepcopy(mod))
            self.put(node, call())
            if q_in is not None:
                self.fixed(node, self.env[node], q_in)
        else:
            raise UnsupportedOpError("ptl", f"quantized {type(mod).__name__}", node.target,
                                     "keep this layer in float (--keep-float) or export ptl in fp32")

    def mul_scalar(self, node) -> None:
        """quantized.mul(qx, c) (e.g. an attention's q * scale): the kernel keeps the integers and sets the
        output's qparams to (s * |c|, zp) for c > 0, (s * |c|, qmax + qmin - zp) with the integers
        mirrored for c < 0, (1, 0) and zeros for c == 0, so the value is exactly c * x: no rounding."""
        x, c = self.tensor_and_scalar(node)
        s, zp = self.src_qp(node)
        c = float(c)
        qparams = (s * abs(c), zp) if c > 0 else (s * abs(c), QMAX + QMIN - zp) if c < 0 else (1.0, 0)
        self.fixed(node, self.g.call_function(operator.mul, (x, c)), qparams)  # on that grid: the rounding is exact

    def tensor_and_scalar(self, node) -> tuple:
        """(tensor, number) of a quantized mul/add with a scalar, in either order (HF's GELU writes
        ``0.5 * x``)."""
        a, b = self.arg(node.args)
        return (b, a) if isinstance(a, (int, float)) else (a, b)

    def add_scalar(self, node) -> None:
        """quantized.add(qx, c) (e.g. ``var + eps``): the kernel adds c rounded to x's grid,
        c_q = round(c / s), by moving the zero point to zp - c_q when that stays in [qmin, qmax] (the
        integers unchanged); otherwise it requantizes to the range widened to hold it (zero point at
        the end of the range), as PyTorch's qadd_scalar does."""
        x, c = self.tensor_and_scalar(node)
        s, zp = self.src_qp(node)
        c_q = int(np.rint(float(c) / s))
        z = zp - c_q
        if z < QMIN:
            qparams = ((QMAX - z) / (QMAX - QMIN) * s, QMIN)
        elif z > QMAX:
            qparams = ((z - QMIN) / (QMAX - QMIN) * s, QMAX)
        else:
            qparams = (s, z)
        self.fixed(node, self.g.call_function(operator.add, (x, c_q * s)), qparams)

    def other(self, node) -> None:
        """Any other function or method: float ops as they are; a quantized value only through ops
        that keep its qparams (or read its shape), else UnsupportedOpError."""
        q_in = self.src_qp(node)
        known = (node.target in _SAME_QPARAMS_FUNCS or node.target in _NON_TENSOR
                 or (node.op == "call_method" and node.target in _SHAPE_METHODS))
        if q_in is not None and not known:
            raise UnsupportedOpError("ptl", f"quantized {_op_name(node.target)}", node.name,
                                     "keep the layer that computes it in float (--keep-float) or export ptl in fp32")
        make = self.g.call_function if node.op == "call_function" else self.g.call_method
        self.put(node, make(node.target, self.arg(node.args), self.arg(node.kwargs)))
        if q_in is not None and node.target not in _NON_TENSOR:
            self.fixed(node, self.env[node], q_in)


def _free_path(root: nn.Module, dotted: str, suffix: str) -> str:
    """``dotted`` if nothing is there yet in ``root``, else ``dotted.suffix`` (a module calling
    F.linear twice)."""
    try:
        root.get_submodule(dotted)
    except AttributeError:
        return dotted
    return f"{dotted}.{suffix}"


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
