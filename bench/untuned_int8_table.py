"""INT8 cost vs FP32 of the default recipe on architectures nobody tuned for, per target: read from the
coverage bench's INT8 runs (bench/results/model_coverage.json, written by bench/model_coverage.py with
`--precision int8`), no per-model settings. Writes bench/results/untuned_int8.{json,md}.

    python bench/untuned_int8_table.py [--models a,b,...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("tflite", "executorch", "onnx", "ptl", "ncnn")


def cell(t: dict | None) -> tuple[str, dict]:
    if not t:
        return "-", {}
    cost = t.get("vs_fp32") or {}
    agree, sqnr = cost.get("top1_agreement"), cost.get("sqnr_db")
    if t["status"] in ("error", "unsupported") or sqnr is None:
        return t["status"], {"status": t["status"]}
    text = (f"{agree:.0%} / " if agree is not None else "") + f"{sqnr:.1f} dB" + ("" if t["status"] == "pass" else f" ({t['status']})")
    return text, {"status": t["status"], "agreement": agree, "sqnr_db": sqnr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", help="comma-separated coverage-bench model names (default: every model with an INT8 run)")
    args = ap.parse_args()
    cov = json.loads((RESULTS / "model_coverage.json").read_text())
    names = args.models.split(",") if args.models else [n for n, m in cov["models"].items() if m.get("int8")]
    rows, table = {}, ["| model | weights | " + " | ".join(TARGETS) + " |", "|---|---|" + "---|" * len(TARGETS)]
    for name in names:
        m = cov["models"][name]
        info = m["info"]
        weights = "real" if "pretrained=True" in info.get("source", "") else (
            "random, BN re-estimated" if info.get("bn_reestimated") else "random")
        cells = {t: cell(m["int8"]["targets"].get(t)) for t in TARGETS}
        rows[name] = {"weights": weights, "date": m["int8"].get("date"), **{t: c[1] for t, c in cells.items()}}
        table.append(f"| {name} | {weights} | " + " | ".join(cells[t][0] for t in TARGETS) + " |")
    md = ["# INT8, default recipe, on architectures nobody tuned for: top-1 agreement / SQNR vs FP32", "",
          "From the coverage bench's INT8 runs (`python bench/model_coverage.py --precision int8`; real photos, "
          "calibrated on files 1-32, judged on the held-out ones); no per-model settings. A status in brackets: "
          "the file's conversion fidelity (vs its own quantized reference) failed, the cost is still shown.", ""] + table
    (RESULTS / "untuned_int8.json").write_text(json.dumps(rows, indent=2))
    (RESULTS / "untuned_int8.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
