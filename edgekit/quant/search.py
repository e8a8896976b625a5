"""Budget search: the cheapest per-layer precision assignment (int8, or float for the layers that
lose most) whose quantized reference meets the user's budget (edgekit.budget) on held-out data.

``search(model, example, calibration, held_out, fp32_outputs, recipe, budget, spec)``:
1. trial 0 quantizes everything (the recipe as given) and measures the budget's metrics of its
   PT2E quantized reference against the FP32 outputs on the held-out samples;
2. if that misses, each conv/linear layer's sensitivity is measured on calibration samples (its
   int8 output noise per extra float byte, edgekit.quant.mixed), and the most sensitive layers are
   kept float: 1, 2, 4, ... of them until the budget is met, then the fewest between the last miss
   and that hit (bisection), at most ``max_trials`` trials in all;
3. if every layer float still misses (the quantized residual adds, poolings and block outputs then
   cost the rest: MobileNetV2's agreement>=0.99 stopped at 0.89 with all 53 layers float), the blocks
   that hold the layers (``_blocks``: e.g. its inverted residuals) are kept float the same way, 1, 2,
   4, ... of them, on top of every layer; the size estimate counts weights only, so those trials
   cost latency and no bytes, and the fewest blocks that meet it is chosen;
4. -> the recipe with the chosen ``keep_float`` and every trial (float layers, estimated size,
   metrics, met), for the report. None meeting it: E-BUDGET-UNMET naming the best trial.
The trials run the float simulation of each quantizer placement among the job's PT2E targets (their
``pt2e_quantizer``: litert-torch's for tflite, XNNPACK's for executorch and onnx), and a trial meets the
budget only if every one does (XNNPACK quantizes residual adds that litert-torch leaves float); the exported
files are then verified against the budget for real, each in its runtime, like any export. Learned
rounding (AdaRound) is left out of the trials (they round to nearest: minutes saved per trial) and
applied to the chosen point only.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

from edgekit.errors import UserError

from .recipe import QuantRecipe, keep_float_modules

MAX_TRIALS = 16


@dataclass(frozen=True)
class Trial:
    keep_float: tuple[str, ...]
    size_bytes: int  # estimated parameter bytes: int8 weights of quantized layers, float32 for the rest
    metrics: dict  # the budget's metrics (edgekit.budget.measured)
    met: bool
    seconds: float
    blocks: int = 0  # whole blocks among keep_float (trials after every layer float missed)

    def to_dict(self) -> dict:
        return {**asdict(self), "keep_float": list(self.keep_float)}


def search(model, example: tuple, calibration, held_out, fp32_outputs, recipe: QuantRecipe, budget, spec, quantizer,
           progress=lambda *a: None, max_trials: int = MAX_TRIALS) -> tuple[QuantRecipe, list[Trial]]:
    """See the module docstring. ``held_out``: a CalibrationSet (its labels feed accuracy_drop);
    ``quantizer``: makes a PT2E Quantizer (a target's ``pt2e_quantizer``), or a sequence of such
    factories, one per placement of the job's targets: a trial meets the budget only if every
    placement's simulation does, and records the worst figures of them."""
    quantizers = (quantizer,) if callable(quantizer) else tuple(quantizer)
    base = recipe.with_(rounding="nearest")
    trials: list[Trial] = []

    def trial(keep: tuple[str, ...], blocks: int = 0) -> Trial:
        what = f"{blocks} block(s) and every layer" if blocks else f"{len(keep)} layer(s)"
        progress(f"budget search: trial {len(trials) + 1}, {what} kept float")
        t = _trial(model, example, calibration, held_out, fp32_outputs, base.with_(keep_float=keep), budget, spec, quantizers)
        trials.append(replace(t, blocks=blocks))
        return trials[-1]

    first = trial(recipe.keep_float)
    if first.met:
        return recipe, trials
    ranked = _sensitive_layers(model, calibration, base)
    if not _fewest(lambda k: trial(recipe.keep_float + tuple(ranked[:k])).met, len(ranked), trials, max_trials):
        blocks = _blocks(model, ranked)  # every layer float missed: what sits between layers (residual adds) costs
        _fewest(lambda k: trial(recipe.keep_float + _with_blocks(ranked, blocks[:k]), k).met, len(blocks), trials, max_trials)
    met = [t for t in trials if t.met]
    if not met:
        best = max(trials, key=lambda t: _score(t.metrics))
        raise UserError("E-BUDGET-UNMET", f"no assignment of the {len(trials)} tried meets --budget {budget.describe()}; "
                        f"the best ({kept_float_count(best.to_dict())} float) reached {_figures(best.metrics)}",
                        "loosen the budget, add calibration data, or try --rounding adaround / --equalize")
    chosen = min(met, key=lambda t: (t.size_bytes, t.blocks, len(t.keep_float)))  # bytes, then latency
    return recipe.with_(keep_float=chosen.keep_float), trials


def kept_float_count(trial: dict) -> str:
    """A budget search trial's float modules: "5 layer(s)", or "2 block(s) + 3 layer(s)" (the layers no block holds)."""
    blocks = trial.get("blocks", 0)
    layers = f"{len(trial['keep_float']) - blocks} layer(s)"
    return f"{blocks} block(s) + {layers}" if blocks else layers


def _fewest(meets, n: int, trials: list, max_trials: int) -> bool:
    """The fewest k of 1..n with meets(k): 1, 2, 4, ... until one meets, then bisection between the last
    miss and that hit, while fewer than max_trials trials ran. -> whether any k met."""
    lo, hi, k = 0, None, 1
    while hi is None and len(trials) < max_trials and n:
        k = min(k, n)
        if meets(k):
            hi = k
        elif k == n:
            break
        else:
            lo, k = k, 2 * k
    while hi is not None and hi - lo > 1 and len(trials) < max_trials:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    return hi is not None


def _blocks(model, ranked: list[str]) -> list[str]:
    """The blocks holding the ranked layers, in the order of their most sensitive layer: a layer's outermost
    enclosing module below the root that has a forward of its own (not a Sequential/ModuleList/ModuleDict),
    e.g. MobileNetV2's inverted residuals. Kept float, a block keeps float what its layers alone do not:
    its residual add and the tensors it reads and writes. A layer with no such block is left out."""
    from torch import nn

    modules = dict(model.named_modules())
    blocks: list[str] = []
    for layer in ranked:
        parts = layer.split(".")
        for i in range(1, len(parts)):
            path = ".".join(parts[:i])
            if type(modules.get(path)) not in (nn.Sequential, nn.ModuleList, nn.ModuleDict):
                if path not in blocks:
                    blocks.append(path)
                break
    return blocks


def _with_blocks(layers: list[str], blocks: list[str]) -> tuple[str, ...]:
    """The blocks, then the layers none of them holds."""
    return tuple(blocks) + tuple(n for n in layers if not any(n.startswith(b + ".") for b in blocks))


def _trial(model, example, calibration, held_out, fp32_outputs, recipe, budget, spec, quantizers) -> Trial:
    from edgekit.accuracy import accuracy
    from edgekit.budget import measured
    from edgekit.parity import cost_metrics
    from edgekit.reference import run_reference

    from .pt2e import quantize

    t0 = time.monotonic()
    each = []
    for quantizer in quantizers:
        q = quantize(model, example, calibration.samples, recipe, quantizer())
        outputs = run_reference(q.module, held_out.samples)
        each.append(measured(cost_metrics(fp32_outputs, outputs, spec.output_names, spec.task_spec),
                             accuracy(fp32_outputs, outputs, held_out.labels, spec)))
    got = _worst(each)
    return Trial(recipe.keep_float, _size(model, recipe), got, not any(budget.missed(m) for m in each),
                 round(time.monotonic() - t0, 1))


def _worst(each: list[dict]) -> dict:
    """The worst of several simulations' budget metrics (lowest agreement and SQNR, largest accuracy drop)."""
    def pick(key, fn):
        values = [m[key] for m in each if m.get(key) is not None]
        return fn(values) if values else None
    return {"agreement": pick("agreement", min), "sqnr": pick("sqnr", min), "accuracy_drop": pick("accuracy_drop", max)}


def _sensitive_layers(model, calibration, recipe) -> list[str]:
    """Conv/linear modules, the most int8 noise per extra float byte first (edgekit.quant.mixed: each
    layer alone quantized, its weights and the tensor it reads, on calibration samples)."""
    from .mixed import ranked

    return [r.layer for r in ranked(model, calibration.samples, recipe)]


def _size(model, recipe: QuantRecipe) -> int:
    """Parameter bytes: conv/linear weights int8 unless kept float, everything else float32."""
    from torch import nn

    kept = set(keep_float_modules(model, recipe)) if recipe.keep_float else set()
    total = 0
    for name, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            int8 = pname == "weight" and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name not in kept
            total += p.numel() * (1 if int8 else 4)
    return total


def _score(m: dict) -> tuple:
    return tuple(-1e9 if m.get(k) is None else (m[k] if k != "accuracy_drop" else -m[k]) for k in ("agreement", "sqnr", "accuracy_drop"))


def _figures(m: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in m.items() if v is not None) or "nothing measurable"
