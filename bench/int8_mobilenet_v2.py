"""MobileNetV2 INT8: edgekit's recipe vs the platform default PT2E flows, side by side.

Data: calibration_data/images (48 real photos): calibrate on the first 32, evaluate on the last 16
(held out). Metrics vs the FP32 model on the held-out photos: top-1 agreement and logit SQNR; for
the .tflite also its distance to its own quantized reference in output steps (conversion fidelity).
Writes bench/results/int8_mobilenet_v2.json and .md.   Run: python bench/int8_mobilenet_v2.py [--quick]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.pt2e import quantize
from edgekit.quant.reference import load_quantized_reference, run_program

OUT = Path(__file__).parent / "results"


def sqnr(a, ref):
    return float(10 * np.log10((ref ** 2).sum() / max(((a - ref) ** 2).sum(), 1e-30)))


def metrics(out, fp32):
    return {"top1_agree": float((out.argmax(-1) == fp32.argmax(-1)).mean()), "sqnr_db": round(sqnr(out, fp32), 2)}


def platform_default(model, example, calib, quantizer, fold):
    """The documented PT2E flow: the platform's own observers (no edgekit ranges)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(model, example).module()
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for s in calib:
            prepared(*[torch.from_numpy(a) for a in s])
    return convert_pt2e(prepared, fold_quantize=fold)


def litert_quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def main(quick: bool) -> None:
    lm = BUILTIN["mobilenet_v2"]()
    data = load_samples(lm.default_data, lm.spec)
    calib, held = data.samples[:32], data.samples[32:]
    example = tuple(torch.from_numpy(a) for a in calib[0])
    fp32 = run_program(lm.module, held)[0]
    rows = []
    t = time.time()
    ref = platform_default(lm.module, example, calib, litert_quantizer(), False)
    rows.append({"flow": "platform default: litert-torch PT2EQuantizer (HistogramObserver)", "where": "convert_pt2e reference",
                 **metrics(run_program(ref, held)[0], fp32), "seconds": round(time.time() - t, 1)})
    print(rows[-1], flush=True)
    variants = [("mse", dict(calibrator="mse")), ("minmax", dict(calibrator="minmax")),
                ("percentile 99.99", dict(calibrator="percentile")), ("entropy", dict(calibrator="entropy")),
                ("mse, no ReLU6 fusing", dict(calibrator="mse", fuse_relu6=False)),
                ("percentile + CLE", dict(equalize=True)),
                ("percentile + bias correction (depthwise)", dict(bias_correction=True)),
                ("percentile + CLE + bias correction", dict(equalize=True, bias_correction=True)),
                ("percentile, classifier kept float", dict(keep_float=("classifier",)))]
    for label, kw in variants:
        t = time.time()
        q = quantize(lm.module, example, calib, QuantRecipe(**kw), litert_quantizer())
        rows.append({"flow": f"edgekit {label}", "where": "convert_pt2e reference", **metrics(run_program(q.module, held)[0], fp32),
                     "seconds": round(time.time() - t, 1)})
        print(rows[-1], flush=True)
    if not quick:
        from edgekit.converters.tflite import CONVERTER

        with tempfile.TemporaryDirectory() as d:
            t = time.time()
            art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), Path(d), example,
                                   calibration=data.head(32))
            run = CONVERTER.runner(art, Path(d))
            got = np.stack([run(s)[0] for s in held])
            r = run_program(load_quantized_reference(Path(d) / art.meta["reference"]).module(), held)[0]
            st = np.abs(got - r) / art.meta["output_scales"][0]
            rows.append({"flow": "edgekit default recipe -> .tflite (ai-edge-litert, XNNPACK, 1 thread)", "where": "artifact",
                         **metrics(got, fp32), "steps_vs_reference_max": float(st.max()),
                         "steps_vs_reference_mean": round(float(st.mean()), 2),
                         "size_bytes": (Path(d) / art.path).stat().st_size, "seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    OUT.mkdir(exist_ok=True)
    result = {"model": "mobilenet_v2 (ImageNet weights)", "calibration": "calibration_data/images, first 32 photos",
              "evaluation": "calibration_data/images, last 16 photos (held out)", "rows": rows}
    (OUT / "int8_mobilenet_v2.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| flow | measured on | top-1 agree vs FP32 | SQNR dB | steps vs ref (max/mean) |", "|---|---|---|---|---|"]
    for r in rows:
        st = f"{r['steps_vs_reference_max']:.0f} / {r['steps_vs_reference_mean']}" if "steps_vs_reference_max" in r else ""
        lines.append(f"| {r['flow']} | {r['where']} | {r['top1_agree']:.3f} | {r['sqnr_db']} | {st} |")
    (OUT / "int8_mobilenet_v2.md").write_text(
        f"# MobileNetV2 INT8 (calibrate: first 32 photos; evaluate: last 16, held out)\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main("--quick" in sys.argv)
