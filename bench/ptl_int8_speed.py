"""Issue 15: why the MobileNetV2 INT8 .ptl (qnnpack) is not faster than the FP32 .ptl on the x86 host.

Three measurements, all in one process, 1 thread, the lite interpreter (``_load_for_lite_interpreter``,
what edgekit's ptl runner and the phone runtime load), quantized engine qnnpack for INT8:

1. end to end: FP32 and INT8 .ptl timed interleaved (order rotating each round), median of ``--runs``
   rounds after ``--warmup`` rounds, on the bundle's first stored verification input;
2. per op: torch.autograd.profiler around the loaded mobile modules' forward, each conv/linear call
   given its layer kind (stem 3x3, depthwise 3x3, 1x1, linear) from the FP32 call at the same position
   (the weight shape the profiler records for aten::_convolution; quantized::conv2d only records the
   activation), everything else by op name, ms per inference;
3. kernels: single MobileNetV2 layers (shapes below) as one quantized conv on the qnnpack engine
   (per-channel weights as edgekit exports them, and per-tensor), on the onednn engine (x86 VNNI
   kernels; not what ships), and as the float conv the FP32 .ptl runs (F.conv2d, NCHW), interleaved.

Run: nice -n 10 python bench/ptl_int8_speed.py FP32_BUNDLE INT8_BUNDLE  (bundles of
``edgekit export mobilenet_v2 --targets ptl [--quant int8 --rounding nearest]``).
Writes bench/results/ptl_int8_speed.json.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path(__file__).parent / "results" / "ptl_int8_speed.json"
_FP32_CONV = "aten::_convolution"
_INT8_CONV = ("quantized::conv2d", "quantized::conv2d_relu")
_LINEAR = ("aten::linear", "quantized::linear")
# (label, C_in, C_out, H=W, kernel, stride, groups): MobileNetV2 layers
LAYERS = [("1x1 expand 56x56 24->144", 24, 144, 56, 1, 1, 1),
          ("1x1 project 56x56 144->24", 144, 24, 56, 1, 1, 1),
          ("1x1 expand 14x14 96->576", 96, 576, 14, 1, 1, 1),
          ("1x1 head 7x7 320->1280", 320, 1280, 7, 1, 1, 1),
          ("depthwise 3x3 56x56 144", 144, 144, 56, 3, 1, 144),
          ("depthwise 3x3 14x14 576", 576, 576, 14, 3, 1, 576),
          ("stem 3x3 s2 224x224 3->32", 3, 32, 224, 3, 2, 1)]


def interleaved(variants: dict, runs: int, warmup: int) -> dict:
    """bench/int8_speed.py's interleaved timing (order rotating each round) of argument-less variants."""
    from int8_speed import interleaved as timed

    return timed({name: (lambda _sample, f=f: f()) for name, f in variants.items()}, None, runs, warmup)


def _load(path: Path):
    from torch.jit.mobile import _load_for_lite_interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_for_lite_interpreter(str(path))


def _kind(weight_shape) -> str:
    o, i, kh, kw = weight_shape
    if i == 1 and kh == 3:
        return "depthwise 3x3"
    return f"conv {kh}x{kw}"


def profile(fp32, int8, x, n: int) -> dict:
    """ms per inference by layer kind / op name; conv kinds of INT8 calls from the FP32 call at the same index."""
    out, kinds = {}, []
    for label, mod in (("fp32", fp32), ("int8", int8)):
        with torch.no_grad():
            for _ in range(3):
                mod(x)
            with torch.autograd.profiler.profile(record_shapes=True) as prof:
                for _ in range(n):
                    mod(x)
        events = sorted(prof.function_events, key=lambda e: e.time_range.start)
        top = [e for e in events if e.cpu_parent is None]  # the lite interpreter's top-level op calls
        convs = [e for e in top if e.name in (_FP32_CONV, "aten::conv2d", *_INT8_CONV)]
        if label == "fp32":
            for e in convs[: len(convs) // n]:
                # the lite interpreter records its stack (a residual input too): _convolution's 13 arguments
                # are the last 13 shapes, the weight the second of them
                shape = e.input_shapes[-12] if len(e.input_shapes) >= 13 else None
                kinds.append(_kind(shape) if shape else "conv ?")
        per = len(convs) // n
        sums: dict[str, float] = {}
        for i, e in enumerate(convs):
            k = kinds[i % per] if per == len(kinds) else "conv (unmatched)"
            sums[k] = sums.get(k, 0.0) + e.cpu_time_total / n / 1e3
        for e in top:
            if e not in convs:
                name = "linear" if e.name in _LINEAR else e.name
                sums[name] = sums.get(name, 0.0) + e.cpu_time_total / n / 1e3
        total = sum(e.cpu_time_total for e in top) / n / 1e3
        conv_total = sum(e.cpu_time_total for e in convs) / n / 1e3
        out[label] = {"total_top_level_ops": round(total, 3), "all_convs": round(conv_total, 3), "convs_per_inference": per,
                      **{k: round(v, 3) for k, v in sorted(sums.items(), key=lambda kv: -kv[1]) if v >= 0.005}}
    return out


def _qconv(x, w, stride, groups, engine: str, per_channel: bool):
    """A quantized conv prepacked on ``engine`` -> a callable; input quint8, weights int8 symmetric."""
    torch.backends.quantized.engine = engine
    xs = float(x.abs().max()) / 127
    qx = torch.quantize_per_tensor(x, xs, 128, torch.quint8)
    if per_channel:
        ws = w.abs().amax(dim=(1, 2, 3)) / 127
        qw = torch.quantize_per_channel(w, ws, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    else:
        qw = torch.quantize_per_tensor(w, float(w.abs().max()) / 127, 0, torch.qint8)
    pad = (w.shape[-1] // 2,) * 2
    packed = torch.ops.quantized.conv2d_prepack(qw, torch.zeros(w.shape[0]), (stride, stride), pad, (1, 1), groups)
    out_scale = float(F.conv2d(x, w, None, stride, pad, 1, groups).abs().max()) / 127
    torch.ops.quantized.conv2d(qx, packed, out_scale, 128)  # packs for the input scale once (qnnpack)

    def run(qx=qx, packed=packed, s=out_scale, eng=engine):
        torch.backends.quantized.engine = eng
        torch.ops.quantized.conv2d(qx, packed, s, 128)
    return run


def kernels(runs: int, warmup: int) -> dict:
    g = torch.Generator().manual_seed(0)
    out = {}
    for label, cin, cout, hw, k, stride, groups in LAYERS:
        x = torch.randn(1, cin, hw, hw, generator=g).clamp_min(0)
        w = torch.randn(cout, cin // groups, k, k, generator=g) * 0.1
        pad = k // 2
        variants = {"float (FP32 .ptl's F.conv2d, NCHW)": lambda x=x, w=w, s=stride, p=pad, gr=groups: F.conv2d(x, w, None, s, p, 1, gr),
                    "int8 qnnpack per-channel (what ships)": _qconv(x, w, stride, groups, "qnnpack", True),
                    "int8 qnnpack per-tensor": _qconv(x, w, stride, groups, "qnnpack", False)}
        if "onednn" in torch.backends.quantized.supported_engines:
            variants["int8 onednn per-channel (x86 kernels, not shipped)"] = _qconv(x, w, stride, groups, "onednn", True)
        with torch.no_grad():
            r = interleaved(variants, runs, warmup)
        ho = (hw + 2 * pad - k) // stride + 1
        macs = ho * ho * cout * (cin // groups) * k * k
        for v in r.values():
            v["gmac_per_s"] = round(macs / (v["median_ms"] * 1e-3) / 1e9, 2)
        out[label] = {"macs": macs, **r}
        print(label, {n: (v["median_ms"], v["gmac_per_s"]) for n, v in r.items()}, flush=True)
    torch.backends.quantized.engine = "qnnpack"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fp32_bundle", type=Path)
    ap.add_argument("int8_bundle", type=Path)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end interleaved runs of --runs rounds each")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.backends.quantized.engine = "qnnpack"
    fp32 = _load(next(args.fp32_bundle.glob("*-fp32.ptl")))
    int8_path = next(args.int8_bundle.glob("*-int8.ptl"))
    int8 = _load(int8_path)
    # the same file with its weights packed at load for the onednn engine (x86 VNNI kernels): a probe of
    # what the graph costs on fast int8 kernels, not a runner (other integer results, STACK.md)
    torch.backends.quantized.engine = "onednn"
    int8_onednn = _load(int8_path)
    torch.backends.quantized.engine = "qnnpack"

    def on(engine, mod):
        def run():
            torch.backends.quantized.engine = engine
            mod(x)
        return run
    npz = np.load(args.int8_bundle / "verify_inputs.npz")
    x = torch.from_numpy(np.ascontiguousarray(npz[npz.files[0]][0], dtype=np.float32))
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "engine": "qnnpack",
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "end_to_end": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            load = os.getloadavg()
            r = interleaved({"fp32": on("qnnpack", fp32), "int8": on("qnnpack", int8),
                             "int8 same file, onednn engine (probe)": on("onednn", int8_onednn)}, args.runs, args.warmup)
            torch.backends.quantized.engine = "qnnpack"
            r["int8/fp32"] = round(r["int8"]["median_ms"] / r["fp32"]["median_ms"], 3)
            r["load"] = [round(v, 2) for v in load] + [round(v, 2) for v in os.getloadavg()]
            print(r, flush=True)
            result["end_to_end"].append(r)
    result["profile_ms_per_inference"] = profile(fp32, int8, x, 20)
    print(json.dumps(result["profile_ms_per_inference"], indent=1), flush=True)
    result["kernels"] = kernels(args.runs, args.warmup)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
