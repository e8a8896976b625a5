"""Per-layer views shared by the targets: the helpers every per-layer check uses (which reference
node computes a quantized tensor, which module it belongs to, running the quantized reference with
some tensors replaced by the runtime's own), the FP32 cost per layer, and keep-float suggestions.

Each target's own view lives in its package (``per_layer.py``; tflite's documents the method in
full) and follows one method: run the artifact keeping its
intermediate tensors, match them to the reference's activation quantize nodes, re-run the reference
with the runtime's tensors injected so each reference op computes from exactly the runtime's input,
and compare each op's result in quantization steps. A layer more than FLAG_STEPS steps off is flagged.
Rows are JSON-safe: {"layer", "op", "module", "max_steps", "mean_steps", "worst_channel", "sqnr_db",
"flagged"}.
"""
from __future__ import annotations

from typing import Collection

import numpy as np

FLAG_STEPS = 2.0  # a layer more than this many steps from its reference is flagged (clean: <= 1)


def q_nodes(gm):
    """Activation quantize_per_tensor nodes of the reference (not weights / biases), graph order."""
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_tensor"):
            src = n.args[0]
            if isinstance(src, type(n)) and src.op == "get_attr":
                continue
            if n.args[5] != __import__("torch").int8 if len(n.args) > 5 else False:
                continue
            out.append(n)
    return out


def channel_max(diff: np.ndarray) -> np.ndarray:
    """Per-channel worst of a (N, C, ...) step difference; a tensor of rank < 2 is one channel."""
    if diff.ndim >= 2:
        return diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2))
    return np.array([diff.max()]) if diff.size else np.zeros(1, diff.dtype)


def producer(qnode):
    """The compute node whose output a quantize node quantizes: a conv fused with its ReLU is
    named by the conv (the ReLU is the quantizer's clamp)."""
    src = qnode.args[0]
    if src.op == "call_function" and any(k in str(src.target) for k in ("relu", "hardtanh")):
        inner = src.args[0]
        if inner.op == "call_function" and any(k in str(inner.target) for k in ("conv", "linear")):
            return inner
    return src


def module_of(node) -> str:
    """The user's module path that made ``node`` (edgekit.quant.plain_layers' inner layers named as their wrapper)."""
    from .plain_layers import original_name

    stack = node.meta.get("nn_module_stack") or {}
    return original_name(list(stack.values())[-1][0].removeprefix("L['self'].")) if stack else ""


def run_injected(gm, args: tuple, inject: dict, watch: Collection[str] = ()) -> dict:
    """Run the reference on torch tensors ``args``; each node named in ``inject`` returns the given
    tensor instead of its own value, and what the reference itself computed there (from injected
    inputs) is returned by name, with the value of each node named in ``watch``. Shared by the
    targets' per-layer views."""
    import torch

    computed = {}

    class _Injected(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in inject or n.name in watch:
                computed[n.name] = out
            return inject.get(n.name, out)

    with torch.no_grad():
        _Injected(gm).run(*args)
    return computed


def float_sqnr(reference_gm, float_model, samples, names: list[str]) -> dict[str, float]:
    """SQNR (dB) of the reference's float value at each named compute node vs the same node of the
    float model (exported the same way, BatchNorm folded as prepare_pt2e does)."""
    import torch
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from .equalize import _graph_outputs
    from .pt2e import remove_identities

    example = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in samples[0])
    fg = torch.export.export(float_model.eval(), example).module()
    remove_identities(fg)
    _fuse_conv_bn_(fg)
    def same_op(a, b):
        va, vb = a.meta.get("val"), b.meta.get("val")
        return a.target == b.target and va is not None and vb is not None and tuple(va.shape) == tuple(vb.shape)

    fnodes = {n.name: n for n in fg.graph.nodes}
    rnodes = {n.name: n for n in reference_gm.graph.nodes}
    names = [n for n in names if n in fnodes and n in rnodes and same_op(fnodes[n], rnodes[n])
             and any(k in str(rnodes[n].target) for k in ("conv", "linear", "add"))]
    if not names:
        return {}
    gf, gr = _graph_outputs(fg, names), _graph_outputs(reference_gm, names)
    sig, err = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    with torch.no_grad():
        for s in samples:
            args = [torch.from_numpy(np.ascontiguousarray(a)) for a in s]
            for n, f, r in zip(names, gf(*args), gr(*args)):
                f, r = f.double(), r.double()
                sig[n] += float((f * f).sum())
                err[n] += float(((r - f) ** 2).sum())
    return {n: round(10 * float(np.log10(max(sig[n], 1e-30) / max(err[n], 1e-30))), 2) for n in names}


def keep_float_suggestions(rows: list[dict], n: int = 3) -> list[str]:
    """The modules of the n layers with the lowest reference-vs-FP32 SQNR (``--keep-float`` candidates)."""
    with_sq = [r for r in rows if r.get("sqnr_db") is not None and r.get("module")]
    return [r["module"] for r in sorted(with_sq, key=lambda r: r["sqnr_db"])[:n]]

