"""MobileNetV2 INT8: edgekit's recipe vs the platform default flows, side by side, on the issue's protocol.

Data (bench/int8_eval_set.py): 64 calibration crops of calibration_data/images files 1-32 and 256
held-out crops of files 33-48 (no file in both). Every row: top-1 agreement and logit SQNR vs FP32
on the 256 held-out crops.

Rows:
- platform defaults, each with its own observers: litert-torch's documented PT2E flow (reference and
  the real .tflite), ExecuTorch's XNNPACKQuantizer defaults (get_symmetric_quantization_config(
  is_per_channel=True)), PyTorch's default qnnpack qconfig (FX; the real .ptl and its float simulation);
- edgekit's default job (`edgekit export mobilenet_v2 --targets all --quant int8`, as the pipeline
  runs it on these crops: QuantRecipe() with MobileNetV2's measured int8 settings, its most sensitive
  layers float, then its 24 quantization-aware training steps on the calibration crops, whose weights
  and learned ranges go to every target that takes "qat" while ncnn exports the model before training);
  argument 1 as JSON replaces the recipe (then no QAT): the quantized reference of each target and the
  real artifacts in their runtimes: .tflite (ai-edge-litert, XNNPACK, 1 thread), .pte
  (executorch.runtime), .ptl (lite interpreter, qnnpack), ncnn (.param/.bin, 1 thread), .onnx (QDQ,
  onnxruntime CPU, 1 thread), MNN (.mnn, 1 thread), OpenVINO (IR, CPU plugin, 1 thread, f32 hint);
- sizes (file bytes / parameter count) and latency (median, 1 thread) INT8 vs FP32 (each target's FP32
  file timed in the same run; bench/int8_speed.py times them interleaved, which is steadier).
Each row is saved when measured (a rerun with the same recipe skips it). The .md also lists the
recipe sweep from bench/results/int8_sweep_mobilenet_v2.json (bench/int8_sweep_mobilenet_v2.py).
Writes bench/results/int8_mobilenet_v2.{json,md}.
Run: python bench/int8_mobilenet_v2.py ['{"calibrator": "percentile", "keep_float": ["classifier"]}']
"""
from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import (Timer, latency_ms, litert_quantizer, metrics, platform_default, run_batched,  # noqa: E402
                         sqnr, unguard, xnnpack_quantizer)
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.models import BUILTIN  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.reference import load_quantized_reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "int8_mobilenet_v2.json"
SWEEP = RESULTS / "int8_sweep_mobilenet_v2.json"


class Bench:
    def __init__(self, recipe: QuantRecipe, qat_steps: int):
        self.recipe, self.qat_steps, self._job = recipe, qat_steps, None
        self.__dict__.update(mobilenet_v2_setup())  # lm, calib, held, meta, calib_set, fp32, example, params
        old = json.loads(OUT.read_text()) if OUT.is_file() else {}
        keep = (old.get("edgekit_recipe") == recipe.to_dict() and old.get("qat_steps") == qat_steps
                and old.get("protocol") == self.meta)
        self.result = {"model": "mobilenet_v2 (ImageNet weights)", "parameters": self.params, "protocol": self.meta,
                       "edgekit_recipe": recipe.to_dict(), "edgekit_recipe_summary": recipe.describe(),
                       "qat_steps": qat_steps, "qat": old.get("qat") if keep else None, "torch_threads": 1,
                       "rows": [r for r in old.get("rows", []) if keep or (r["flow"].startswith("platform default")
                                                                           and old.get("protocol") == self.meta)],
                       "fp32_runtimes": old.get("fp32_runtimes", {}) if keep else {}}

    def have(self, flow):
        return any(r["flow"] == flow for r in self.result["rows"])

    def save(self, row=None):
        if row is not None:
            self.result["rows"].append(row)
            print(json.dumps(row), flush=True)
        tmp = OUT.with_suffix(".json.part")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        tmp.replace(OUT)

    def row(self, flow, where, out, seconds=None, **extra):
        r = {"flow": flow, "measured_on": where, **metrics(out, self.fp32), **extra}
        if seconds is not None:
            r["seconds"] = seconds
        self.save(r)

    def steps(self, got, ref, scale):
        st = np.abs(got.reshape(ref.shape) - ref) / scale
        return {"steps_vs_own_reference_max": round(float(st.max()), 2), "steps_vs_own_reference_mean": round(float(st.mean()), 3),
                "top1_agree_vs_own_reference": round(float((got.reshape(ref.shape).argmax(-1) == ref.argmax(-1)).mean()), 4)}

    def runtime_outputs(self, run):
        return np.stack([run(s)[0] for s in self.held]).reshape(len(self.held), -1)

    # ---- platform defaults ----
    def litert_default(self, d: Path):
        flow = "platform default: litert-torch PT2EQuantizer, documented flow (its observers)"
        if self.have(flow) and self.have(flow + " -> .tflite"):
            return
        from litert_torch.quantize.quant_config import QuantConfig
        import litert_torch

        with Timer() as t:
            quantizer = litert_quantizer()
            ref_gm = platform_default(self.lm.module, self.example, self.calib, quantizer)
            ref = run_batched(unguard(ref_gm), self.held)
        if not self.have(flow):
            self.row(flow, "convert_pt2e reference", ref, t.s)
        with Timer() as t:
            ref_gm = platform_default(self.lm.module, self.example, self.calib, quantizer)  # unguarded one is batched
            path = d / "litert_default.tflite"
            litert_torch.convert(ref_gm, self.example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
            run = _tflite_runner(path)
            got = self.runtime_outputs(run)
        self.row(flow + " -> .tflite", ".tflite, ai-edge-litert XNNPACK 1 thread", got, t.s,
                 size_bytes=path.stat().st_size, size_x_params=round(path.stat().st_size / self.params, 3),
                 latency_ms=latency_ms(run, self.held[0]))

    def executorch_default(self):
        flow = "platform default: ExecuTorch XNNPACKQuantizer get_symmetric_quantization_config(is_per_channel=True)"
        if self.have(flow):
            return
        with Timer() as t:
            ref = run_batched(unguard(platform_default(self.lm.module, self.example, self.calib, xnnpack_quantizer())), self.held)
        self.row(flow, "convert_pt2e reference", ref, t.s)

    def pytorch_default(self, d: Path):
        flow = "platform default: PyTorch FX get_default_qconfig_mapping('qnnpack')"
        if self.have(flow + " -> .ptl"):
            return
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.backend_config import get_qnnpack_backend_config
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        from torch.jit.mobile import _load_for_lite_interpreter

        from edgekit.converters.ptl.quant import qnnpack_engine, simulate

        path = d / "pytorch_default.ptl"
        with Timer() as t, qnnpack_engine(), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            cfg = get_qnnpack_backend_config()
            prepared = prepare_fx(self.lm.module, get_default_qconfig_mapping("qnnpack"), self.example, backend_config=cfg)
            for s in self.calib:
                prepared(torch.from_numpy(s[0]))
            converted = convert_fx(prepared, backend_config=cfg)
            torch.jit.freeze(torch.jit.trace(converted, self.example).eval())._save_for_lite_interpreter(str(path))
            sim, out_qp, _ = simulate(converted)
            ref = np.stack([sim(torch.from_numpy(s[0])).numpy() for s in self.held]).reshape(len(self.held), -1)
            mod = _load_for_lite_interpreter(str(path))
            run = lambda s: [mod(torch.from_numpy(s[0])).numpy()]  # noqa: E731
            got = self.runtime_outputs(run)
            ms = latency_ms(run, self.held[0], n=10)
        if not self.have(flow):
            self.row(flow, "float simulation of its quantization", ref)
        self.row(flow + " -> .ptl", ".ptl, lite interpreter qnnpack 1 thread", got, t.s, size_bytes=path.stat().st_size,
                 latency_ms=ms, note="torch 2.13 qnnpack ReLU6-on-channels_last kernel bug (STACK.md) scrambles it",
                 **self.steps(got, ref, out_qp[0][0]))

    # ---- edgekit ----
    def job(self) -> dict:
        """What the default job does before any target (once): the sensitive layers float, then QAT.
        -> {"untrained": (model, recipe), "trained": (model, recipe with the learned ranges)}."""
        if self._job is None:
            from edgekit.quant.qat import QATSettings, train_quantized

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                recipe, _ = sensitive_float(self.lm.module, self.calib, self.recipe)  # as the pipeline does
            self._job = {"untrained": (self.lm.module, recipe), "trained": (self.lm.module, recipe)}
            if self.qat_steps:
                torch.set_num_threads(2)  # training: both cores; the artifacts run and are timed on 1 thread
                try:
                    res = train_quantized(self.lm.module, list(self.calib), recipe, QATSettings(steps=self.qat_steps))
                finally:
                    torch.set_num_threads(1)
                self._job["trained"] = (res.model, res.recipe(recipe))
                self.result["qat"] = {k: v for k, v in res.report.items() if k != "note"}
        return self._job

    def edgekit_target(self, name, d: Path):
        flow = f"edgekit recipe -> {name}"
        if self.have(flow):
            return
        from edgekit.converters import get as get_converter

        conv = get_converter(name)
        sub = d / name
        model, recipe = self.job()["trained" if "qat" in conv.info.levers else "untrained"]
        with Timer() as t, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            art = conv.export(model, self.lm.spec, recipe, sub, self.example, calibration=self.calib_set)
        ref_gm = unguard(load_quantized_reference(sub / art.meta["reference"]).module())
        ref = run_batched(ref_gm, self.held)
        self.row(f"edgekit recipe: {name} quantized reference", "quantized reference (float simulation)", ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = conv.runner(art, sub)
            got = self.runtime_outputs(run)
            ms = latency_ms(run, self.held[0], n=10 if name == "ptl" else 30)
        files = [f for f in art.files if "reference" not in f]
        size = sum((sub / f).stat().st_size for f in files)
        scale = (art.meta.get("output_scales") or [0.0])[0]
        extra = self.steps(got, ref, scale) if scale else {}
        self.row(flow, f"{name} artifact in its host runtime (1 thread)", got, t.s, files=files, size_bytes=size,
                 trained=self.qat_steps > 0 and "qat" in conv.info.levers,
                 size_x_params=round(size / self.params, 3), latency_ms=ms, kept_float=art.meta.get("kept_float"),
                 quant_notes=art.meta.get("quant_notes"), **extra)

    def fp32_runtime(self, name, d: Path):
        if name in self.result["fp32_runtimes"]:
            return
        from edgekit.converters import get as get_converter

        conv = get_converter(name)
        sub = d / f"{name}-fp32"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            art = conv.export(self.lm.module, self.lm.spec, None, sub, self.example)
            run = conv.runner(art, sub)
            size = sum((sub / f).stat().st_size for f in art.files)
            got = np.stack([run(s)[0] for s in self.held[:8]]).reshape(8, -1)
            self.result["fp32_runtimes"][name] = {
                "size_bytes": size, "latency_ms": latency_ms(run, self.held[0], n=10 if name == "ptl" else 30),
                "sqnr_vs_torch_db_8_crops": round(sqnr(got, self.fp32[:8]), 1)}
        print(name, "fp32", self.result["fp32_runtimes"][name], flush=True)
        self.save()


def _tflite_runner(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(sample):
        x = sample[0]
        if i["dtype"] != np.float32:
            s, z = i["quantization"]
            x = np.clip(np.round(x / s) + z, -128, 127).astype(i["dtype"])
        interp.set_tensor(i["index"], x)
        interp.invoke()
        y = interp.get_tensor(o["index"])
        if o["dtype"] != np.float32:
            s, z = o["quantization"]
            y = (y.astype(np.float32) - z) * s
        return [y]

    return run


def _qat_said(result: dict) -> str:
    q = result.get("qat")
    if not result.get("qat_steps"):
        return "No quantization-aware training (a recipe given on the command line).\n"
    if not q:
        return f"Quantization-aware training: {result['qat_steps']} steps (not run yet).\n"
    return (f"Then, as the default job: {q['steps']} quantization-aware training steps on {q['samples']} calibration crops "
            f"({q['seconds']} s on 2 threads; input ranges {q['ranges']}); rows marked (trained) export those weights, "
            "ncnn (no \"qat\" lever) the model before training.\n")


def write_md(result: dict) -> None:
    p = result["protocol"]
    lines = [f"# MobileNetV2 INT8: edgekit vs platform defaults\n",
             f"Calibration: {p['calibration']}. Evaluation: {p['held_out']}. Metrics vs the FP32 model on the held-out "
             "crops (top-1 agreement, logit SQNR). Goal (issue 6): >= 90 % and >= 20 dB.\n",
             f"edgekit recipe: `{result['edgekit_recipe_summary']}`\n",
             _qat_said(result),
             "| flow | measured on | top-1 agree | SQNR dB | steps vs own ref (max/mean) | top-1 vs own ref | size bytes (x params) | latency ms | INT8 / FP32 latency (timed one after the other; bench/int8_speed.py interleaves them, steadier) |",
             "|---|---|---|---|---|---|---|---|---|"]
    fp32 = result.get("fp32_runtimes", {})
    for r in result["rows"]:
        target = r["flow"].split(" -> ")[-1] if r["flow"].startswith("edgekit recipe -> ") else None
        ratio = f"{r['latency_ms'] / fp32[target]['latency_ms']:.2f}x" if target in fp32 and "latency_ms" in r else ""
        st = f"{r['steps_vs_own_reference_max']:.0f} / {r['steps_vs_own_reference_mean']}" if "steps_vs_own_reference_max" in r else ""
        size = f"{r['size_bytes']:,}" + (f" ({r['size_x_params']})" if "size_x_params" in r else "") if "size_bytes" in r else ""
        own = f"{r['top1_agree_vs_own_reference']:.3f}" if "top1_agree_vs_own_reference" in r else ""
        flow = r["flow"] + (" (trained)" if r.get("trained") else "")
        lines.append(f"| {flow} | {r['measured_on']} | {r['top1_agree']:.3f} | {r['sqnr_db']} | {st} | {own} | {size} | "
                     f"{r.get('latency_ms', '')} | {ratio} |")
    if result.get("fp32_runtimes"):
        lines += ["\nFP32 artifacts (same runtimes, 1 thread):\n", "| target | size bytes | latency ms |", "|---|---|---|"]
        lines += [f"| {k} | {v['size_bytes']:,} | {v['latency_ms']} |" for k, v in result["fp32_runtimes"].items()]
    if SWEEP.is_file():
        sweep = json.loads(SWEEP.read_text())
        lines += ["\n## Recipe sweep (convert_pt2e reference, litert-torch placement; bench/int8_sweep_mobilenet_v2.py)\n"]
        lines += [f"- {n}" for n in sweep.get("notes", [])] + [""]
        real = [r for r in sweep["rows"] if r["stage"] in ("calibrators", "levers", "keep_float")]
        if real:
            best = max(real, key=lambda r: (r["sqnr_db"], r["top1_agree"]))
            result["sweep_best"] = {k: best[k] for k in ("stage", "label", "recipe", "top1_agree", "sqnr_db")}
            lines.append(f"\nBest recipe of the sweep (real quantize runs): **{best['label']}**: "
                         f"{best['top1_agree']:.3f} top-1 agreement, {best['sqnr_db']} dB.")
        if "diagnosis_base" in sweep:
            d = sweep["diagnosis_base"]
            lines.append(f"\nDiagnosis rows: graph surgery on the reference of `{d['label']}` "
                         f"({d['top1_agree']:.3f}, {d['sqnr_db']} dB on the {d['eval_crops']} crops it uses); "
                         "SQNR gain = that row minus this base.")
        lines += ["", "| stage | variant | top-1 agree | SQNR dB | SQNR gain dB |", "|---|---|---|---|---|"]
        for r in sweep["rows"]:
            lines.append(f"| {r['stage']} | {r['label']} | {r['top1_agree']:.3f} | {r['sqnr_db']} | {r.get('sqnr_gain_db', '')} |")
    tmp = RESULTS / "int8_mobilenet_v2.md.part"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS / "int8_mobilenet_v2.md")


INT8_TARGETS = ("tflite", "executorch", "ptl", "ncnn", "onnx", "mnn", "openvino")


def main(argv) -> None:
    # default: what `edgekit export mobilenet_v2 --quant int8` does (the model's measured settings and QAT steps)
    loaded = BUILTIN["mobilenet_v2"]()
    given = argv and argv[0].startswith("{")
    recipe = QuantRecipe.from_dict(json.loads(argv[0])) if given else QuantRecipe().with_(**loaded.quant_defaults["int8"])
    steps = [a for a in argv if not a.startswith("{")] or ["defaults", *INT8_TARGETS, "fp32"]
    b = Bench(recipe, 0 if given else loaded.qat_steps)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for step in steps:
            with Timer() as t:
                if step == "defaults":
                    b.litert_default(d)
                    b.executorch_default()
                    b.pytorch_default(d)
                elif step == "fp32":
                    for name in INT8_TARGETS:
                        b.fp32_runtime(name, d)
                else:
                    b.edgekit_target(step, d)
            print(f"== {step}: {t.s} s", flush=True)
    write_md(b.result)
    b.save()


if __name__ == "__main__":
    main(sys.argv[1:])
