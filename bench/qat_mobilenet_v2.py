"""MobileNetV2 INT8: quantization-aware training (--qat-steps) against PTQ alone and AdaRound, on every
static INT8 target's real artifact.

Data (bench/int8_eval_set.py): 64 calibration crops of calibration_data/images files 1-32 (QAT trains
on them: 48, its held-out check on the other 16) and 256 held-out crops of files 33-48. Every row:
top-1 agreement and logit SQNR vs FP32 on the 256 held-out crops, of the artifact run in its runtime
(1 thread), and its size.

Flows (each the recipe `edgekit export mobilenet_v2 --quant int8` uses: the model's measured settings,
min/max output range and its most sensitive layers float within 0.2 % of the weight bytes, chosen on
the float model as the pipeline does):
- ptq: round-to-nearest weights, calibrated ranges;
- adaround: `--rounding adaround` (learned rounding, cached by content hash);
- qat: `--qat-steps N` (edgekit.quant.qat.train_quantized on the calibration crops; its learned input
  ranges in the recipe; rounding nearest), plus the same trained weights with recalibrated ranges
  (what the learned ranges add).
Writes bench/results/qat_mobilenet_v2.{json,md} for 160 steps, qat_mobilenet_v2_<STEPS>steps.{json,md}
otherwise (a run of some targets replaces their rows only).
Run: python bench/qat_mobilenet_v2.py [STEPS] [TARGETS]
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import metrics  # noqa: E402
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.models import BUILTIN  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.qat import QATSettings, train_quantized  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def out_path(steps: int) -> Path:
    return RESULTS / ("qat_mobilenet_v2.json" if steps == 160 else f"qat_mobilenet_v2_{steps}steps.json")
TARGETS = ("tflite", "executorch", "onnx", "ptl", "ncnn")
FLOW_ORDER = ("ptq", "adaround", "qat")


def artifact_row(setup: dict, name: str, model, recipe: QuantRecipe, d: Path) -> dict:
    """Export ``model`` to target ``name`` with ``recipe``; its metrics on the held-out crops."""
    from edgekit.converters import get as get_converter

    conv = get_converter(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.time()
        art = conv.export(model, setup["lm"].spec, recipe, d, setup["example"], calibration=setup["calib_set"])
        seconds = time.time() - t
        run = conv.runner(art, d)
        got = np.stack([run(s)[0] for s in setup["held"]]).reshape(len(setup["held"]), -1)
    size = sum((d / f).stat().st_size for f in art.files if "reference" not in f)
    return {"target": name, **metrics(got, setup["fp32"]), "size_bytes": size,
            "size_x_params": round(size / setup["params"], 3), "export_s": round(seconds, 1)}


def flows(setup: dict, steps: int) -> list[tuple[str, object, QuantRecipe, dict]]:
    """(label, model, recipe, details) of each flow; QAT trains here, once."""
    model = setup["lm"].module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, _ = sensitive_float(model, setup["calib"], QuantRecipe().with_(**BUILTIN["mobilenet_v2"]().quant_defaults["int8"]))
    torch.set_num_threads(2)  # training: both cores; the artifacts are timed and run on 1 thread
    res = train_quantized(model, list(setup["calib"]), base, QATSettings(steps=steps))
    torch.set_num_threads(1)
    out = [("ptq (nearest)", model, base, {}), ("adaround (--rounding adaround)", model, base.with_(rounding="adaround"), {}),
           (f"qat {steps} steps, learned ranges", res.model, res.recipe(base), res.report)]
    if res.ranges:
        out.append((f"qat {steps} steps, recalibrated ranges", res.model, base, {}))
    return out


def write_md(result: dict, out: Path) -> None:
    lines = ["# MobileNetV2 INT8: quantization-aware training vs PTQ and AdaRound (real artifacts)", "",
             f"`python bench/qat_mobilenet_v2.py {result['steps']}`: 256 held-out crops (files 33-48), calibration/training on 64 crops "
             "of files 1-32; every figure is the artifact in its runtime vs the FP32 model.", "",
             f"Base recipe (each flow adds its own lever to it): `{result.get('recipe', '')}`", "", f"QAT: {result['qat']}", "",
             "| flow | target | top-1 agree | SQNR dB | size (x params) |", "|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (FLOW_ORDER.index(r["flow"].split(" ")[0]), r["flow"], TARGETS.index(r["target"]))):
        lines.append(f"| {r['flow']} | {r['target']} | {r['top1_agree']:.3f} | {r['sqnr_db']:.2f} | {r['size_x_params']} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv) -> None:
    steps = int(argv[0]) if argv else 160
    targets = argv[1].split(",") if len(argv) > 1 else TARGETS
    setup = mobilenet_v2_setup()
    out = out_path(steps)
    old = json.loads(out.read_text()) if out.is_file() else {}
    kept = [r for r in old.get("rows", []) if r["target"] not in targets] if old.get("steps") == steps else []
    result = {"steps": steps, "protocol": setup["meta"], "rows": kept}  # a run of some targets replaces only theirs
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, recipe, details in flows(setup, steps):
            result.setdefault("recipe", recipe.describe())
            if details:
                result["qat"] = {k: v for k, v in details.items() if k != "note"}
            for name in targets:
                row = {"flow": label, **artifact_row(setup, name, model, recipe, Path(tmp) / f"{len(result['rows'])}-{name}")}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
                out.write_text(json.dumps(result, indent=1) + "\n")
    write_md(result, out)


if __name__ == "__main__":
    main(sys.argv[1:])
