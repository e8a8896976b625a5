"""INT8 vs FP32 latency of MobileNetV2, per target, in each target's real host runtime (1 thread).

Two bundles written by edgekit (the FP32 files, and the default INT8 job's):

    edgekit export mobilenet_v2 --targets tflite,executorch,ptl,ncnn,onnx,mnn,openvino --out /tmp/mv2_fp32
    edgekit export mobilenet_v2 --targets all --quant int8 --out /tmp/mv2_int8
    python bench/int8_speed.py /tmp/mv2_fp32 /tmp/mv2_int8 [--targets ptl,ncnn] [--runs 80]

Each target runs in its own fresh process (as edgekit's verification does). In it, the FP32 and the
INT8 artifact are loaded through edgekit's own runners (``Converter.runner``, 1 thread, strict
settings) and timed interleaved (one run of each variant per round, the order rotating every
round), on the first stored verification input of the INT8 bundle (a real photo): warm-up rounds,
then median / p10 / p90 of ``--runs`` rounds. ``os.getloadavg()`` is recorded before and after
each target (2 shared cores: compare variants within a target, not across separate runs).

Diagnostics, where the runtime offers them:
- ptl: the INT8 .ptl loaded and run under each quantized engine torch has here (qnnpack, x86,
  onednn, fbgemm; the engine packs the weights when the file is loaded and picks the kernels of
  add/pooling at run time), timed in the same interleaved rounds, with its distance to the
  quantized reference on the stored verification inputs in output steps; and the per-op time of
  each (torch.autograd.profiler on the same file loaded with torch.jit.load, which runs the same
  kernels as the lite interpreter) summed by layer kind (stem 3x3 conv, depthwise, 1x1, linear,
  the rest), the layer kinds read from the FP32 ncnn .param (same layer order).
- ncnn: no profiler in the python bindings, so each layer's time is measured as the growth of the
  time to extract its output blob with a fresh extractor (ncnn computes only what the blob needs),
  summed by layer type and kernel size; variants: the INT8 file with ``use_packing_layout`` off
  (ncnn's unpacked int8 path), and a copy of the INT8 files with ncnn2int8's requantize fusion
  (``8=101``: a conv feeding one int8 conv writes int8 itself), which edgekit's writer does not do,
  and that copy with the depthwise layers given back their FP32 records (is ncnn's x86 int8
  depthwise kernel the slow part?); outputs compared with edgekit's runner and the quantized reference.

Writes bench/results/int8_speed.{json,md} (a run of some targets on the same two bundles replaces only their rows).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
TARGETS = ("ptl", "ncnn", "tflite", "executorch", "onnx", "mnn", "openvino")
ENGINES = ("qnnpack", "x86", "onednn", "fbgemm")


# ---- shared ---------------------------------------------------------------------------------------

def _manifest(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def _artifact(bundle: Path, target: str):
    from edgekit.converters import Artifact

    for a in _manifest(bundle)["artifacts"]:
        if a["target"] == target:
            return Artifact.from_dict({**a, "files": [f["path"] if isinstance(f, dict) else f for f in a["files"]]})
    raise SystemExit(f"{bundle} has no {target} artifact")


def _inputs(bundle: Path) -> list[list[np.ndarray]]:
    """The bundle's stored verification inputs: one list of arrays (batch 1) per sample."""
    with np.load(Path(bundle) / "verify_inputs.npz") as z:
        arrays = [z[k] for k in z.files]
    return [[a[i] for a in arrays] for i in range(len(arrays[0]))]


def _stats(times: list[float]) -> dict:
    t = np.asarray(times) * 1e3
    return {"median_ms": round(float(np.median(t)), 3), "p10_ms": round(float(np.percentile(t, 10)), 3),
            "p90_ms": round(float(np.percentile(t, 90)), 3), "n": int(t.size)}


def interleaved(variants: dict, sample, runs: int, warmup: int) -> dict:
    """Time every variant once per round, the order rotating each round; warm-up rounds dropped."""
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(warmup + runs):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            t = time.perf_counter()
            variants[name](sample)
            dt = time.perf_counter() - t
            if r >= warmup:
                times[name].append(dt)
    return {n: _stats(t) for n, t in times.items()}


# ---- per-target children ----------------------------------------------------------------------------

def child(target: str, fp32_root: Path, int8_root: Path, runs: int, warmup: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from edgekit.converters import get

    conv = get(target)
    samples = _inputs(int8_root)
    a32, a8 = _artifact(fp32_root, target), _artifact(int8_root, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = {"fp32": conv.runner(a32, fp32_root, threads=1), "int8": conv.runner(a8, int8_root, threads=1)}
        extra: dict = {}
        if target == "ptl":
            variants.update(_ptl_engines(a8, int8_root))
        # the variants rewrite 8=1 files; edgekit's writer fuses requantize itself now (8=101): time it as it is
        probe = target == "ncnn" and not any(q.get("output_scale") for q in a8.meta.get("int8_layers", []))
        if probe:
            variants["int8 use_packing_layout=0"] = _ncnn_runner(a8, int8_root, use_packing_layout=False)
            fused_root, fused, extra["requantize_fused_pairs"] = _ncnn_variant_copy(a8, int8_root)
            variants["int8 + requantize fused (8=101)"] = _ncnn_runner(fused, fused_root)
            hybrid_root, hybrid, _ = _ncnn_variant_copy(a8, int8_root, True, ("ConvolutionDepthWise",), (a32, fp32_root))
            variants["int8 + requantize, depthwise fp32"] = _ncnn_runner(hybrid, hybrid_root)
        load = {"before": [round(x, 2) for x in os.getloadavg()]}
        timing = interleaved(variants, samples[0], runs, warmup)
        load["after"] = [round(x, 2) for x in os.getloadavg()]
        if target == "ptl":
            extra["engine_fidelity"] = _ptl_fidelity(a8, int8_root, samples, variants)
            extra["profile_ms"] = _ptl_profile(fp32_root / a32.path, int8_root / a8.path, samples[0], fp32_root)
            extra["engine_default"] = torch.backends.quantized.engine
        if target == "mnn":
            extra["profile_ms"] = {"fp32": _mnn_profile(fp32_root / a32.path, samples[0], runs // 4),
                                   "int8": _mnn_profile(int8_root / a8.path, samples[0], runs // 4)}
        if probe:
            extra["profile_ms"] = _ncnn_profile({"fp32": (a32, fp32_root), "int8": (a8, int8_root),
                                                 "int8 + requantize fused (8=101)": (fused, fused_root)}, samples[0],
                                                max(15, runs // 4))
            extra["ncnn_fidelity"] = _ncnn_fidelity(a8, int8_root, samples, variants)
            for folder in (fused_root, hybrid_root):
                shutil.rmtree(folder, ignore_errors=True)
    return {"target": target, "timing": timing, "load": load, **extra}


def _ptl_engines(art, root: Path) -> dict:
    """The INT8 .ptl loaded under each quantized engine; each call runs under its engine."""
    import torch

    from edgekit.converters.ptl import _load

    out = {}
    for eng in ENGINES:
        if eng not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = eng
        mod = _load(root / art.path)

        def run(sample, mod=mod, eng=eng):
            torch.backends.quantized.engine = eng
            with torch.no_grad():
                return [mod(*[torch.from_numpy(np.ascontiguousarray(a)) for a in sample]).numpy()]

        out[f"int8 engine={eng}"] = run
    return out


def _ptl_fidelity(art, root: Path, samples, variants) -> dict:
    """Each engine's outputs vs the quantized reference, in output quantization steps."""
    from edgekit.quant.reference import load_quantized_reference, run_program

    ref = run_program(load_quantized_reference(root / art.meta["reference"]).module(), samples)[0]
    step = float(art.meta["output_scales"][0])
    out = {}
    for name, run in variants.items():
        if not name.startswith("int8"):
            continue
        got = np.stack([run(s)[0] for s in samples])
        err = np.abs(got.reshape(ref.shape) - ref) / step
        out[name] = {"steps_max": round(float(err.max()), 2), "steps_mean": round(float(err.mean()), 3),
                     "top1_vs_reference": float((got.reshape(ref.shape).argmax(-1) == ref.argmax(-1)).mean()),
                     "samples": len(samples)}
    out["output_step"] = step
    return out


def _layer_kinds(fp32_root: Path) -> list[str]:
    """Conv/linear layer kinds in execution order, from the FP32 ncnn .param of the same model."""
    param = next(Path(fp32_root).glob("*.param"), None)
    kinds = []
    for line in (param.read_text().splitlines()[2:] if param else []):
        tok = line.split()
        if tok[0] == "ConvolutionDepthWise":
            kinds.append("depthwise 3x3")
        elif tok[0] == "Convolution":
            k = next((t.split("=")[1] for t in tok if t.startswith("1=")), "?")
            kinds.append(f"conv {k}x{k}")
        elif tok[0] == "InnerProduct":
            kinds.append("linear")
    return kinds


_CONV_OPS = {"quantized::conv2d", "quantized::conv2d_relu", "aten::conv2d", "aten::_convolution",
             "quantized::linear", "aten::linear"}


def _ptl_profile(fp32_ptl: Path, int8_ptl: Path, sample, fp32_root: Path, n: int = 15) -> dict:
    """Per-op time (ms per inference) by layer kind, torch.autograd.profiler on torch.jit.load."""
    import torch

    kinds = _layer_kinds(fp32_root)
    x = [torch.from_numpy(np.ascontiguousarray(a)) for a in sample]
    out = {}
    for label, path, eng in [("fp32", fp32_ptl, "x86"), *[(f"int8 engine={e}", int8_ptl, e) for e in ENGINES
                                                          if e in torch.backends.quantized.supported_engines]]:
        torch.backends.quantized.engine = eng
        m = torch.jit.load(str(path))
        with torch.no_grad():
            for _ in range(3):
                m(*x)
            with torch.autograd.profiler.profile() as prof:
                for _ in range(n):
                    m(*x)
        top = [e for e in prof.function_events if e.cpu_parent is not None and e.cpu_parent.name == "forward"]
        convs = [e for e in top if e.name in _CONV_OPS]
        per = len(convs) // n
        sums: dict[str, float] = {}
        for i, e in enumerate(convs):
            kind = kinds[i % per] if per == len(kinds) else "conv/linear"
            sums[kind] = sums.get(kind, 0.0) + e.cpu_time_total / n / 1e3
        for e in top:
            if e.name not in _CONV_OPS:
                sums[e.name] = sums.get(e.name, 0.0) + e.cpu_time_total / n / 1e3
        fwd = sum(e.cpu_time_total for e in prof.function_events if e.name == "forward") / n / 1e3
        out[label] = {"forward": round(fwd, 2), **{k: round(v, 2) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])
                                                  if v >= 0.05}}
    torch.backends.quantized.engine = "qnnpack"
    return out


def _ncnn_runner(art, root: Path, **opts):
    """An ncnn run with edgekit's strict options plus ``opts`` (a diagnostic variant)."""
    import ncnn

    net = _ncnn_net(art, root, **opts)
    name_in, name_out = art.meta["inputs"][0], art.meta["outputs"][0]

    def run(sample):
        ex = net.create_extractor()
        ex.input(name_in, ncnn.Mat(np.ascontiguousarray(sample[0][0], dtype=np.float32)).clone())
        _, mat = ex.extract(name_out)
        return [np.array(mat)[None]]

    run.net = net
    return run


def _ncnn_variant_copy(art, root: Path, requantize: bool = True, float_types: tuple = (), fp32=None):
    """A rewritten copy of the INT8 files (diagnostics; edgekit's writer does neither):

    - ``requantize``: ncnn2int8's ``fuse_requantize``: an int8 conv/depthwise layer whose output blob
      feeds exactly one int8 conv/depthwise layer gets ``8=101`` and that layer's input scale
      appended to its .bin record, so it requantizes its output to int8 itself (activation applied
      first) and the next layer reads int8 instead of quantizing a float blob;
    - ``float_types``: layers of these types get their FP32 record back from ``fp32`` (the FP32
      (Artifact, folder) of the same model: same layers, same order) and lose ``8=1``.
    -> (folder, Artifact, number of fused pairs)."""
    import struct
    import tempfile

    from edgekit.converters import Artifact
    from edgekit.converters.ncnn.int8 import _bin_layout, _params, _record_bytes
    from edgekit.converters.ncnn.param import format_layers, parse_layers

    layers = parse_layers((root / art.files[0]).read_text())
    data = (root / art.files[1]).read_bytes()
    if float_types:
        layers32 = parse_layers((fp32[1] / fp32[0].files[0]).read_text())
        data32 = (fp32[1] / fp32[0].files[1]).read_bytes()
        layout32 = _bin_layout(layers32, len(data32))
    scales = {q["layer"]: q["input_scale"] for q in art.meta["int8_layers"]}
    consumers: dict[str, list] = {}
    for lay in layers:
        for b in lay.inputs:
            consumers.setdefault(b, []).append(lay)
    int8 = {lay.name for lay in layers if _params(lay).get(8) == "1"}
    stays = {lay.name for lay in layers if lay.name in int8 and lay.type not in float_types}
    convs = {lay.name for lay in layers if lay.name in stays and lay.type in ("Convolution", "ConvolutionDepthWise")}
    chunks, off, fused = [], 0, 0
    for lay in layers:
        p = _params(lay)
        if lay.name in int8:
            fc = lay.type == "InnerProduct"
            n_out, wsize, bias = int(p[0]), int(p[2 if fc else 6]), int(p.get(1 if fc else 5, 0))
            n = 4 + wsize + (-wsize % 4) + (4 * n_out if bias else 0) + 4 * n_out + 4
        else:
            n = _record_bytes(lay)
        rec = data[off:off + n]
        off += n
        if lay.name in int8 and lay.name not in stays:
            o32, n32 = layout32[lay.name]
            rec = data32[o32:o32 + n32]
            lay.params = [t for t in lay.params if not t.startswith("8=")]
        users = consumers.get(lay.outputs[0], []) if requantize and lay.name in convs else []
        if len(users) == 1 and users[0].name in convs and len(users[0].inputs) == 1:
            rec += struct.pack("<f", scales[users[0].name])
            lay.params = [t for t in lay.params if not t.startswith("8=")] + ["8=101"]
            fused += 1
        chunks.append(rec)
    if off != len(data):
        raise SystemExit(f"INT8 .bin has {len(data)} bytes, its .param describes {off}")
    folder = Path(tempfile.mkdtemp(prefix="int8_speed_ncnn_"))
    (folder / "v.param").write_text(format_layers(layers))
    (folder / "v.bin").write_bytes(b"".join(chunks))
    return folder, Artifact("ncnn", "int8", "v.param", ("v.param", "v.bin"), dict(art.meta)), fused


def _ncnn_fidelity(art, root: Path, samples, variants) -> dict:
    """Each INT8 variant vs edgekit's INT8 runner (max |diff|) and vs the quantized reference
    (int8 output steps, as edgekit's verification measures ncnn)."""
    from edgekit.quant.reference import load_quantized_reference, run_program

    ref = run_program(load_quantized_reference(root / art.meta["reference"]).module(), samples)[0]
    step = float(art.meta["output_scales"][0])
    shipped = np.stack([variants["int8"](s)[0] for s in samples]).reshape(ref.shape)
    out = {"output_step": step}
    for name, run in variants.items():
        if not name.startswith("int8"):
            continue
        got = np.stack([run(s)[0] for s in samples]).reshape(ref.shape)
        err = np.abs(got - ref) / step
        out[name] = {"steps_max": round(float(err.max()), 2), "steps_mean": round(float(err.mean()), 3),
                     "top1_vs_reference": float((got.argmax(-1) == ref.argmax(-1)).mean()),
                     "max_abs_diff_vs_int8_runner": float(np.abs(got - shipped).max()), "samples": len(samples)}
    return out


def _ncnn_net(art, root: Path, **opts):
    import ncnn

    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage", "use_bf16_packed"):
        setattr(opt, flag, False)
    opt.num_threads = 1
    for k, v in opts.items():
        setattr(opt, k, v)
    if net.load_param(str(root / art.files[0])) or net.load_model(str(root / art.files[1])):
        raise SystemExit(f"ncnn cannot load {art.files[:2]}")
    return net


def _mnn_profile(path: Path, sample, n: int) -> dict:
    """Time per op type (ms per inference, mean of n runs after 5): MNN's Session API calls back before
    and after each op (runSessionWithCallBackInfo), on the CPU backend, 1 thread, precision high."""
    import MNN

    interp = MNN.Interpreter(str(path))
    session = interp.createSession({"backend": "CPU", "numThread": 1, "precision": "high"})
    tensor = MNN.Tensor(list(sample[0].shape), MNN.Halide_Type_Float, np.ascontiguousarray(sample[0], np.float32),
                        MNN.Tensor_DimensionType_Caffe)
    sums, started = {}, {}

    def begin(_, info):
        started[info.getName()] = time.perf_counter()
        return True

    def end(_, info):
        sums[info.getType()] = sums.get(info.getType(), 0.0) + time.perf_counter() - started[info.getName()]
        return True

    for r in range(5 + n):
        if r == 5:
            sums.clear()
        interp.getSessionInput(session).copyFrom(tensor)
        interp.runSessionWithCallBackInfo(session, begin, end)
    per_run = {k: v * 1e3 / n for k, v in sums.items()}
    return {"total": round(sum(per_run.values()), 2), **{k: round(v, 2) for k, v in sorted(per_run.items(), key=lambda kv: -kv[1])}}


def _ncnn_profile(arts: dict, sample, n: int) -> dict:
    """Per-layer time of each file: the growth of the time (fastest of n) to extract a layer's output
    blob (fresh extractor each time), summed by layer type; the files are measured interleaved."""
    import ncnn

    from edgekit.converters.ncnn.param import parse_layers

    nets, layers = {}, {}
    for label, (art, root) in arts.items():
        nets[label] = _ncnn_net(art, root)
        layers[label] = parse_layers((root / art.files[0]).read_text())
    x = np.ascontiguousarray(sample[0][0], dtype=np.float32)
    blobs = [lay.outputs[0] for lay in layers["fp32"] if lay.type != "Input"]
    cum = {label: [] for label in nets}
    for blob in blobs:
        times = {label: [] for label in nets}
        for _ in range(n):
            for label, net in nets.items():
                ex = net.create_extractor()
                ex.input("in0", ncnn.Mat(x).clone())
                t = time.perf_counter()
                ex.extract(blob)
                times[label].append(time.perf_counter() - t)
        for label in nets:  # the fastest of n: the least disturbed by other processes on shared cores
            cum[label].append(float(np.min(times[label])) * 1e3)
    out = {}
    for label in nets:
        sums: dict[str, float] = {}
        prev = 0.0
        for lay, c in zip([x for x in layers[label] if x.type != "Input"], cum[label]):
            kind = lay.type
            if lay.type == "Convolution":
                k = next((t.split("=")[1] for t in lay.params if t.startswith("1=")), "?")
                kind = f"Convolution {k}x{k}"
            sums[kind] = sums.get(kind, 0.0) + max(c - prev, 0.0)
            prev = max(prev, c)
        out[label] = {"total": round(cum[label][-1], 2), **{k: round(v, 2) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])}}
    return out


# ---- parent -----------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32_bundle", type=Path)
    ap.add_argument("int8_bundle", type=Path)
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--runs", type=int, default=80)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the saved .json")
    args = ap.parse_args()
    if args.markdown_only:
        (RESULTS / "int8_speed.md").write_text(markdown(json.loads((RESULTS / "int8_speed.json").read_text())))
        return
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.fp32_bundle.resolve(), args.int8_bundle.resolve(),
                                           args.runs, args.warmup)), flush=True)
        return
    rows = []
    for target in args.targets.split(","):
        proc = subprocess.run([sys.executable, __file__, str(args.fp32_bundle), str(args.int8_bundle),
                               "--child", target, "--runs", str(args.runs), "--warmup", str(args.warmup)],
                              capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{target}: failed\n{proc.stderr[-3000:]}", flush=True)
            rows.append({"target": target, "error": proc.stderr.strip().splitlines()[-1:] or ["no output"]})
            continue
        row = json.loads(line[len("RESULT "):])
        print(target, json.dumps(row["timing"]), row["load"], flush=True)
        rows.append(row)
    created = {k: _manifest(b)["created"] for k, b in (("fp32", args.fp32_bundle), ("int8", args.int8_bundle))}
    old = json.loads((RESULTS / "int8_speed.json").read_text()) if (RESULTS / "int8_speed.json").is_file() else {}
    if old.get("bundles_created") == created:  # the same two bundles: a run of some targets replaces only their rows
        measured = {r["target"] for r in rows}
        rows = [r for r in old["targets"] if r["target"] not in measured] + rows
    result = {"model": "mobilenet_v2", "fp32_bundle": str(args.fp32_bundle), "int8_bundle": str(args.int8_bundle),
              "bundles_created": created,
              "runs": args.runs, "warmup": args.warmup, "threads": 1, "cpu": _cpu(), "python": platform.python_version(),
              "versions": _manifest(args.int8_bundle).get("versions", {}), "targets": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "int8_speed.md").write_text(markdown(result))
    print(f"wrote {RESULTS / 'int8_speed.md'}")


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(isa)}; {os.cpu_count()} cores)"


def markdown(result: dict) -> str:
    lines = ["# MobileNetV2: INT8 vs FP32 latency per target (host, 1 thread)", "",
             f"CPU: {result['cpu']}. Each target in a fresh process, FP32 and INT8 loaded by edgekit's runners and "
             f"timed interleaved on one real photo: {result['warmup']} warm-up rounds, then {result['runs']} rounds; "
             "load = os.getloadavg() (1/5/15 min) before -> after. Reproduce: see bench/int8_speed.py.", "",
             "| target | variant | median ms | p10 ms | p90 ms | INT8/FP32 (median) | load before -> after |",
             "|---|---|---|---|---|---|---|"]
    for row in result["targets"]:
        if "timing" not in row:
            lines.append(f"| {row['target']} | error: {row['error']} | | | | | |")
            continue
        base = row["timing"]["fp32"]["median_ms"]
        load = f"{row['load']['before'][0]} -> {row['load']['after'][0]}"
        for name, s in row["timing"].items():
            ratio = "" if name == "fp32" else f"{s['median_ms'] / base:.2f}"
            lines.append(f"| {row['target']} | {name} | {s['median_ms']} | {s['p10_ms']} | {s['p90_ms']} | {ratio} | {load} |")
    for row in result["targets"]:
        fid = row.get("engine_fidelity") or row.get("ncnn_fidelity")
        if fid:
            lines += ["", f"## {row['target']}: INT8 variants vs the quantized reference ({fid['output_step']:.4g} per "
                      "output step, the bundle's stored verification inputs)", "",
                      "| variant | steps max | steps mean | top-1 vs reference | max abs diff vs edgekit's runner |",
                      "|---|---|---|---|---|"]
            lines += [f"| {k} | {v['steps_max']} | {v['steps_mean']} | {v['top1_vs_reference']:.3f} | "
                      f"{v.get('max_abs_diff_vs_int8_runner', '')} |" for k, v in fid.items() if isinstance(v, dict)]
        if row.get("requantize_fused_pairs") is not None:
            lines.append(f"\nncnn: {row['requantize_fused_pairs']} conv->conv pairs fused by the requantize variant.")
        if row.get("profile_ms"):
            how = {"ptl": "torch.autograd.profiler, torch.jit.load of the same files",
                   "mnn": "MNN's Session API, a callback before and after each op"}.get(
                       row["target"], "growth of the fastest extract time per layer")
            lines += ["", f"## {row['target']}: time per layer kind, ms per inference ({how})", "",
                      "Indicative only: on 2 shared cores the per-kind sums move by several ms between runs; the "
                      "interleaved end-to-end variants above are the evidence.", ""]
            for label, sums in row["profile_ms"].items():
                lines.append(f"- {label}: " + ", ".join(f"{k} {v}" for k, v in sums.items()))
    lines += ["", "## Reading", "",
              "- ptl: `int8` is edgekit's runner (engine qnnpack, what PyTorch Mobile runs on a phone; the file's weights "
              "are packed for it). PyTorch's qnnpack has only SSE2 kernels on x86 (q8conv/q8gemm 4x4c2; aarch64 has 8x8 "
              "NEON), so its 1x1 convolutions are the slow part here. The x86/onednn/fbgemm rows run the same file on "
              "torch's x86 kernels: much faster, but other integer results (fidelity table) and none of qnnpack's own "
              "faults (e.g. its channels_last hardtanh bug, STACK.md), so they cannot verify what ships.",
              "- ncnn: `int8` is edgekit's runner on edgekit's INT8 files (every int8 layer `8=1`: it dequantizes its "
              "output to a float blob and the next int8 layer quantizes it again). `8=101` is ncnn2int8's requantize "
              "fusion (an int8 conv feeding one int8 conv writes int8 itself), applied to a copy of the same files: the "
              "same outputs, less time. `depthwise fp32` gives the depthwise layers their FP32 records back (other "
              "numbers; a probe of ncnn's x86 int8 depthwise kernel, not a proposal). `use_packing_layout=0`: why the "
              "runner keeps ncnn's default (on).",
              "- mnn: the PyPI wheel (MNN 3.6.1) is built without AVX-512: `objdump -d _mnncengine*.so` finds no zmm "
              "register and no vpdpbusd (VNNI) instruction, 15,976 ymm uses. So on x86 its int8 convolutions run AVX2 "
              "kernels no faster than its AVX2/FMA float ones, and its int8 depthwise convs and residual adds "
              "(BinaryOp on int8) are slower than the float ones (profile above): INT8 is slower than FP32 on this host. "
              "MNN's int8 kernels are written for ARM (sdot/smmla), which qemu runs but cannot time; not fixed here.",
              "- Emulated aarch64 (qemu, numbers only, not timed): the `8=101` copy gives the same outputs as the `8=1` "
              "files on cortex-a53 and cortex-a76 (max abs diff 0.0, 8 photos)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
