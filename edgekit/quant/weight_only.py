"""Weight-only precisions (``fp16`` and ``dynamic``): the PyTorch reference of what the artifact stores.

A weight-only artifact changes the stored weights, not the graph: ``fp16`` keeps every Linear/Conv
weight as float16, ``dynamic`` as int8, symmetric, one scale per output channel (quant range
-127..127, scale = max|w| / 127). ``simulate`` returns a deep copy of the model whose weights are
exactly those stored numbers, back in float32. Saved with ``save_quantized_reference``, it is the
conversion-fidelity reference (does the file compute what its stored weights say); compression cost
is judged against the FP32 model as always.

What the reference does NOT model: runtimes that run ``dynamic`` weights with hybrid kernels also
quantize activations to int8 at run time (per tensor or per row, range taken from the tensor
itself), and fp16 runtimes may compute in fp16. That rounding is what a target's tolerance for the
precision covers (measured per target, see the converters).
"""
from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from .reference import reference_name

WEIGHT_ONLY = ("fp16", "dynamic")  # the schemes whose reference is this simulation
DEFAULT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
WITH_EMBEDDING = DEFAULT_TYPES + (nn.Embedding,)
QMAX = 127  # symmetric int8: -127..127


def fp16_weight(w: torch.Tensor) -> torch.Tensor:
    """The float16 value a file stores for ``w``, back in float32 (round to nearest even)."""
    return w.detach().to(torch.float16).to(w.dtype)


def int8_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, per-output-channel scales) of symmetric per-channel quantization of ``w``.
    An all-zero channel gets scale 1 (its values stay 0)."""
    flat = w.detach().reshape(w.shape[0], -1)
    amax = flat.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(flat / scale[:, None]), -QMAX, QMAX)  # round half to even, as torch quantize
    return q.to(torch.int8).reshape(w.shape), scale


def int8_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 per-channel quantize -> dequantize of ``w`` (float32)."""
    q, scale = int8_per_channel(w)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (q.to(w.dtype) * scale.reshape(shape).to(w.dtype)).to(w.dtype)


_APPLY = {"fp16": fp16_weight, "dynamic": int8_weight}


# op -> (layer class, index of its weight argument)
_OPS = {"aten.linear.default": (nn.Linear, 1), "aten.conv1d.default": (nn.Conv1d, 1),
        "aten.conv2d.default": (nn.Conv2d, 1), "aten.embedding.default": (nn.Embedding, 0)}


def _module_path(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    return list(stack.values())[-1][0].removeprefix("L['self'].").replace("L['self']", "")


def int8_per_tensor_weight(w: torch.Tensor) -> torch.Tensor:
    """int8 symmetric per-tensor quantize -> dequantize (how TFLite stores a large constant such as
    an embedding table in dynamic-range mode)."""
    amax = float(w.detach().abs().max())
    scale = amax / QMAX if amax > 0 else 1.0
    return (torch.clamp(torch.round(w.detach() / scale), -QMAX, QMAX) * scale).to(w.dtype)


def quantized_weight_layers(converted: torch.fx.GraphModule) -> set[str]:
    """Module paths of the layers whose weight a PT2E ``convert_pt2e`` program quantizes (a
    per-channel dequantize feeding a linear/conv): what a dynamic PT2E quantizer really covered."""
    out = set()
    for node in converted.graph.nodes:
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            out.update(_module_path(u) for u in node.users if str(u.target) in _OPS)
    return out


def simulate(model: nn.Module, scheme: str, example_inputs: tuple, recipe=None,
             types: Iterable[type] = DEFAULT_TYPES, only: set[str] | None = None,
             per_tensor: Iterable[type] = ()) -> torch.fx.GraphModule:
    """The model as the artifact stores it: ``torch.export`` of a copy, BatchNorm folded into the
    preceding conv (what every converter here does before it writes weights), then each weight of a
    ``types`` layer replaced by its stored value (fp16 rounding or int8 per-channel q->dq).

    scheme: "fp16" or "dynamic". recipe: its ``keep_float`` layers keep float32 weights (dynamic
    only: an unknown name is E-ARGS via keep_float_modules). types: the layer classes the target
    actually converts (e.g. a runtime whose dynamic kernels cover Linear only passes (nn.Linear,)).
    only: restrict to these module paths (what a target's quantizer reported it covered).
    per_tensor: layer classes quantized with one scale per tensor (dynamic). Biases stay float32.
    """
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    if scheme not in _APPLY:
        from edgekit.errors import UserError

        raise UserError("E-ARGS", f"weight-only scheme {scheme!r} is not one of {sorted(_APPLY)}",
                        f"use one of {', '.join(sorted(_APPLY))}")
    model = copy.deepcopy(model).eval()
    kept: set[str] = set()
    if scheme == "dynamic" and recipe is not None and recipe.keep_float:
        from .recipe import keep_float_modules

        kept = set(keep_float_modules(model, recipe))
    example_inputs = tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in example_inputs)
    gm = torch.export.export(model, example_inputs).module()
    _fuse_conv_bn_(gm)
    types = tuple(types)
    apply = _APPLY[scheme]
    done, count = set(), 0
    with torch.no_grad():
        for node in gm.graph.nodes:
            kind, pos = _OPS.get(str(node.target), (None, 0)) if node.op == "call_function" else (None, 0)
            w = node.args[pos] if kind is not None and len(node.args) > pos else None
            if not isinstance(w, torch.fx.Node) or w.op != "get_attr" or w.target in done:
                continue
            path = _module_path(node)
            if not issubclass(kind, types) or path in kept or (only is not None and path not in only):
                continue
            param = gm.get_parameter(w.target) if w.target in dict(gm.named_parameters()) else gm.get_buffer(w.target)
            fn = int8_per_tensor_weight if scheme == "dynamic" and issubclass(kind, tuple(per_tensor) or ()) else apply
            param.copy_(fn(param))
            done.add(w.target)
            count += param.numel()
    gm.weight_only_layers = len(done)
    gm.weight_only_params = count
    return gm


def weight_only_meta(recipe, spec_name: str, target: str, sim, notes: list[str] = ()) -> dict:
    """The artifact meta keys a weight-only artifact shares across targets."""
    return {
        "reference": reference_name(spec_name, target, recipe.scheme),
        "recipe": recipe.to_dict(),
        "recipe_summary": recipe.describe(),
        "weight_only_layers": sim.weight_only_layers,  # weights the reference stores in the scheme's precision
        "weight_only_params": sim.weight_only_params,  # their element count
        "kept_float": sorted(recipe.keep_float) if recipe.scheme == "dynamic" else [],
        "quant_notes": list(notes),
    }


def write_reference(model: nn.Module, recipe, example_inputs: tuple, out_dir, spec_name: str, target: str,
                    **select) -> tuple[nn.Module, str]:
    """Simulate, save the reference program next to the artifact; -> (simulated model, file name)."""
    from pathlib import Path

    from .reference import save_quantized_reference

    sim = simulate(model, recipe.scheme, example_inputs, recipe, **select)
    name = reference_name(spec_name, target, recipe.scheme)
    example = tuple(torch.empty_like(x, memory_format=torch.contiguous_format).copy_(x) for x in example_inputs)
    save_quantized_reference(sim, example, Path(out_dir) / name)
    return sim, name
