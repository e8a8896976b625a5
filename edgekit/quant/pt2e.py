"""PT2E glue shared by the tflite and executorch targets: a target's own PT2E quantizer decides
*where* quantize/dequantize pairs go (which ops its kernels fuse); edgekit decides the *ranges*.

``quantize(model, example, calibration, recipe, quantizer)``:
1. copy the model; cross-layer equalization when the recipe asks (``equalize.py``);
   ReLU6 -> ReLU where it follows a conv/linear (``fuse_relu6``: the quantizer then fuses it into
   the conv and the output range is capped at 6, which is exactly ReLU6 after quantization);
2. ``torch.export`` and graph clean-up: eval-mode dropout and no-op clones are removed, so no
   converter sees a requantize around an identity (litert-torch drops such a requantize but keeps
   its scale in the next FULLY_CONNECTED's bias: a ~3.9x too large bias on MobileNetV2);
3. ``prepare_pt2e``; every activation observer is replaced by an edgekit site that records the
   tensor (two passes: min/max, then histogram), 1 torch thread, so ranges do not depend on the
   thread count;
4. the recipe's calibrator turns each site's statistics into a range; the site becomes a
   MinMaxObserver holding exactly that range (weights keep their per-channel min/max observers;
   int32 bias scales are derived from them by the quantizer's own derived specs);
   (before 2: with ``rounding="adaround"`` the weights are first moved to learned points of their int8
   grid, BatchNorm folded, ``adaround.round_weights``: the quantizer then re-derives the same scales
   and integers; the bias-correction reference stays the unrounded float model);
   int16x8 (``activation_spec``): the same sites with int16 symmetric observers (zero point 0,
   -32767..32767, eps 2^-24 so no calibrated range is floored), ranged by the same calibrators;
5. ``convert_pt2e(fold_quantize=False)``: the quantized reference (float simulation) that the
   artifact must reproduce; bias correction, when asked, first adjusts the float biases of the
   calibrated model (``equalize.correct_bias``).
Reproducibility: a deep quantized reference can be ill-conditioned (its rounding decisions cascade);
``edgekit.quant.noise`` measures that, and `edgekit verify` judges such an artifact against it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserError

from .calibrators import TensorStatsCollector, calibrate_ranges, learned_note, one_torch_thread
from .probe import RangeProbe
from .recipe import QuantRecipe, keep_float_modules

_IDENTITY_OPS = ("aten.dropout.default", "aten.dropout_.default", "aten.clone.default",
                 "aten.alias.default", "aten.feature_dropout.default")


@dataclass
class Quantized:
    """The quantized reference: ``module`` (convert_pt2e GraphModule) and what edgekit chose."""

    module: torch.fx.GraphModule
    ranges: dict[str, tuple[float, float]]  # observer site -> calibrated (lo, hi)
    output_scales: list[float | None]
    input_qparams: list[tuple[float, int] | None]
    kept_float: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)




def relu6_to_relu(model: nn.Module) -> set[str]:
    """Replace nn.ReLU6 (and Hardtanh(0, 6)) modules by nn.ReLU in place; return their names."""
    names = set()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            is_relu6 = isinstance(child, nn.ReLU6) or (
                isinstance(child, nn.Hardtanh) and child.min_val == 0.0 and child.max_val == 6.0)
            if is_relu6:
                setattr(parent, child_name, nn.ReLU())
                names.add(f"{parent_name}.{child_name}" if parent_name else child_name)
    return names


def remove_identities(gm: torch.fx.GraphModule) -> int:
    """Drop eval-mode dropout and clone nodes (identities); returns how many were removed."""
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and str(node.target) in _IDENTITY_OPS:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            removed += 1
    if removed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return removed


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").replace("L['self']", "")


def _is_weight_site(gm, node) -> bool:
    arg = node.args[0] if node.args else None
    return isinstance(arg, torch.fx.Node) and arg.op == "get_attr"


# Observers whose qparams are not the calibrator's to set: derived ones (a bias's scale), and fixed
# ones the quantizer sets for ops whose kernel requires them (TFLite's LOGISTIC refuses any output
# scale but 1/256: a calibrated sigmoid range made the file fail to load on the reference kernels
# and compute wrong boxes under XNNPACK).
_NOT_CALIBRATED = ("DerivedObserverOrFakeQuantize", "FixedQParamsObserver", "FixedQParamsFakeQuantize")


def _activation_sites(gm) -> dict[str, torch.fx.Node]:
    """Observer module name -> its call node, for every observer of an activation (not a weight)
    whose range the calibrator sets."""
    from torchao.quantization.pt2e.observer import ObserverBase

    out = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ObserverBase):
            obs = gm.get_submodule(node.target)
            if type(obs).__name__ in _NOT_CALIBRATED or _is_weight_site(gm, node):
                continue
            out[node.target] = node
    return out


def _capped_sites(sites: dict, relu6_names: set[str]) -> dict[str, float]:
    """Sites observing the output of a former ReLU6: their range is capped at 6."""
    caps = {}
    for name, node in sites.items():
        src = node.args[0]
        if isinstance(src, torch.fx.Node) and src.op == "call_function" and "relu" in str(src.target):
            if _module_path(src) in relu6_names:
                caps[name] = 6.0
    return caps


_LAYER_OPS = ("aten.conv1d", "aten.conv2d", "aten.linear", "aten.convolution")


def _layer_reads(sites: dict, lead: dict[str, str]) -> dict[str, set[str]]:
    """Site -> the conv/linear modules whose input it is (learned QAT ranges). Only a site with a range
    of its own: a shared group (a pooling's input and output, a concat's pieces) holds other tensors,
    which a layer input's learned range would clip."""
    size: dict[str, int] = {}
    for name in sites:
        size[lead[name]] = size.get(lead[name], 0) + 1
    reads: dict[str, set[str]] = {}
    for name, node in sites.items():
        for user in node.users:
            if size[lead[name]] == 1 and user.op == "call_function" and str(user.target).startswith(_LAYER_OPS) \
                    and user.args[0] is node:
                reads.setdefault(name, set()).add(_module_path(user))
    return reads


def _leads(prepared, sites: dict) -> dict[str, str]:
    """Site -> the first site of its group. One observer object under several names is a shared
    quantization spec (e.g. a concat's inputs and output, which XNNPACK requires to share one scale):
    one probe and one range for the group."""
    first: dict[int, str] = {}
    for name in sites:
        first.setdefault(id(prepared.get_submodule(name)), name)
    return {name: first[id(prepared.get_submodule(name))] for name in sites}


def _output_sites(sites: dict) -> set[str]:
    """Sites whose tensor is a model output (the logits): ranged by min/max when the recipe says so,
    since clipping the largest outputs changes the top-1 class (percentile 99.99 clipped MobileNetV2's
    logits at 17.5 while held-out photos reach 22.5)."""
    return {name for name, node in sites.items() if any(u.op == "output" for u in node.users)}


def activation_spec(scheme: str):
    """The PT2E activation QuantizationSpec of a calibrated scheme's integer grid (recipe.ACTIVATION_GRID),
    for a target whose quantizer takes a custom activation spec: int16x8 -> int16, symmetric, zero point 0,
    -32767..32767. The observer is a placeholder: ``calibrate_sites`` replaces it by a MinMaxObserver with
    the calibrated range (and keeps its dtype, qscheme, quant range and eps)."""
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    from .recipe import ACTIVATION_GRID

    dtype, qmin, qmax, symmetric = ACTIVATION_GRID[scheme]
    return QuantizationSpec(dtype=getattr(torch, dtype), quant_min=qmin, quant_max=qmax,
                            qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
                            is_dynamic=False,
                            # int16 steps of a range of 1 are 3e-5: the int8 observers' eps (2^-12) would floor them
                            observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2.0 ** -24 if qmax > 127 else 2.0 ** -12))


def _run(gm, samples) -> None:
    with torch.no_grad():
        for sample in samples:
            gm(*[torch.from_numpy(np.ascontiguousarray(a)) for a in sample])


def calibrate_sites(prepared, samples, recipe: QuantRecipe, caps: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Two calibration passes through edgekit sites; the observers become fixed-range MinMaxObservers."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    sites = _activation_sites(prepared)
    originals = {name: prepared.get_submodule(name) for name in sites}
    lead = _leads(prepared, sites)
    collector = TensorStatsCollector(recipe.bins)
    probes = {}
    for name in sites:
        key = lead[name]
        probes.setdefault(key, RangeProbe(key, collector, min((caps[n] for n in sites if lead[n] == key and n in caps), default=None)))
        setattr(prepared, name, probes[key])
    outputs = _output_sites(sites) if recipe.minmax_output else set()
    found = calibrate_ranges(collector, lambda: _run(prepared, samples), recipe, probes,
                             exact={lead[n] for n in outputs}, caps={k: p.cap for k, p in probes.items() if p.cap is not None},
                             reads=_layer_reads(sites, lead))
    ranges, replaced = {}, {}
    for name in sites:
        old, key = originals[name], lead[name]
        if id(old) not in replaced:
            lo, hi = found[key]
            obs = MinMaxObserver(dtype=old.dtype, qscheme=old.qscheme, quant_min=old.quant_min,
                                 quant_max=old.quant_max, eps=float(getattr(old, "eps", torch.tensor(2.0 ** -12))))
            obs.min_val = torch.tensor(float(lo))
            obs.max_val = torch.tensor(float(hi))
            replaced[id(old)] = obs
        setattr(prepared, name, replaced[id(old)])
        ranges[name] = (float(replaced[id(old)].min_val), float(replaced[id(old)].max_val))
    for mod in prepared.modules():  # derived (bias) observers point at the observers they derive from
        if hasattr(mod, "obs_or_fqs"):
            mod.obs_or_fqs = [replaced.get(id(o), o) for o in mod.obs_or_fqs]
    return ranges


def _output_scales(gm) -> list[float | None]:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    flat = out_node.args[0] if isinstance(out_node.args[0], (tuple, list)) else (out_node.args[0],)
    scales = []
    for n in flat:
        ok = isinstance(n, torch.fx.Node) and "dequantize_per_tensor" in str(n.target)
        scales.append(float(n.args[1]) if ok else None)
    return scales


def _input_qparams(gm) -> list[tuple[float, int] | None]:
    out = []
    for ph in (n for n in gm.graph.nodes if n.op == "placeholder"):
        q = [u for u in ph.users if "quantize_per_tensor" in str(u.target) and "dequantize" not in str(u.target)]
        out.append((float(q[0].args[1]), int(q[0].args[2])) if q else None)
    return out


class KeepFloat:
    """A PT2E quantizer wrapper that leaves the nodes of the kept modules unannotated, so they stay
    float (a dequantize before them, a quantize after them where a quantized op consumes their output).

    Implemented here and not through the target quantizer's own name filter, because those filters do
    not match torch 2.13's export metadata: litert-torch's ``set_module_name`` strips "L__self___"
    (three underscores) from keys that are now "L__self__<path>" and compares class objects with the
    class-name strings export records, so a kept layer was silently quantized (measured: "classifier"
    kept float gave bit-identical scores)."""

    def __init__(self, inner, kept_paths, relu6: set[str] = frozenset()):
        self.inner = inner
        self.kept_paths = tuple(kept_paths)
        self.relu6 = relu6  # former ReLU6 modules (relu6_to_relu): a float one gets its cap back
        self.stripped: set[str] = set()  # module paths whose nodes lost their annotation
        self.requantized: set[str] = set()  # kept paths left quantized: the target's converter would requantize them
        self.float_ops = None  # Counter of the compute ops the inner quantizer left float (float_ops.py)
        self.float_adds = 0  # adds whose result another add reads in float (add_chains.py)

    def _kept(self, node, paths=None) -> str | None:
        paths = self.kept_paths if paths is None else paths
        for path, _ in (node.meta.get("nn_module_stack") or {}).values():
            path = path.removeprefix("L['self'].")
            if path in paths:
                return path
        return None

    def _isolated(self, model) -> set[str]:
        """Kept paths whose layer reads only quantized tensors and feeds only quantized inputs (after
        the activation kept float with it). A target whose converter fuses such a dequantize -> float
        op -> quantize back into a quantized op, with weights it quantizes itself, says so with
        ``requantizes_isolated_float`` on its quantizer (tflite: TFLite's STATIC QDQ conversion,
        measured on MobileNetV2's first depthwise conv kept float alone: an int8/int16 DEPTHWISE_CONV_2D
        in the file, 2,507 int16 output steps from the float reference). Such a layer stays quantized
        in the reference too, so reference and file compute the same, and the report names it."""
        groups: dict[str, set] = {}
        for node in model.graph.nodes:
            path = self._kept(node)
            if path is not None and node.op == "call_function" and "quantization_annotation" in node.meta:
                groups.setdefault(path, set()).add(node)
        single = {path for path, nodes in groups.items() if len(nodes) == 1}  # a whole block kept float is a chain
        for nodes in groups.values():
            for node in model.graph.nodes:  # the activations that would stay float with it
                if (node.op == "call_function" and any(k in str(node.target) for k in _FUSED_ACTIVATIONS)
                        and node.args and node.args[0] in nodes):
                    nodes.add(node)
        floats = set().union(*groups.values())  # a neighbour kept float is a float tensor, whatever its annotation
        isolated = set()
        for path, tail in groups.items():
            if path not in single:  # of float ops, which no converter fuses into one quantized op
                continue
            reads = {a for n in tail for a in n.all_input_nodes if a not in tail and a.op != "get_attr" and is_float_tensor(a)}
            feeds = [(n, u) for n in tail for u in n.users if u not in tail]
            if (reads and feeds and all(a not in floats and _quantized_output(a) for a in reads)
                    and all(u not in floats and _quantized_input(u, n) for n, u in feeds)):
                isolated.add(path)
        return isolated

    def transform_for_annotation(self, model):
        return _untie_shared_params(_scalar_constants_match_result(self.inner.transform_for_annotation(model)))

    def annotate(self, model):
        from .float_ops import unannotated_ops

        model = self.inner.annotate(model)
        if getattr(self.inner, "float_add_chains", False):  # XNNPACK's placement (add_chains.py)
            from .add_chains import float_add_chains

            self.float_adds = float_add_chains(model)
        self.float_ops = unannotated_ops(model)
        if not self.kept_paths:
            return model
        if getattr(self.inner, "requantizes_isolated_float", False):
            self.requantized = self._isolated(model)
        paths = tuple(p for p in self.kept_paths if p not in self.requantized)
        kept_nodes = set()
        for node in model.graph.nodes:
            path = self._kept(node, paths)
            if path is not None and "quantization_annotation" in node.meta:
                del node.meta["quantization_annotation"]
                kept_nodes.add(node)
                self.stripped.add(path)
        kept_nodes |= _float_activations(model, kept_nodes, self.relu6)
        self._unshare(model, kept_nodes)
        return model

    def _unshare(self, model, kept_nodes) -> None:
        """A quantized node whose qparams were shared with a now-float neighbour gets its own
        (the target's global activation spec)."""
        from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

        own = self.inner.global_config.input_activation
        for node in model.graph.nodes:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                continue
            for arg, spec in list(ann.input_qspec_map.items()):
                if isinstance(spec, SharedQuantizationSpec) and _edge_nodes(spec.edge_or_node) & kept_nodes:
                    ann.input_qspec_map[arg] = own
            spec = ann.output_qspec
            if isinstance(spec, SharedQuantizationSpec) and _edge_nodes(spec.edge_or_node) & kept_nodes:
                ann.output_qspec = own

    def validate(self, model):
        return self.inner.validate(model)

    def prepare_obs_or_fq_callback(self, model, edge_or_node_to_obs_or_fq):
        return self.inner.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)


def _scalar_constants_match_result(gm):
    """Quantizers turn scalar operands of add/mul into 0-d tensor constants, with a dtype of their own:
    ExecuTorch's XNNPACK quantizer always float32 (integer index math, such as transformers'
    attention-mask code adding an int offset to an arange, became float and calibration failed with
    "tensors used as indices must be long"), litert-torch's the Python type (``x * 24`` got an int64
    constant, which its observer could not histogram: "histogram_cpu not implemented for 'Long'").
    Each such constant gets the dtype of the op's result: integer math stays integer, float math
    gets a float constant."""
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op != "call_function" or node.target not in (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor):
            continue
        if not isinstance(val, torch.Tensor):
            continue
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target.startswith("_tensor_constant"):
                const = getattr(gm, arg.target)
                if const.dim() != 0 or const.dtype == val.dtype or (not val.is_floating_point() and float(const) != int(const)):
                    continue
                setattr(gm, arg.target, const.to(val.dtype))
                if isinstance(arg.meta.get("val"), torch.Tensor):
                    arg.meta["val"] = arg.meta["val"].to(val.dtype)
    return gm


def _untie_shared_params(gm):
    """A module called twice reads its weight and bias through one ``get_attr`` node; the target
    quantizers mark that node annotated with the first call's partition and skip every later call,
    which then stays float (its conv reads a float weight). onnxruntime then quantizes that weight by
    itself (per tensor, its own choice of scale), far from the reference: measured on a shared 1x1
    conv called twice, the second call 63 output steps off on an x86 CPU without VNNI. Each extra
    call gets its own copy of the parameter here, so every call is quantized on its own. A copy, not
    a second ``get_attr`` of the same tensor: XNNPACK's lowering quantizes a float bias once per
    tensor, at the first conv's input scale, and a second conv with another input scale then adds a
    wrong bias (measured: per-channel offsets up to 0.85 output steps on that shared conv)."""
    import torch

    for node in list(gm.graph.nodes):
        if node.op != "get_attr" or len(node.users) < 2:
            continue
        value = _attr(gm, node.target)
        if not isinstance(value, torch.Tensor):
            continue
        for k, user in enumerate(list(node.users)[1:], start=1):
            name = f"{node.target.replace('.', '_')}__call{k}"
            copy_ = value.detach().clone()
            if isinstance(value, torch.nn.Parameter):
                gm.register_parameter(name, torch.nn.Parameter(copy_, requires_grad=False))
            else:
                gm.register_buffer(name, copy_)
            with gm.graph.inserting_after(node):
                own = gm.graph.get_attr(name)
            own.meta = dict(node.meta)
            user.replace_input_with(node, own)
    gm.recompile()
    return gm


def _attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


def _edge_nodes(edge_or_node) -> set:
    return set(edge_or_node) if isinstance(edge_or_node, tuple) else {edge_or_node}


# element-wise activations a quantizer fuses with the conv/linear before them (ReLU6 is a relu or a
# hardtanh/clamp by the time the quantizer sees it)
_FUSED_ACTIVATIONS = ("aten.relu.", "aten.relu_.", "aten.hardtanh.", "aten.hardtanh_.", "aten.clamp.")


def is_float_tensor(node) -> bool:
    """Whether an FX node (or any argument) holds a float tensor (its export metadata's value)."""
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _quantized_output(node) -> bool:
    """Whether ``node``'s output is quantized for every reader (its annotation has an output spec)."""
    ann = node.meta.get("quantization_annotation")
    return ann is not None and ann.output_qspec is not None


def _quantized_input(user, node) -> bool:
    """Whether ``user`` reads ``node`` through a quantize (its annotation has an input spec for it)."""
    ann = user.meta.get("quantization_annotation")
    return ann is not None and ann.input_qspec_map.get(node) is not None


def _float_activations(model, kept_nodes: set, relu6: set[str]) -> set:
    """The activations that read a kept-float layer, left float with it. A layer is kept float with
    its activation: otherwise the quantizer's stand-alone annotation of the ReLU would still round the
    layer's output to int8 and, between two float layers, add the very activation noise keeping them
    float is meant to remove (measured on MobileNetV2's stem: its ReLU6 output was the largest
    activation-noise site). An int8 reader still quantizes the tensor at its own input. A former
    ReLU6 (``relu6``: turned into a ReLU so the int8 grid would cap it) is a ReLU6 again, since no
    grid caps a float tensor."""
    freed: set = set()
    for node in model.graph.nodes:
        if (node.op == "call_function" and any(k in str(node.target) for k in _FUSED_ACTIVATIONS)
                and node.args and node.args[0] in kept_nodes | freed
                and node.meta.pop("quantization_annotation", None) is not None):
            freed.add(node)
    capped = [n for n in kept_nodes | freed if "relu" in str(n.target) and _module_path(n) in relu6]
    for node in capped:
        node.target, node.args = torch.ops.aten.hardtanh.default, (node.args[0], 0.0, 6.0)
    if capped:
        model.recompile()
    return freed


def _check_activation_dtype(quantizer, recipe: QuantRecipe) -> None:
    """A target's quantizer whose activations are not the recipe's grid (an int8 quantizer handed an
    int16x8 recipe) is refused, never run: the file would silently be int8."""
    from .recipe import ACTIVATION_GRID

    config = getattr(quantizer, "global_config", None)
    spec = getattr(config, "input_activation", None)
    want = ACTIVATION_GRID.get(recipe.scheme)
    if want is None or spec is None or not hasattr(spec, "dtype"):
        return
    if spec.dtype != getattr(torch, want[0]):
        raise UserError("E-TARGET-PRECISION", f"this target's quantizer makes {str(spec.dtype).removeprefix('torch.')} "
                        f"activations, the recipe asks {recipe.scheme} ({want[0]} activations)",
                        "export this precision only to a target that lists it (see `edgekit targets`)")


def _keep_float_notes(recipe: QuantRecipe, matched: dict, quantizer: KeepFloat) -> list[str]:
    """What became of the recipe's keep_float on this target, and what its quantizer left float."""
    from .float_ops import float_ops_note

    notes = []
    idle = sorted(set(recipe.keep_float) - {matched[p] for p in quantizer.stripped | quantizer.requantized})
    if idle:  # matched a module, but the target's quantizer had not quantized anything in it
        notes.append(f"keep-float: {', '.join(idle)} held no op the target quantizes (nothing to keep float)")
    if quantizer.stripped:
        notes.append(f"kept float: {', '.join(sorted(quantizer.stripped))}")
    if quantizer.requantized:
        notes.append(f"not kept float on this target: {', '.join(sorted(quantizer.requantized))} (each reads and feeds only "
                     "quantized tensors, and the target's converter fuses such a float layer back into a quantized op; "
                     "keep a neighbour float too to keep it float)")
    if quantizer.float_adds:
        notes.append(f"{quantizer.float_adds} residual add(s) whose result another add reads computed in float, "
                     "quantized only where a layer reads them (as TFLite's converter does)")
    return notes + [n for n in [float_ops_note(quantizer.float_ops or {})] if n]


def quantize(model: nn.Module, example_inputs: tuple, samples, recipe: QuantRecipe, quantizer,
             fold_quantize: bool = False, cache_dir=None) -> Quantized:
    """PTQ of ``model`` with ``quantizer`` (a PT2E Quantizer with a global config set) and edgekit's
    calibrated ranges; ``samples`` are numpy input tuples (the calibration set). fold_quantize:
    store weights as int8 constants (what XNNPACK lowering wants) instead of float + q/dq
    (what litert-torch wants); the two compute the same numbers. cache_dir: where learned weight
    rounding (recipe.rounding="adaround") is cached, so the targets of one job learn it once."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    _check_activation_dtype(quantizer, recipe)
    samples = tuple(samples)[: recipe.max_samples]
    from .equalize import equalized

    model, notes = equalized(model, recipe)  # a copy when it equalizes
    if not recipe.equalize:
        model = copy.deepcopy(model).eval()  # the caller's model is never changed
    example_inputs = tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in example_inputs)
    float_gm = None
    if recipe.bias_correction:  # the float model (after CLE, before ReLU6 -> ReLU) the biases are corrected towards
        float_gm = torch.export.export(copy.deepcopy(model), example_inputs).module()
        remove_identities(float_gm)
        from torchao.quantization.pt2e.utils import _fuse_conv_bn_

        _fuse_conv_bn_(float_gm)  # as prepare_pt2e does: conv outputs are then compared after BatchNorm
    if recipe.rounding != "nearest":  # after CLE, before anything else: the weights are final from here on
        from .adaround import describe, round_weights

        with one_torch_thread():
            model, report = round_weights(model, example_inputs, samples, recipe, cache_dir)
        notes.append(describe(report))
    relu6 = relu6_to_relu(model) if recipe.fuse_relu6 else set()
    matched = keep_float_modules(model, recipe)
    quantizer = KeepFloat(quantizer, matched, relu6)
    gm = torch.export.export(model, example_inputs).module()
    removed = remove_identities(gm)
    if removed:
        notes.append(f"removed {removed} identity op(s) (eval dropout/clone) before quantization")
    prepared = prepare_pt2e(gm, quantizer)
    sites = _activation_sites(prepared)
    notes += [n for n in [learned_note({p for ps in _layer_reads(sites, _leads(prepared, sites)).values() for p in ps}, recipe)] if n]
    caps = _capped_sites(sites, relu6)
    ranges = calibrate_sites(prepared, samples, recipe, caps)
    if recipe.bias_correction:
        from .equalize import correct_bias

        with one_torch_thread():
            n = correct_bias(prepared, float_gm, samples, lambda p: convert_pt2e(p, fold_quantize=False))
        notes.append(f"empirical bias correction on {n} conv/linear layers")
    notes += _keep_float_notes(recipe, matched, quantizer)
    converted = convert_pt2e(prepared, fold_quantize=fold_quantize)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    move_exported_model_to_eval(converted)
    kept = {p: n for p, n in matched.items() if p not in quantizer.requantized}
    return Quantized(converted, ranges, _output_scales(converted), _input_qparams(converted), kept, notes)


def quantize_dynamic(model: nn.Module, example_inputs: tuple, recipe: QuantRecipe, quantizer,
                     fold_quantize: bool = False) -> torch.fx.GraphModule:
    """Dynamic PT2E (``quantizer`` set up in dynamic mode): int8 weights, activations quantized at run
    time by the kernels, so only the weight observers run (one example, no calibration set); the
    recipe's keep_float goes through ``KeepFloat``, as for static INT8."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    keep = KeepFloat(quantizer, keep_float_modules(model, recipe))
    gm = torch.export.export(copy.deepcopy(model).eval(), tuple(example_inputs)).module()
    prepared = prepare_pt2e(gm, keep)
    with torch.no_grad():
        prepared(*example_inputs)  # weight observers only: dynamic activations have no ranges
    return convert_pt2e(prepared, fold_quantize=fold_quantize)
