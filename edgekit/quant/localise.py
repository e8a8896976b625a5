"""Where an INT8 model loses precision: per-layer compression cost of the quantized reference vs FP32.

``localise(reference_gm, float_model, samples)`` -> rows, one per conv / linear / add of the
reference, in graph order:
- ``sqnr_db``: the reference's value at that layer against the FP32 model's (cumulative: every
  quantization upstream counts);
- ``drop_db``: how much SQNR is lost at this layer, i.e. the SQNR of its worst upstream layer
  minus its own: the quantization of its weights and of the tensor it reads (a layer's value is
  taken before its own output quantize, so an input's range problem shows at the reader). Cumulative SQNR falls with depth in every network, so the *lowest* SQNR points at
  the last layers; the largest *drop* points at the layers that cause the loss, the ones worth
  ``--keep-float``.
``suggest_keep_float(rows, n)``: the modules of the n layers with the largest drop.
Independent of any runtime (the artifact's own fidelity is judged elsewhere); runs in the parent
process on a few held-out samples.
"""
from __future__ import annotations

from .per_layer import float_sqnr, module_of

_PASS_THROUGH = ("quantize", "dequantize", "relu", "hardtanh", "clamp", "view", "reshape", "flatten",
                 "permute", "transpose", "mean", "avg_pool", "max_pool", "adaptive", "gelu", "tanh",
                 "dropout", "clone", "contiguous")


def _layers(gm) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and any(k in str(n.target) for k in ("conv", "linear", "add"))
            and "quantize" not in str(n.target)]


def _inputs(node, named: set[str]) -> set[str]:
    """The nearest named layers upstream of ``node`` (through q/dq, activations and reshapes)."""
    found, stack, seen = set(), [a for a in node.all_input_nodes], set()
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.name in named:
            found.add(n.name)
        elif n.op == "call_function" and any(k in str(n.target) for k in _PASS_THROUGH):
            stack.extend(n.all_input_nodes)
    return found


def localise(reference_gm, float_model, samples) -> list[dict]:
    """Per-layer SQNR vs FP32 and the SQNR each layer loses itself (see the module docstring)."""
    samples = list(samples)
    if not samples:
        return []
    layers = _layers(reference_gm)
    sq = float_sqnr(reference_gm, float_model, samples, [n.name for n in layers])
    named = set(sq)
    rows = []
    for n in layers:
        if n.name not in sq:
            continue
        ups = [sq[u] for u in _inputs(n, named)]
        upstream = min(ups) if ups else None
        drop = None if upstream is None else round(upstream - sq[n.name], 2)
        rows.append({"layer": n.name, "module": module_of(n), "sqnr_db": sq[n.name], "drop_db": drop})
    return rows


def suggest_keep_float(rows: list[dict], n: int = 3) -> list[str]:
    """Modules of the (at most) n layers that lose the most SQNR themselves, worst first; adds are
    left out (they are not modules one can keep float), and so are layers that lose < 1 dB."""
    cands = [r for r in rows if r.get("module") and r.get("drop_db") is not None and r["drop_db"] >= 1.0
             and "add" not in r["layer"]]
    out: list[str] = []
    for r in sorted(cands, key=lambda r: -r["drop_db"]):
        if r["module"] not in out:
            out.append(r["module"])
        if len(out) == n:
            break
    return out
