"""MobileNetV2 INT8 with its most int8-sensitive layers kept float (recipe.float_share, edgekit/quant/mixed.py).

Protocol: bench/int8_eval_set.py (64 calibration crops of files 1-32, 256 held-out crops of files 33-48),
metrics vs the FP32 model on the held-out crops. Each row is the PT2E quantized reference (the float
simulation the target's file is verified against) of one target's quantizer: what layers are float,
how they were chosen, the rounding, top-1 agreement and logit SQNR. The real files are measured in
bench/int8_mobilenet_v2.py.

Rows:
- float_share S: the layers edgekit's sensitivity measurement chooses within S of the int8 weight bytes;
- float set: a hand-named set of layers (to see what choosing differently costs);
- both with nearest rounding and with learned rounding (AdaRound, cached under /tmp);
- tflite only: other levers (calibrators, CLE, bias correction) with five early layers float.

Run: nice -n 10 python bench/mixed_mobilenet_v2.py [tflite|executorch ...]  -> bench/results/mixed_mobilenet_v2.{json,md}
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import Timer, metrics, run_batched, unguard  # noqa: E402
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.converters import get as get_converter  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "mixed_mobilenet_v2.json"
STEM_AND_BLOCK_1 = ("features.0.0", "features.1.conv.0.0", "features.1.conv.1")
FIVE = STEM_AND_BLOCK_1 + ("features.2.conv.0.0", "features.2.conv.1.0")
ROWS = [  # (label, float_share, hand-named float layers, rounding)
    ("all int8", 0.0, (), "nearest"),
    ("all int8, AdaRound", 0.0, (), "adaround"),
    ("float_share 0.002", 0.002, (), "nearest"),
    ("float_share 0.002, AdaRound", 0.002, (), "adaround"),
    ("float_share 0.005", 0.005, (), "nearest"),
    ("float_share 0.01", 0.01, (), "nearest"),
    ("float_share 0.02", 0.02, (), "nearest"),
    ("float: the first depthwise alone", 0.0, ("features.1.conv.0.0",), "nearest"),
    ("float: stem + block 1 + block 2's expansion and depthwise", 0.0, FIVE, "nearest"),
]
# other levers with those five layers float: (label, recipe changes)
LEVERS = [("five float, calibrator mse", {"calibrator": "mse"}), ("five float, calibrator entropy", {"calibrator": "entropy"}),
          ("five float, calibrator minmax", {"calibrator": "minmax"}), ("five float, percentile 99.999", {"percentile": 99.999}),
          ("five float, CLE", {"equalize": True}), ("five float, empirical bias correction", {"bias_correction": True})]


def main(targets: list[str]) -> None:
    s = mobilenet_v2_setup()
    old = json.loads(OUT.read_text()) if OUT.is_file() else {}
    rows = [r for r in old.get("rows", []) if old.get("protocol") == s["meta"]]
    for target in targets:
        conv = get_converter(target)
        plans = [(label, QuantRecipe(minmax_output=True, rounding=rounding, float_share=share, keep_float=hand))
                 for label, share, hand, rounding in ROWS]
        plans += [(label, QuantRecipe(minmax_output=True, keep_float=FIVE, **changes)) for label, changes in LEVERS
                  if target == "tflite"]
        for label, recipe in plans:
            if any(r["target"] == target and r["label"] == label for r in rows):
                continue
            with Timer() as t, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chosen, picked = sensitive_float(s["lm"].module, s["calib"], recipe)
                q = quantize(s["lm"].module, s["example"], s["calib"], chosen, conv.pt2e_quantizer(),
                             fold_quantize=target == "executorch", cache_dir="/tmp/edgekit_bench_adaround")
            m = metrics(run_batched(unguard(q.module), s["held"]), s["fp32"])
            weights = sum(mod.weight.numel() for n, mod in s["lm"].module.named_modules()
                          if n in chosen.keep_float and hasattr(mod, "weight"))
            rows.append({"target": target, "label": label, "recipe": recipe.describe(), "rounding": recipe.rounding,
                         "float_share": recipe.float_share,
                         "float_layers": list(chosen.keep_float), "float_weights": weights,
                         "chosen_db_alone": {p.layer: round(p.db, 1) for p in picked}, **m, "seconds": t.s})
            print(target, label, m, t.s, flush=True)
            _write(s, rows)


def _write(s, rows) -> None:
    OUT.write_text(json.dumps({"model": "mobilenet_v2 (ImageNet weights)", "protocol": s["meta"], "rows": rows}, indent=1) + "\n")
    lines = ["# MobileNetV2 INT8 with its most int8-sensitive layers kept float\n",
             f"Calibration: {s['meta']['calibration']}. Evaluation: {s['meta']['held_out']}. Metrics vs the FP32 model "
             "on the held-out crops, of each target's PT2E quantized reference (what its file is verified against). "
             "Recipe: percentile 99.99, min/max logits, conv+ReLU6 fused; a float layer keeps its ReLU6 float with it. "
             "Run: `python bench/mixed_mobilenet_v2.py tflite executorch`.\n",
             "| target | row | rounding | float layers (weights) | top-1 agree | SQNR dB | s |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        layers = ", ".join(r["float_layers"]) or "none"
        lines.append(f"| {r['target']} | {r['label']} | {r['rounding']} | {layers} ({r['float_weights']:,}) | "
                     f"{r['top1_agree']:.3f} | {r['sqnr_db']:.2f} | {r['seconds']} |")
    (RESULTS / "mixed_mobilenet_v2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tflite", "executorch"])
