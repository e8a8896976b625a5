"""Budget search on MobileNetV2: `--quant int8 --budget agreement>=0.99` vs plain INT8, tflite and executorch
(or `--quant int16x8 --budget sqnr>=30` vs plain int16x8 on tflite: results file suffix _int16x8).

Data (bench/int8_eval_set.py's photos and crops): 512 calibration crops of files 1-32 (16 crop variants
per file, ordered variant by variant, so the recipe's first 256 cover all 32 files), then the 256
held-out crops of files 33-48. edgekit's split puts the last third (exactly the 256 held-out crops)
aside: the search measures its trials on them and every file is verified on them.
Writes bench/results/budget_mobilenet_v2.{json,md}: the search's trials, and per target and job
the top-1 agreement and SQNR vs FP32, size, latency (1 thread, host runtime) and wall time.

    python bench/budget_mobilenet_v2.py [--budget "agreement>=0.99"] [--targets tflite,executorch] [--quant int8] [--reuse-plain]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import int8_eval_set as E  # noqa: E402


def data(spec) -> list:
    files = sorted(p for p in E.IMAGES.iterdir() if p.suffix.lower() == ".jpg")
    calib = []
    for v in E.HELD_VARIANTS:  # variant by variant: any leading part covers every calibration file
        calib += E._build(files[:E.N_CALIB_FILES], (v,), spec.preprocess)[0]
    held = E._build(files[E.N_CALIB_FILES:], E.HELD_VARIANTS, spec.preprocess)[0]
    return calib + held


def row(bundle, key: str) -> dict:
    t = bundle.report["targets"][key]
    cost = next(iter((t.get("compression") or {}).values()), {})
    return {"status": t["status"], "agreement": cost.get("top1_agreement"), "sqnr_db": cost.get("sqnr_db"),
            "size_bytes": t.get("size_bytes"), "latency_ms": t.get("latency_ms"),
            "fidelity_max_steps": (t.get("metrics") or {}).get("max_steps")}


def main() -> None:
    import edgekit
    from edgekit.errors import UserError
    from edgekit.models import BUILTIN

    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", default="agreement>=0.99")
    ap.add_argument("--targets", default="tflite,executorch")
    ap.add_argument("--work", default="/tmp/edgekit_budget_bench")
    ap.add_argument("--quant", default="int8", choices=("int8", "int16x8"))
    ap.add_argument("--reuse-plain", action="store_true", help="keep the plain job of the last results file (same targets)")
    args = ap.parse_args()
    spec = BUILTIN["mobilenet_v2"]().spec
    samples = data(spec)
    out = {"budget": args.budget, "targets": args.targets, "quant": args.quant, "samples": len(samples),
           "load": os.getloadavg(), "jobs": {}}
    res, suffix = HERE / "results", "" if args.quant == "int8" else f"_{args.quant}"
    old = json.loads((res / f"budget_mobilenet_v2{suffix}.json").read_text()) if args.reuse_plain else {}
    if old.get("targets") == args.targets and args.quant in old.get("jobs", {}):
        load = ", ".join(f"{x:.1f}" for x in old["load"])
        out["jobs"][args.quant] = {**old["jobs"][args.quant], "reused": f"the previous run's, load {load}"}
    for name, budget in ((args.quant, None), (f"{args.quant} + budget", args.budget)):
        if name in out["jobs"]:
            continue
        t0 = time.monotonic()
        try:
            b = edgekit.export("mobilenet_v2", targets=args.targets, data=samples, samples=256, quant=args.quant,
                               budget=budget, out=Path(args.work) / name.replace(" + ", "_"))
        except UserError as exc:  # E-BUDGET-UNMET: what the best trial reached is the result
            out["jobs"][name] = {"seconds": round(time.monotonic() - t0, 1), "error": exc.to_dict(), "targets": {}}
            print(name, exc, flush=True)
            continue
        job = {"seconds": round(time.monotonic() - t0, 1), "passed": b.passed,
               "targets": {k: row(b, k) for k in b.report["targets"]}}
        if b.report.get("budget_search"):
            job["search"] = b.report["budget_search"]
        out["jobs"][name] = job
        print(name, json.dumps(job, default=str)[:2000], flush=True)
    (res / f"budget_mobilenet_v2{suffix}.json").write_text(json.dumps(out, indent=2, default=str))
    (res / f"budget_mobilenet_v2{suffix}.md").write_text(markdown(out))


def markdown(out: dict) -> str:
    from edgekit.quant.search import kept_float_count

    quant = out.get("quant", "int8")
    lines = [f"# MobileNetV2: `--quant {quant} --budget \"{out['budget']}\"` vs plain {quant}", "",
             f"{out['samples']} samples: 512 calibration crops (the recipe uses the first 256) + the 256 held-out crops "
             "of bench/int8_eval_set.py (verification and search). Load average at start: "
             f"{', '.join(f'{x:.1f}' for x in out['load'])} (2 cores).", "",
             "| job | target | status | top-1 agree vs FP32 | SQNR dB vs FP32 | size bytes | latency ms | job wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, job in out["jobs"].items():
        if job.get("error"):
            lines.append(f"| {name} | - | `{job['error']['code']}` | {job['error']['message']} | | | | {job['seconds']} |")
        if job.get("reused"):
            name = f"{name} ({job['reused']})"
        for key, r in job["targets"].items():
            agree = "-" if r["agreement"] is None else f"{r['agreement']:.3f}"
            sqnr = "-" if not isinstance(r["sqnr_db"], (int, float)) else f"{r['sqnr_db']:.2f}"
            lines.append(f"| {name} | {key} | {r['status']} | {agree} | {sqnr} | {r['size_bytes']:,} | {r['latency_ms']} | {job['seconds']} |")
    search = out["jobs"].get(f"{quant} + budget", {}).get("search")
    if search:
        lines += ["", "## Budget search trials (PT2E simulation, nearest rounding, 256 held-out crops)", "",
                  "| trial | kept float | est. parameter bytes | agreement | SQNR dB | met | seconds |", "|---|---|---|---|---|---|---|"]
        for i, t in enumerate(search["trials"], 1):
            m = t["metrics"]
            lines.append(f"| {i} | {kept_float_count(t)} | {t['size_bytes']:,} | {m['agreement']:.3f} | {m['sqnr']:.2f} | "
                         f"{'yes' if t['met'] else 'no'} | {t['seconds']} |")
        lines += ["", f"Chosen: keep float {', '.join(f'`{k}`' for k in search['chosen']) or 'nothing'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
