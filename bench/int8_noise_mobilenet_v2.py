"""Where MobileNetV2's INT8 error comes from, with today's default recipe (what `edgekit export mobilenet_v2
--quant int8` uses: percentile 99.99, min/max logits, its three int8-sensitive layers float), per placement.

Each row is the quantized reference (convert_pt2e float simulation) of one placement, edited by graph
surgery, scored vs FP32 on the 256 held-out crops of bench/int8_eval_set.py (top-1 agreement, SQNR):
- default: as exported;
- weights float: every weight dequantize bypassed (activations still int8): what activations alone cost;
- activations float: every activation quantize/dequantize pair bypassed (weights still int8);
- adds read float: each residual add reads its inputs before their quantize/dequantize pair (ncnn's
  structure: the projection's and the skip's values unrounded; the add's output still rounded);
- an add's skip input from the previous add float: only the add -> add edges (what tflite's placement
  does, and its .tflite too: consecutive ADDs run in float between DEQUANTIZEs; XNNPACK's rounds them);
- FP32 with its input on the int8 input grid (the calibrated input range, 256 levels): what the int8
  input alone costs, however good the rest;
- per activation site (tflite placement only, 64 of the crops): the SQNR gained when that one site is
  left float, the ten largest.
Writes bench/results/int8_noise_mobilenet_v2.{json,md}. Run: nice python bench/int8_noise_mobilenet_v2.py
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import metrics, run_batched, unguard  # noqa: E402
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.converters import get as get_converter  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _dq(n) -> bool:
    return n.op == "call_function" and "dequantize" in str(n.target)


def _q(n) -> bool:
    return n.op == "call_function" and "quantize_per" in str(n.target) and "dequantize" not in str(n.target)


def _pairs(gm, weights: bool):
    """(quantize node, its dequantize users) of the weights or of the activations."""
    for q in [n for n in gm.graph.nodes if _q(n)]:
        if (q.args[0].op == "get_attr") == weights:
            yield q, [u for u in q.users if _dq(u)]


def _bypass(gm, pairs) -> None:
    for q, dqs in pairs:
        for d in dqs:
            d.replace_all_uses_with(q.args[0])
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _is_add(n) -> bool:
    return n.op == "call_function" and str(n.target).startswith("aten.add")


def _adds_read_float(gm, skip_only: bool = False) -> int:
    n = 0
    for add in [x for x in gm.graph.nodes if _is_add(x)]:
        for a in list(add.args):
            if isinstance(a, torch.fx.Node) and _dq(a) and _q(a.args[0]) and (not skip_only or _is_add(a.args[0].args[0])):
                add.replace_input_with(a, a.args[0].args[0])
                n += 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return n


def _reference(s, target: str, recipe: QuantRecipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return unguard(quantize(s["lm"].module, s["example"], s["calib"], recipe, get_converter(target).pt2e_quantizer()).module)


def _sites(s, recipe: QuantRecipe) -> list[dict]:
    held, fp32 = s["held"][::4], s["fp32"][::4]
    gm = _reference(s, "tflite", recipe)
    base = metrics(run_batched(gm, held), fp32)["sqnr_db"]
    rows = []
    for q, dqs in list(_pairs(gm, weights=False)):
        users = {d: list(d.users) for d in dqs}
        src = q.args[0]
        for d in dqs:
            d.replace_all_uses_with(src)
        gm.recompile()
        gain = metrics(run_batched(gm, held), fp32)["sqnr_db"] - base
        rows.append({"site": src.name, "scale": float(q.args[1]), "gain_db": round(gain, 2)})
        for d, us in users.items():
            for u in us:
                u.replace_input_with(src, d)
        gm.recompile()
    return sorted(rows, key=lambda r: -r["gain_db"])


def main() -> None:
    s = mobilenet_v2_setup()
    recipe = QuantRecipe().with_(**s["lm"].quant_defaults["int8"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe, _ = sensitive_float(s["lm"].module, s["calib"], recipe)
    out = {"recipe": recipe.describe(), "keep_float": list(recipe.keep_float), "rows": []}
    for target in ("tflite", "executorch"):
        for variant, edit in (("default", None), ("weights float", lambda g: _bypass(g, list(_pairs(g, True)))),
                              ("activations float", lambda g: _bypass(g, list(_pairs(g, False)))),
                              ("adds read float", _adds_read_float),
                              ("an add's skip input from the previous add float", lambda g: _adds_read_float(g, True))):
            gm = _reference(s, target, recipe)
            if edit:
                edit(gm)
            out["rows"].append({"placement": target, "variant": variant, **metrics(run_batched(gm, s["held"]), s["fp32"])})
            print(json.dumps(out["rows"][-1]), flush=True)
    lo, hi = (float(f(np.stack([c[0] for c in s["calib"]]))) for f in (np.min, np.max))
    scale = (hi - lo) / 255
    zero = np.round(-lo / scale)
    on_grid = [tuple(((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32) for x in t)
               for t in s["held"]]
    out["rows"].append({"placement": "fp32 model", "variant": "input on the int8 grid",
                        **metrics(run_batched(s["lm"].module, on_grid), s["fp32"])})
    out["sites"] = _sites(s, recipe)[:10]
    (RESULTS / "int8_noise_mobilenet_v2.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = ["# MobileNetV2 INT8: where the error comes from (default recipe, references edited by graph surgery)\n",
             f"Recipe: `{out['recipe']}`, float: {', '.join(out['keep_float'])}. 256 held-out crops vs FP32.\n",
             "| placement | variant | top-1 agree | SQNR dB |", "|---|---|---|---|"]
    lines += [f"| {r['placement']} | {r['variant']} | {r['top1_agree']:.3f} | {r['sqnr_db']} |" for r in out["rows"]]
    lines += ["\nActivation sites whose rounding costs most (tflite placement, 64 crops; the SQNR gained when that site "
              "alone is float):\n",
              "| site | scale | gain dB |", "|---|---|---|"]
    lines += [f"| {r['site']} | {r['scale']:.4g} | {r['gain_db']} |" for r in out["sites"]]
    (RESULTS / "int8_noise_mobilenet_v2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
