"""ncnn INT8 (edgekit's own writer) on MobileNetV2 with real ImageNet weights: calibrated on
calibration_data/images 1-32, evaluated on the held-out images 33-48.

Per calibrator: top-1 agreement and logit SQNR vs FP32 (compression cost), the artifact vs its
quantized reference (conversion fidelity: max |err| / max |ref|, cosine, top-1), .param+.bin size vs
the parameter count, and ncnn latency (1 thread, strict FP32 settings for the FP32 model) INT8 vs FP32.
Writes bench/results/int8_ncnn_mobilenet_v2.json.   Run: python bench/int8_ncnn_mobilenet_v2.py
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.converters.ncnn import CONVERTER
from edgekit.converters.ncnn.per_layer import compare_blobs
from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

OUT = Path(__file__).parent / "results" / "int8_ncnn_mobilenet_v2.json"
CALIBRATORS = sys.argv[1:] or ["percentile", "mse", "entropy", "minmax"]


def sqnr(ref, got):
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((got - ref).astype(np.float64) ** 2).sum()))


def cosine(a, b):
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return float(np.min((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def latency_ms(run, sample, n=20):
    run(sample)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run(sample)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main():
    torch.set_num_threads(1)
    lm = BUILTIN["mobilenet_v2"]()
    data = load_samples(lm.default_data, lm.spec)
    calib, held = data.head(32), data.samples[32:48]
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    n_params = sum(p.numel() for p in lm.module.parameters())
    fp32 = run_program(lm.module, held)[0]
    result = {"model": "mobilenet_v2 (ImageNet weights)", "calibration": "calibration_data/images 1-32",
              "evaluation": "calibration_data/images 33-48", "parameters": n_params, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fart = CONVERTER.export(lm.module, lm.spec, None, tmp / "fp32", example)
        frun = CONVERTER.runner(fart, tmp / "fp32")
        ncnn_fp32 = np.stack([frun(s)[0] for s in held])
        result["fp32"] = {"bytes": sum((tmp / "fp32" / f).stat().st_size for f in fart.files),
                          "latency_ms": latency_ms(frun, held[0]), "sqnr_vs_torch_db": sqnr(fp32, ncnn_fp32)}
        for cal in CALIBRATORS:
            d = tmp / cal
            t0 = time.perf_counter()
            art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(calibrator=cal), d, example, calibration=calib)
            export_s = time.perf_counter() - t0
            run = CONVERTER.runner(art, d)
            got = np.stack([run(s)[0] for s in held])
            ref = run_program(load_quantized_reference(d / art.meta["reference"]).module(), held)[0]
            blobs = compare_blobs(art, d, held[:4])
            size = sum((d / f).stat().st_size for f in art.files[:2])
            result["runs"].append({
                "calibrator": cal, "recipe": art.meta["recipe_summary"], "export_s": round(export_s, 1),
                "compression_vs_fp32": {"top1_agreement": float((got.argmax(-1) == fp32.argmax(-1)).mean()),
                                        "sqnr_db": sqnr(fp32, got), "reference_sqnr_db": sqnr(fp32, ref),
                                        "reference_top1_agreement": float((ref.argmax(-1) == fp32.argmax(-1)).mean())},
                "fidelity_vs_reference": {"max_abs_rel": float(np.abs(got - ref).max() / np.abs(ref).max()),
                                          "min_cosine": cosine(ref, got), "sqnr_db": sqnr(ref, got),
                                          "top1_agreement": float((got.argmax(-1) == ref.argmax(-1)).mean())},
                "size": {"param_bin_bytes": size, "x_param_count": size / n_params},
                "latency_ms": latency_ms(run, held[0]),
                "quant_notes": art.meta["quant_notes"],  # bias correction, reflected shifts, layers kept float
                "per_blob": {"flagged": [r["layer"] for r in blobs if r["flagged"]],
                             "min_local_sqnr_db": min(r["local_sqnr_db"] for r in blobs),
                             "first_below_20db": next((f"{r['layer']} ({r['module']})" for r in blobs if r["sqnr_db"] < 20), None),
                             "layers": blobs},
            })
            print(json.dumps({k: v for k, v in result["runs"][-1].items() if k not in ("per_blob", "quant_notes")}), flush=True)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print("fp32:", result["fp32"])


if __name__ == "__main__":
    main()
