"""Cross-layer equalization and bias correction (Nagel et al., "Data-Free Quantization", 2019).

``equalize(model)``: for each conv -> (BatchNorm) -> ReLU/ReLU6 -> conv chain inside an
``nn.Sequential`` (MobileNetV2's expand -> depthwise -> project), BatchNorm is folded into the conv
and output channel i of the first conv is divided by s_i, input channel i of the second multiplied
by s_i, with s_i = sqrt(r1_i / r2_i) (r = the channel's max |weight|), which equalizes the two
per-channel ranges. ReLU is positively homogeneous, so the float function is unchanged; ReLU6 is
not (its clip would have to move to 6 / s_i per channel), so a ReLU6 between the two is replaced by
ReLU, as in the paper: this changes the float model where activations exceed 6.

``correct_bias(prepared, reference_gm, samples, convert)``: empirical bias correction. Layer by
layer in graph order (depthwise convs by default), the per-channel mean of the converted model's
output minus the float model's output on the calibration set is subtracted from the float bias the
converter quantizes. Measured on MobileNetV2 (bench/results/int8_mobilenet_v2.md): correcting every
layer overfits the last ones on 32 photos (9 dB held out); depthwise only is neutral.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_LINEAR_OPS = ("aten.conv2d.default", "aten.conv1d.default", "aten.linear.default")


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the conv before it (the conv gets a bias)."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        g = bn.weight / std
        conv.weight.mul_(g.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        new_b = (b - bn.running_mean) * g + bn.bias
        conv.bias = nn.Parameter(new_b)


def _flatten(seq: nn.Sequential, out: list) -> None:
    """(parent, attribute, module) in data-flow order: nested Sequentials are flattened, any other
    container is a barrier (None): its forward may add, concatenate or branch."""
    for cname, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            _flatten(child, out)
        elif len(list(child.children())) == 0:
            out.append((seq, cname, child))
        else:
            out.append(None)


def _fold_all(seq: nn.Sequential) -> list:
    """Leaves in order with every Conv2d -> BatchNorm2d folded (the BN becomes Identity and is dropped)."""
    flat: list = []
    _flatten(seq, flat)
    out = []
    for item in flat:
        if item is not None and isinstance(item[2], nn.BatchNorm2d) and out and out[-1] is not None \
                and isinstance(out[-1][2], nn.Conv2d):
            _fold_bn(out[-1][2], item[2])
            setattr(item[0], item[1], nn.Identity())
            continue
        if item is not None and isinstance(item[2], (nn.Identity, nn.Dropout)):
            continue
        out.append(item)
    return out


def _equalize_pair(c1: nn.Conv2d, c2: nn.Conv2d) -> bool:
    n = c1.out_channels
    dw2 = c2.groups == c2.in_channels == c2.out_channels
    if c2.in_channels != n or (c2.groups != 1 and not dw2):
        return False
    with torch.no_grad():
        r1 = c1.weight.abs().reshape(n, -1).amax(1)
        r2 = (c2.weight.abs().reshape(n, -1).amax(1) if dw2 else c2.weight.abs().transpose(0, 1).reshape(n, -1).amax(1))
        ok = (r1 > 0) & (r2 > 0)
        s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, torch.ones_like(r2))), torch.ones_like(r1))
        c1.weight.div_(s.reshape(-1, *([1] * (c1.weight.dim() - 1))))
        if c1.bias is not None:
            c1.bias.div_(s)
        if dw2:
            c2.weight.mul_(s.reshape(-1, *([1] * (c2.weight.dim() - 1))))
        else:
            c2.weight.mul_(s.reshape(1, -1, *([1] * (c2.weight.dim() - 2))))
    return True


def equalize(model: nn.Module, iterations: int = 4) -> int:
    """Cross-layer equalization in place; returns the number of conv pairs equalized."""
    pairs, seen = [], set()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        leaves = _fold_all(seq)
        for k in range(len(leaves) - 2):
            if any(x is None for x in leaves[k:k + 3]):
                continue
            (_, _, a), (parent, cname, act), (_, _, b) = leaves[k:k + 3]
            if isinstance(a, nn.Conv2d) and isinstance(act, _ACTS) and isinstance(b, nn.Conv2d):
                if not isinstance(act, nn.ReLU):
                    setattr(parent, cname, nn.ReLU())
                if (id(a), id(b)) not in seen:
                    seen.add((id(a), id(b)))
                    pairs.append((a, b))
    for _ in range(iterations):
        for a, b in pairs:
            _equalize_pair(a, b)
    return len(pairs)


def equalized(model: nn.Module, recipe) -> tuple[nn.Module, list[str]]:
    """What every INT8 target quantizes: the model after cross-layer equalization when the recipe asks
    for it (a copy; the caller's model is untouched) with the note the report carries, else the
    model itself and no note."""
    if not recipe.equalize:
        return model, []
    model = copy.deepcopy(model).eval()
    return model, [f"cross-layer equalization on {equalize(model)} conv pairs"]


def _graph_outputs(gm: torch.fx.GraphModule, names: list[str]) -> torch.fx.GraphModule:
    """A copy of ``gm`` returning the values of the named nodes (a tuple, in ``names`` order)."""
    g = copy.deepcopy(gm)
    by_name = {n.name: n for n in g.graph.nodes}
    out = next(n for n in g.graph.nodes if n.op == "output")
    out.args = (tuple(by_name[n] for n in names),)
    g.graph._codegen = torch.fx.graph.CodeGen()
    g.graph.eliminate_dead_code()
    g.recompile()
    return g


def _linear_nodes(gm) -> list[str]:
    return [n.name for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in _LINEAR_OPS]


def _bias_attr(gm, node_name: str) -> str | None:
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    b = node.args[2] if len(node.args) > 2 else None
    while isinstance(b, torch.fx.Node) and b.op != "get_attr":
        b = b.args[0] if b.args else None
    return b.target if isinstance(b, torch.fx.Node) else None


def _channel_means(gm, names, samples) -> dict[str, np.ndarray]:
    g = _graph_outputs(gm, names)
    sums: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for s in samples:
            outs = g(*[torch.from_numpy(np.ascontiguousarray(a)) for a in s])
            for name, t in zip(names, outs):
                dims = [d for d in range(t.dim()) if d != 1]
                m = t.double().mean(dim=dims).numpy()
                sums[name] = sums.get(name, 0) + m
    return {k: v / len(samples) for k, v in sums.items()}


def _tensor(gm, target: str) -> torch.Tensor:
    module_path, _, attr = target.rpartition(".")
    return getattr(gm.get_submodule(module_path) if module_path else gm, attr)


def _is_depthwise(gm, name: str) -> bool:
    node = next(n for n in gm.graph.nodes if n.name == name)
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return "conv" in str(node.target) and isinstance(groups, int) and groups > 1


def correct_bias(prepared, reference_gm, samples, convert, max_samples: int = 32, depthwise_only: bool = True) -> int:
    """Empirical bias correction on a calibrated ``prepared`` model (in place, its float biases).

    ``reference_gm``: the float model exported the same way (same node names, BatchNorm folded);
    ``convert``: prepared -> converted model. Layers are corrected one at a time in graph order on
    the converted model (each measured on a graph cut right after it, with every earlier layer
    already corrected): correcting all at once overshoots, since each correction moves the input
    mean of every later layer. Returns the number of corrected layers."""
    samples = tuple(samples)[:max_samples]
    converted = convert(copy.deepcopy(prepared))
    names = [n for n in _linear_nodes(reference_gm) if n in set(_linear_nodes(converted))]
    targets = {n: (_bias_attr(prepared, n), _bias_attr(converted, n)) for n in names}
    names = [n for n in names if None not in targets[n] and (not depthwise_only or _is_depthwise(reference_gm, n))]
    ref = _channel_means(reference_gm, names, samples)
    with torch.no_grad():
        for n in names:
            delta = torch.from_numpy(_channel_means(converted, [n], samples)[n] - ref[n])
            for gm, target in zip((prepared, converted), targets[n]):
                b = _tensor(gm, target)
                b.sub_(delta.to(b.dtype))
    return len(names)
