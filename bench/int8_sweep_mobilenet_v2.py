"""Sweep edgekit's INT8 recipe levers on MobileNetV2 (ImageNet weights) to pick the default.

Protocol (bench/int8_eval_set.py): 64 calibration crops (files 1-32), 256 held-out crops (33-48).
Every row quantizes with edgekit.quant.pt2e.quantize and litert-torch's quantizer (the .tflite's
placement of q/dq pairs) and measures the convert_pt2e reference (float simulation of the artifact)
against FP32 on the 256 held-out crops: top-1 agreement and logit SQNR.

Stages (each row is saved as soon as it is measured; a rerun skips rows already in the file):
- calibrators: minmax, percentile 99.9 / 99.99 / 99.999, entropy, mse;
- levers on the best calibrator: CLE, bias correction, both, fuse_relu6 off;
- diagnosis on the best recipe (graph surgery on its reference, no re-calibration): weights only
  quantized, activations only quantized, and one layer un-quantized at a time (its weight and
  output q/dq bypassed; candidates: first conv, every block's projection conv, last conv, classifier):
  the SQNR gain ranks the layers for keep_float (measured on 64 of the held-out crops, 4 per file);
- keep_float: real quantize(keep_float=...) runs: the classifier, the top layer of the diagnosis, and
  cumulative sets of the top 3 / 6 layers;
- weight clipping (diagnosis): per-channel weight scales chosen by MSE instead of max|w|;
- act_diagnosis: on the best recipe's reference with weights float, where the activation error comes
  from: every site rounding only (no clipping) / clipping only (no rounding), and each site alone
  quantized (64 held-out crops);
- adaround: learned weight rounding (edgekit.quant.adaround) on the best recipe: alone (with and
  without activation fake-quant during the reconstruction), weights-only diagnosis, + bias
  correction, + keep_float of the diagnosed layers; wall time of the learning in each row.
Writes bench/results/int8_sweep_mobilenet_v2.json.   Run: python bench/int8_sweep_mobilenet_v2.py [stage ...]
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import Timer, bypass, litert_quantizer, metrics, qdq_pairs, run_batched, unguard  # noqa: E402
from int8_eval_set import eval_set, fp32_logits  # noqa: E402

from edgekit.models import BUILTIN  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402

OUT = Path(__file__).parent / "results" / "int8_sweep_mobilenet_v2.json"


class _StatsCache:
    """Calibration statistics depend on the graph (CLE, ReLU6 fusing, keep_float, bias correction),
    not on the calibrator: the two calibration passes run once per graph and later recipes on the same
    graph reuse the collected statistics (edgekit.quant.pt2e's own _run / collector, patched here in
    the bench only; the result is the same ranges, bit for bit, as a fresh run)."""

    def __init__(self):
        import edgekit.quant.pt2e as pt2e

        self.pt2e, self.store, self.key, self.model_tag = pt2e, {}, None, ""
        self.real_run, self.real_collector = pt2e._run, pt2e.TensorStatsCollector
        cache = self

        class Collector(self.real_collector):
            def stats(self):
                if cache.key not in cache.store:
                    cache.store[cache.key] = super().stats()
                return cache.store[cache.key]

        def run(gm, samples):
            hit = cache.key in cache.store and any(type(m).__name__ == "RangeProbe" for m in gm.modules())
            # on a hit one sample still runs: the weight observers (per-channel min/max) learn their
            # ranges from the forward pass (weights are constants, so one sample gives the same range)
            cache.real_run(gm, samples[:1] if hit else samples)

        pt2e._run, pt2e.TensorStatsCollector = run, Collector

    def use(self, recipe: QuantRecipe):
        self.key = (recipe.bins, recipe.equalize, recipe.fuse_relu6, recipe.keep_float, recipe.max_samples,
                    recipe.rounding, self.model_tag)
        # bias correction runs after calibration (on the calibrated model): it shares the statistics
STAGES = ("calibrators", "levers", "diagnosis", "keep_float", "weight_clip", "act_diagnosis", "adaround")
ADAROUND_CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", "/tmp/edgekit_int8_bench_cache")) / "adaround"


class Sweep:
    def __init__(self):
        torch.set_num_threads(1)
        self.lm = BUILTIN["mobilenet_v2"]()
        self.calib, self.held, self.meta = eval_set(self.lm.spec)
        self.fp32 = fp32_logits(self.lm.module, self.held)[:, 0]
        self.example = tuple(torch.from_numpy(a) for a in self.calib[0])
        self.cache = _StatsCache()
        self.result = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": []}
        self.result.update({"model": "mobilenet_v2 (ImageNet weights)", "protocol": self.meta,
                            "measured_on": "convert_pt2e reference (litert-torch quantizer placement)"})

    def done(self, stage, label):
        return next((r for r in self.result["rows"] if r["stage"] == stage and r["label"] == label), None)

    def save(self, row):
        self.result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "recipe"}), flush=True)
        OUT.parent.mkdir(exist_ok=True)
        tmp = OUT.with_suffix(".json.part")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(OUT)

    def quantized(self, recipe, model=None, tag=""):
        self.cache.model_tag = tag
        self.cache.use(recipe)
        q = quantize(model if model is not None else self.lm.module, self.example, self.calib, recipe,
                     litert_quantizer(), cache_dir=ADAROUND_CACHE)
        return unguard(q.module), q

    def measure(self, stage, label, recipe: QuantRecipe, model=None, tag="", extra=None):
        row = self.done(stage, label)
        if row:
            return row
        with Timer() as t:
            gm, q = self.quantized(recipe, model, tag)
            out = run_batched(gm, self.held)
        row = {"stage": stage, "label": label, "recipe": recipe.to_dict(), **metrics(out, self.fp32),
               "seconds": t.s, "notes": q.notes, **(extra or {})}
        self.save(row)
        return row

    def best(self, stages) -> dict:
        rows = [r for r in self.result["rows"] if r["stage"] in stages]
        return max(rows, key=lambda r: (r["sqnr_db"], r["top1_agree"]))

    # ---- stages ----
    def calibrators(self):
        for label, kw in (("minmax", dict(calibrator="minmax")), ("percentile 99.9", dict(percentile=99.9)),
                          ("percentile 99.99", dict(percentile=99.99)), ("percentile 99.999", dict(percentile=99.999)),
                          ("entropy", dict(calibrator="entropy")), ("mse", dict(calibrator="mse"))):
            self.measure("calibrators", label, QuantRecipe(**kw))

    def levers(self):
        b = self.best(["calibrators"])
        base = QuantRecipe.from_dict(b["recipe"])
        for label, kw in (("bias correction", dict(bias_correction=True)), ("CLE", dict(equalize=True)),
                          ("CLE + bias correction", dict(equalize=True, bias_correction=True)),
                          ("no conv+ReLU6 fusing", dict(fuse_relu6=False))):
            self.measure("levers", f"{b['label']} + {label}", base.with_(**kw))

    def diagnosis(self):
        b = self.best(["calibrators", "levers"])
        recipe = QuantRecipe.from_dict(b["recipe"])
        gm, _ = self.quantized(recipe)
        state = {k: v.clone() for k, v in gm.state_dict().items()}
        layers = []
        for q, deqs, kind, path in qdq_pairs(gm):
            candidate = re.fullmatch(r"features\.\d+\.conv\.\d+|features\.0\.0|features\.18\.0|classifier\.1", path)
            if kind == "weight" and candidate and path not in layers:  # first/last layers + every projection conv
                layers.append(path)
        held, fp32 = self.held[::4], self.fp32[::4]  # 64 of the 256 held-out crops (4 per file): a ranking, kept cheap
        base = metrics(run_batched(gm, held), fp32)
        self.result["diagnosis_base"] = {"label": b["label"], **base, "eval_crops": len(held)}
        tests = [("weights only quantized (activations float)", lambda k, p: k == "act"),
                 ("activations only quantized (weights float)", lambda k, p: k == "weight")]
        tests += [(f"float: {path}", lambda k, p, path=path: p == path or p.startswith(path + "."))
                  for path in layers]
        import copy

        for label, keep in tests:
            if self.done("diagnosis", label):
                continue
            with Timer() as t:
                g = copy.deepcopy(gm)
                n = bypass(g, keep)
                out = run_batched(g, held)
            m = metrics(out, fp32)
            self.save({"stage": "diagnosis", "label": label, **m, "pairs_bypassed": n, "eval_crops": len(held),
                       "sqnr_gain_db": round(m["sqnr_db"] - base["sqnr_db"], 2), "seconds": t.s})
        del state

    def keep_float(self):
        b = self.best(["calibrators", "levers"])
        base = QuantRecipe.from_dict(b["recipe"])
        diag = sorted((r for r in self.result["rows"] if r["stage"] == "diagnosis" and r["label"].startswith("float: ")),
                      key=lambda r: -r["sqnr_gain_db"])
        top = [r["label"].removeprefix("float: ") for r in diag[:6]]
        # the diagnosis ranks every candidate (first conv, projection convs, last conv, classifier)
        # by simulation; the real keep_float runs here: the classifier (does keep_float take effect?),
        # then the top-k layers of the ranking
        for layer in dict.fromkeys(["classifier"] + top[:1]):
            self.measure("keep_float", f"{b['label']} + float {layer}", base.with_(keep_float=(layer,)))
        for k in (3, 6):
            if len(top) >= k:
                self.measure("keep_float", f"{b['label']} + float top-{k} " + ",".join(top[:k]),
                             base.with_(keep_float=tuple(top[:k])))

    def weight_clip(self):
        """Per-channel weight scale = argmin MSE(w, q(w)) over clip ratios, instead of max|w|/127."""
        b = self.best(["calibrators", "levers"])
        gm, _ = self.quantized(QuantRecipe.from_dict(b["recipe"]))
        changed = 0
        for q, deqs, kind, path in qdq_pairs(gm):
            if kind != "weight" or "per_channel" not in str(q.target):
                continue
            w = _param(gm, q.args[0]).detach().double()
            scale_node = q.args[1]
            scale = _param(gm, scale_node)
            axis = q.args[3]
            wc = w.transpose(0, axis).reshape(w.shape[axis], -1)
            amax = wc.abs().max(1).values
            qmin, qmax = q.args[4], q.args[5]
            best_s, best_e = amax / qmax, None
            for r in np.linspace(1.0, 0.5, 51):
                s = (amax * r / qmax).clamp_min(1e-12)
                e = ((torch.clamp(torch.round(wc / s[:, None]), qmin, qmax) * s[:, None] - wc) ** 2).sum(1)
                if best_e is None:
                    best_e, best_s = e, s.clone()
                else:
                    better = e < best_e
                    best_e, best_s = torch.where(better, e, best_e), torch.where(better, s, best_s)
            for node in [scale_node] + [d.args[1] for d in deqs]:  # the quantize's and dequantize's scales
                t = _param(gm, node)
                t.data.copy_(best_s.to(t.dtype))
            changed += 1
        out = run_batched(gm, self.held)
        self.save({"stage": "weight_clip", "label": f"{b['label']} + MSE per-channel weight clipping (simulated)",
                   **metrics(out, self.fp32), "layers": changed})
        import copy

        g = copy.deepcopy(gm)
        bypass(g, lambda k, p: k == "act")
        self.save({"stage": "weight_clip", "label": "MSE per-channel weight clipping, weights only quantized (activations float)",
                   **metrics(run_batched(g, self.held[::4]), self.fp32[::4]), "eval_crops": len(self.held[::4])})


    def act_diagnosis(self):
        from int8_common import activation_sites_report

        if "act_diagnosis" in self.result:
            return
        b = self.best(["calibrators", "levers"])
        gm, _ = self.quantized(QuantRecipe.from_dict(b["recipe"]))
        self.result["act_diagnosis"] = {"label": b["label"], **activation_sites_report(gm, self.held[::4], self.fp32[::4])}
        self.save_result()

    def adaround(self):
        from edgekit.quant.adaround import AdaRoundConfig, adaround

        b = self.best(["calibrators"])  # bias correction measured harmful with AdaRound (weights-only 13.5 -> 8.8 dB)
        base = QuantRecipe.from_dict(b["recipe"])
        ada = base.with_(rounding="adaround")
        row = self.measure("adaround", f"{b['label']} + AdaRound", ada)
        gm, q = self.quantized(ada)  # cached learning: the weights-only diagnosis of the same reference
        self.weights_only_row(gm, f"{b['label']} + AdaRound, weights only quantized (activations float)")
        # range tuning found by act_diagnosis: the logits' range by min/max (percentile clips the top logits)
        self.measure("adaround", f"{b['label']} + min/max logits", base.with_(minmax_output=True))
        self.measure("adaround", f"{b['label']} + AdaRound + min/max logits", ada.with_(minmax_output=True))
        self.measure("adaround", f"{b['label']} + AdaRound + min/max logits + float classifier",
                     ada.with_(minmax_output=True, keep_float=("classifier",)))
        # the reconstruction without activation fake-quant (weights only, "symmetric" inputs)
        label = f"{b['label']} + AdaRound (reconstruction without activation quantization)"
        if not self.done("adaround", label):
            cfg = AdaRoundConfig()
            with Timer() as t:
                model, rep = adaround(self.lm.module, self.example, self.calib, cfg, act_recipe=None)
            self.measure("adaround", label, base, model=model, tag="ada-noact",
                         extra={"adaround_seconds": rep["seconds"], "total_seconds_incl_learning": t.s})
        diag = sorted((r for r in self.result["rows"] if r["stage"] == "diagnosis" and r["label"].startswith("float: ")),
                      key=lambda r: -r["sqnr_gain_db"])
        top = [r["label"].removeprefix("float: ") for r in diag[:3]]
        if top:
            self.measure("adaround", f"{b['label']} + AdaRound + float top-3 " + ",".join(top), ada.with_(keep_float=tuple(top)))
        del row, gm, q

    def weights_only_row(self, gm, label):
        import copy

        if self.done("adaround", label):
            return
        g = copy.deepcopy(gm)
        bypass(g, lambda k, p: k == "act")
        self.save({"stage": "adaround", "label": label, **metrics(run_batched(g, self.held[::4]), self.fp32[::4]),
                   "eval_crops": len(self.held[::4])})

    def save_result(self):
        tmp = OUT.with_suffix(".json.part")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(OUT)


def _param(gm, node):
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def main(stages):
    s = Sweep()
    for stage in stages:
        with Timer() as t:
            getattr(s, stage)()
        print(f"== stage {stage}: {t.s} s", flush=True)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("edgekit.quant.adaround").setLevel(logging.INFO)
    main(sys.argv[1:] or STAGES)
