"""MobileNetV2 PyTorch Mobile INT8: edgekit's ptl INT8 vs PyTorch's default qnnpack FX flow.

Data: calibration_data/images: calibrate on photos 1-32, evaluate on 33-48 (held out). For each
.ptl (run in the lite interpreter, engine qnnpack, 1 thread): top-1 agreement and logit SQNR vs
FP32 (compression cost), distance to its own float-simulation reference in output steps
(conversion fidelity), file size and latency (median of the held-out images). FP32 .ptl for scale.
Writes bench/results/int8_ptl_mobilenet_v2.json.   Run: python bench/int8_ptl_mobilenet_v2.py
"""
from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from edgekit.converters.ptl import CONVERTER
from edgekit.converters.ptl.quant import qnnpack_engine, simulate
from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

OUT = Path(__file__).parent / "results" / "int8_ptl_mobilenet_v2.json"


def sqnr(a, ref):
    return float(10 * np.log10((ref ** 2).sum() / max(((a - ref) ** 2).sum(), 1e-30)))


def run_timed(run, samples):
    outs, times = [], []
    for s in samples:
        t = time.perf_counter()
        outs.append(run(s)[0])
        times.append(time.perf_counter() - t)
    return np.stack(outs), float(np.median(times) * 1000)


def row(label, path, got, ms, fp32, ref=None, scale=None):
    r = {"flow": label, "file": path.name, "size_bytes": path.stat().st_size, "latency_ms": round(ms, 2),
         "top1_agree_vs_fp32": float((got.argmax(-1) == fp32.argmax(-1)).mean()), "sqnr_db_vs_fp32": round(sqnr(got, fp32), 2)}
    if ref is not None:
        err = np.abs(got - ref) / scale
        r.update({"steps_vs_reference_max": round(float(err.max()), 2), "steps_vs_reference_mean": round(float(err.mean()), 3),
                  "top1_agree_vs_reference": float((got.argmax(-1) == ref.argmax(-1)).mean()),
                  "reference_top1_agree_vs_fp32": float((ref.argmax(-1) == fp32.argmax(-1)).mean()),
                  "reference_sqnr_db_vs_fp32": round(sqnr(ref, fp32), 2)})
    print(r, flush=True)
    return r


def pytorch_default(model, example, calib, path: Path):
    """The documented FX flow: get_default_qconfig_mapping("qnnpack"), PyTorch's own observers."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with qnnpack_engine():
        prepared = prepare_fx(model, get_default_qconfig_mapping("qnnpack"), example, backend_config=get_qnnpack_backend_config())
        run_program(prepared, calib)
        converted = convert_fx(prepared, backend_config=get_qnnpack_backend_config())
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.jit.freeze(torch.jit.trace(converted, example).eval())._save_for_lite_interpreter(str(path))
    return converted


def main() -> None:
    torch.set_num_threads(1)
    lm = BUILTIN["mobilenet_v2"]()
    data = load_samples(lm.default_data, lm.spec)
    calib, held = data.head(32), data.samples[32:48]
    example = tuple(torch.from_numpy(a) for a in calib.samples[0])
    fp32 = run_program(lm.module, held)[0]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        art = CONVERTER.export(lm.module, lm.spec, None, d, example)
        got, ms = run_timed(CONVERTER.runner(art, d), held)
        rows.append(row("FP32 .ptl", d / art.path, got, ms, fp32))
        t = time.time()
        art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), d, example, calibration=calib)
        secs = time.time() - t
        ref = run_program(load_quantized_reference(d / art.meta["reference"]).module(), held)[0]
        got, ms = run_timed(CONVERTER.runner(art, d), held)
        rows.append({**row(f"edgekit ptl INT8 ({art.meta['recipe_summary']})", d / art.path, got, ms, fp32, ref,
                           art.meta["output_scales"][0]), "export_seconds": round(secs, 1)})
        naive_path = d / "default.ptl"
        converted = pytorch_default(lm.module, example, calib.samples, naive_path)
        sim, out_qp, _ = simulate(converted)
        ref = run_program(sim, held)[0]
        from torch.jit.mobile import _load_for_lite_interpreter

        with qnnpack_engine(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = _load_for_lite_interpreter(str(naive_path))
            got, ms = run_timed(lambda s: [mod(torch.from_numpy(s[0])).numpy()], held)
            eager = run_program(converted, held)[0]
        r = row("PyTorch default: get_default_qconfig_mapping('qnnpack') FX (HistogramObserver, per-tensor weights)",
                naive_path, got, ms, fp32, ref, out_qp[0][0])
        r["ptl_equals_eager_quantized_module"] = bool(np.array_equal(got, eager))
        rows.append(r)
    result = {"model": "mobilenet_v2 (ImageNet weights)", "calibration": "calibration_data/images 1-32",
              "evaluation": "calibration_data/images 33-48 (held out)", "runtime": "lite interpreter, qnnpack, 1 thread",
              "torch": torch.__version__, "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.part")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
