"""MobileNetV2 int16x8 (TFLite 16x8: int16 activations, int8 weights) next to INT8, on the INT8 bench's protocol.

Data (bench/int8_eval_set.py): 64 calibration crops (files 1-32) and 256 held-out crops (files 33-48).
Every row: top-1 agreement and logit SQNR vs FP32 on the 256 held-out crops, for the quantized
reference (convert_pt2e float simulation) and for the real .tflite in ai-edge-litert (1 thread), with
the file's error in steps of its own int16 output grid vs its reference, size and latency (median,
1 thread). The int8 row is read from bench/results/int8_mobilenet_v2.json (edgekit's int8 recipe).

Rows (argument: recipe names below, default all but "adaround" and "model"):
- default:   QuantRecipe(scheme="int16x8") (percentile 99.99, nearest weights), what a model without
             measured settings gets with `--quant int16x8`;
- minmax:    the same, min/max calibrator (with 65535 levels nothing needs clipping);
- bc:        default + empirical bias correction;
- adaround:  AdaRound weights and a min/max output range: 4-5 minutes;
- model:     MobileNetV2's measured int16x8 settings (edgekit/models/__init__.py), what
             `edgekit export mobilenet_v2 --quant int16x8` uses: its int16x8-sensitive layers float
             (float_share, chosen as the pipeline does), AdaRound, bias correction, min/max ranges;
- and "ceiling": the float model with only its conv/linear weights on their int8 per-channel grid
  (BatchNorm folded, max(max|w| / 127, 2^-12) per channel, round to nearest; activations float):
  what int16x8 tends to once activation noise is gone. Also per layer: the 5 layers whose weights alone
  cost most.
Writes bench/results/int16x8_mobilenet_v2.{json,md}.
Run: nice -n 10 python bench/int16x8_mobilenet_v2.py [default minmax bc adaround ceiling]
"""
from __future__ import annotations

import copy
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import Timer, latency_ms, metrics, run_batched, unguard  # noqa: E402
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.reference import load_quantized_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "int16x8_mobilenet_v2.json"
INT8 = RESULTS / "int8_mobilenet_v2.json"
INT8_SWEEP = RESULTS / "int8_sweep_mobilenet_v2.json"  # int8 with the same recipes (references, litert placement)


def recipes(lm) -> dict[str, QuantRecipe]:
    base = QuantRecipe(scheme="int16x8")
    return {"default": base, "minmax": base.with_(calibrator="minmax"), "bc": base.with_(bias_correction=True),
            "adaround": base.with_(rounding="adaround", minmax_output=True),
            "model": base.with_(**lm.quant_defaults["int16x8"])}


class Bench:
    def __init__(self):
        self.__dict__.update(mobilenet_v2_setup())  # lm, calib, held, meta, calib_set, fp32, example, params
        old = json.loads(OUT.read_text()) if OUT.is_file() else {}
        keep = old.get("protocol") == self.meta
        self.result = {"model": "mobilenet_v2 (ImageNet weights)", "parameters": self.params, "protocol": self.meta,
                       "torch_threads": 1, "rows": old.get("rows", []) if keep else [],
                       "ceiling": old.get("ceiling") if keep else None}
        self.result["int8"] = _int8_rows()

    def have(self, name):
        return any(r["recipe_name"] == name for r in self.result["rows"])

    def save(self):
        tmp = OUT.with_suffix(".json.part")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(OUT)

    def int16x8(self, name: str, recipe: QuantRecipe, d: Path):
        if self.have(name):
            return
        from edgekit.converters import get as get_converter

        conv = get_converter("tflite")
        sub = d / name
        with Timer() as t, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            recipe, _ = sensitive_float(self.lm.module, self.calib, recipe)  # as the pipeline does, per job
            art = conv.export(self.lm.module, self.lm.spec, recipe, sub, self.example, calibration=self.calib_set)
        ref = run_batched(unguard(load_quantized_reference(sub / art.meta["reference"]).module()), self.held)
        run = conv.runner(art, sub)
        got = np.stack([run(s)[0] for s in self.held]).reshape(len(self.held), -1)
        scale = art.meta["output_scales"][0]
        steps = np.abs(got - ref) / scale
        size = (sub / art.path).stat().st_size
        row = {"recipe_name": name, "recipe": recipe.to_dict(), "recipe_summary": recipe.describe(),
               "reference": metrics(ref, self.fp32), "tflite": metrics(got, self.fp32),
               "steps_vs_own_reference_max": round(float(steps.max()), 2),
               "steps_vs_own_reference_mean": round(float(steps.mean()), 3),
               "top1_agree_vs_own_reference": round(float((got.argmax(-1) == ref.argmax(-1)).mean()), 4),
               "max_abs_rel_vs_own_reference": round(float(np.abs(got - ref).max() / np.abs(ref).max()), 5),
               "output_scale": scale, "size_bytes": size, "size_x_params": round(size / self.params, 3),
               "latency_ms": latency_ms(run, self.held[0], n=20), "export_seconds": t.s,
               "quant_notes": art.meta.get("quant_notes")}
        self.result["rows"].append(row)
        print(json.dumps(row), flush=True)
        self.save()

    def ceiling(self):
        """Weights-only int8 (per-channel, BN folded, nearest; activations float) vs FP32."""
        from torch import nn

        from edgekit.quant.adaround import fold_batchnorm
        from edgekit.quant.recipe import WEIGHT_SCALE_FLOOR

        m = copy.deepcopy(self.lm.module).eval()
        fold_batchnorm(m)
        layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
        orig = {n: mod.weight.detach().clone() for n, mod in layers}

        def q(w):
            s = (w.abs().flatten(1).max(1).values / 127).clamp(min=WEIGHT_SCALE_FLOOR).view(-1, *([1] * (w.dim() - 1)))
            return torch.round(w / s).clamp(-127, 127) * s

        def score(quantized: set[str]) -> dict:
            with torch.no_grad():
                for n, mod in layers:
                    mod.weight.copy_(q(orig[n]) if n in quantized else orig[n])
            return metrics(run_batched(m, self.held), self.fp32)

        names = [n for n, _ in layers]
        alone = sorted(((score({n})["sqnr_db"], n) for n in names))
        worst = [n for _, n in alone[:5]]
        self.result["ceiling"] = {
            "all_weights_int8": score(set(names)),
            "worst_layers_alone_sqnr_db": [{"layer": n, "sqnr_db": s} for s, n in alone[:5]],
            "all_but_worst_1": score(set(names) - set(worst[:1])),
            "all_but_worst_5": score(set(names) - set(worst)),
        }
        print(json.dumps(self.result["ceiling"]), flush=True)
        self.save()


def _int8_rows() -> dict:
    if not INT8.is_file():
        return {}
    old = json.loads(INT8.read_text())
    rows = {r["flow"]: r for r in old.get("rows", [])}
    ref, art = rows.get("edgekit recipe: tflite quantized reference"), rows.get("edgekit recipe -> tflite")
    return {"recipe_summary": old.get("edgekit_recipe_summary"), "reference": ref and {k: ref[k] for k in ("top1_agree", "sqnr_db")},
            "tflite": art and {k: art.get(k) for k in ("top1_agree", "sqnr_db", "size_bytes", "latency_ms",
                                                      "steps_vs_own_reference_max", "steps_vs_own_reference_mean")},
            "fp32_tflite": old.get("fp32_runtimes", {}).get("tflite")}


def write_md(result: dict) -> None:
    p = result["protocol"]
    lines = ["# MobileNetV2 int16x8 (TFLite 16x8) vs INT8\n",
             f"Calibration: {p['calibration']}. Evaluation: {p['held_out']}. Metrics vs the FP32 model on the held-out "
             "crops (top-1 agreement, logit SQNR). Latency: median, 1 thread, ai-edge-litert on this host (int8: XNNPACK; "
             "int16x8: TFLite's builtin 16x8 kernels, XNNPACK has none). Steps: |file - its quantized reference| in units "
             "of the file's own output step (int8: 1/256 of the logit range; int16: 1/65535).\n",
             "| scheme / recipe | reference top-1 / SQNR dB | .tflite top-1 | .tflite SQNR dB | steps vs own ref (max/mean) "
             "| size bytes (x params) | latency ms |", "|---|---|---|---|---|---|---|"]
    i8 = result.get("int8") or {}
    if i8.get("tflite"):
        t, r = i8["tflite"], i8["reference"] or {}
        lines.append(f"| int8: `{i8['recipe_summary']}` | {r.get('top1_agree', 0):.3f} / {r.get('sqnr_db')} | "
                     f"{t['top1_agree']:.3f} | {t['sqnr_db']} | {t.get('steps_vs_own_reference_max', 0):.0f} / "
                     f"{t.get('steps_vs_own_reference_mean')} | {t['size_bytes']:,} | {t['latency_ms']} |")
    for r in result["rows"]:
        lines.append(f"| int16x8 {r['recipe_name']}: `{r['recipe_summary']}` | {r['reference']['top1_agree']:.3f} / "
                     f"{r['reference']['sqnr_db']} | {r['tflite']['top1_agree']:.3f} | {r['tflite']['sqnr_db']} | "
                     f"{r['steps_vs_own_reference_max']:.0f} / {r['steps_vs_own_reference_mean']} | {r['size_bytes']:,} "
                     f"({r['size_x_params']}) | {r['latency_ms']} |")
    if INT8_SWEEP.is_file():  # int8 with the same recipes as the int16x8 rows (nearest weights): same crops
        sweep = {r["label"]: r for r in json.loads(INT8_SWEEP.read_text())["rows"]}
        for label, same in (("minmax", "minmax"), ("percentile 99.99", "default"), ("percentile 99.99 + bias correction", "bc")):
            if label in sweep:
                lines.append(f"| int8 {label} (as int16x8 {same}; bench/int8_sweep_mobilenet_v2.py) | "
                             f"{sweep[label]['top1_agree']:.3f} / {sweep[label]['sqnr_db']} | | | | | |")
    if i8.get("fp32_tflite"):
        f = i8["fp32_tflite"]
        lines.append(f"| fp32 .tflite (XNNPACK) | | | | | {f['size_bytes']:,} | {f['latency_ms']} |")
    lines.append("\nLatencies were measured on a shared 2-core box (load average ~5 during the int16x8 rows): the "
                 "int16x8 figures vary 0.2-0.9 s between runs; the int8/fp32 rows come from bench/int8_mobilenet_v2.py.")
    c = result.get("ceiling")
    if c:
        lines += ["\n## What caps int16x8: the int8 weights (why the \"model\" row keeps layers float and learns rounding)\n",
                  "The FP32 model with only its conv/linear weights on their int8 per-channel grid (BatchNorm folded, "
                  "round to nearest, activations float): the limit int16x8 approaches once activation noise is gone.\n",
                  f"- all weights int8: top-1 {c['all_weights_int8']['top1_agree']:.3f}, **{c['all_weights_int8']['sqnr_db']} dB**",
                  f"- all but the worst layer: {c['all_but_worst_1']['sqnr_db']} dB; all but the worst 5: "
                  f"{c['all_but_worst_5']['sqnr_db']} dB",
                  "- the layers whose int8 weights alone cost most (SQNR with only that layer quantized): "
                  + ", ".join(f"`{w['layer']}` {w['sqnr_db']} dB" for w in c["worst_layers_alone_sqnr_db"])]
    tmp = RESULTS / "int16x8_mobilenet_v2.md.part"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS / "int16x8_mobilenet_v2.md")


def main(argv) -> None:
    b = Bench()
    chosen = recipes(b.lm)
    steps = argv or ["default", "minmax", "bc", "ceiling"]
    with tempfile.TemporaryDirectory() as d:
        for step in steps:
            with Timer() as t:
                if step == "ceiling":
                    b.ceiling()
                else:
                    b.int16x8(step, chosen[step], Path(d))
            print(f"== {step}: {t.s} s", flush=True)
    write_md(b.result)
    b.save()


if __name__ == "__main__":
    main(sys.argv[1:])
