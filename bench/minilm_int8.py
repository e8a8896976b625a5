"""MiniLM-L6 sentence embeddings, INT8 TFLite: which layers must stay float for cosine >= 0.99 vs FP32.

    python bench/minilm_int8.py            # writes bench/results/minilm_int8.{json,md}

Runs the real pipeline (``edgekit export minilm --targets tflite --quant int8 ...``) once per recipe on
the shipped sentences (calibration_data/text: the first two thirds calibrate, the held-out third is
measured), and reads the figures from each bundle's report.json: cosine of the .tflite's embeddings
vs FP32 (compression cost), its fidelity vs its quantized reference, size and latency (1 thread).
Recipes: the default (percentile, everything int8) and the measured fix (MSE ranges, the six FFN
down-projections `encoder.encoder.layer.*.output.dense` in float: their input, the GELU output,
is what static per-tensor int8 cannot hold; quantizing only those six layers alone costs 0.04 cosine).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = {
    "default recipe (percentile 99.99, all int8)": [],
    "mse, FFN down-projections float": ["--calibrator", "mse", "--keep-float", "encoder.encoder.layer.*.output.dense"],
}


def run(name: str, args: list[str], out: Path) -> dict:
    words = ["export", "minilm", "--targets", "tflite", "--quant", "int8", *args]
    cmd = [sys.executable, "-m", "edgekit.cli", *words, "--out", str(out)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    t = report.get("targets", {}).get("tflite:int8", {})
    cost = (t.get("compression") or {}).get("embedding", {})
    m = t.get("metrics") or {}
    return {"recipe": name, "command": "edgekit " + " ".join(words), "exit": proc.returncode,
            "seconds": round(time.time() - t0, 1), "status": t.get("status"), "size_mb": round((t.get("size_bytes") or 0) / 1e6, 2),
            "latency_ms": t.get("latency_ms"), "cosine_min_vs_fp32": cost.get("cosine_min"),
            "sqnr_db_vs_fp32": cost.get("sqnr_db"), "fidelity_cosine_min": m.get("cosine_min"),
            "fidelity_sqnr_db": m.get("sqnr_db"), "per_layer_flagged": [r["layer"] for r in t.get("per_layer", []) if r.get("flagged")],
            "kept_float": [n for n in t.get("notes", []) if "kept float" in n]}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, args) in enumerate(RECIPES.items()):
            rows.append(run(name, args, Path(tmp) / f"b{i}"))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "minilm_int8.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["| recipe | status | cosine min vs FP32 | SQNR dB vs FP32 | fidelity SQNR dB | size MB | latency ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['status']} | {r['cosine_min_vs_fp32']:.4f} | {r['sqnr_db_vs_fp32']:.1f} | "
                     f"{r['fidelity_sqnr_db']:.1f} | {r['size_mb']} | {r['latency_ms']:.1f} |")
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in rows)]
    (RESULTS / "minilm_int8.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
