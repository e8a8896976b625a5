"""float_share on coverage models nobody tuned for (random init, BatchNorm re-estimated, as in
bench/model_coverage.py): one target's PT2E quantized reference vs FP32 on the 16 held-out photos
(calibrated on photos 1-32), with float_share 0, 0.002 and 0.01.

Run: nice -n 10 python bench/mixed_untuned.py [TARGET] [model,model,...]  -> bench/results/mixed_untuned.{json,md}
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import model_coverage as MC  # noqa: E402

from edgekit.converters import get  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402

MODELS = "mobilenetv3_small_100,efficientnet_b0,resnet18,ghostnet_100,mnasnet_100,regnetx_002"
SHARES = (0.0, 0.002, 0.01)


def _run(module, samples) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(s[0])).numpy() for s in samples])


def main(target: str, models: list[str]) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    conv, rows = get(target), []
    for name in models:
        model, data, example, _ = MC.build(name)
        cal, held = [(data[i:i + 1],) for i in range(32)], [(data[i:i + 1],) for i in range(32, 48)]
        fp32 = _run(model, held).astype(np.float64)
        for share in SHARES:
            t0 = time.time()
            recipe, chosen = sensitive_float(model, cal, QuantRecipe(float_share=share))
            out = _run(quantize(model, example, cal, recipe, conv.pt2e_quantizer()).module, held)
            rows.append({"model": name, "target": target, "float_share": share, "float_layers": [c.layer for c in chosen],
                         "sqnr_db": round(float(10 * np.log10((fp32 ** 2).sum() / ((out - fp32) ** 2).sum())), 2),
                         "top1_agree": float((out.argmax(-1) == fp32.argmax(-1)).mean()), "seconds": round(time.time() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    res = HERE / "results"
    (res / "mixed_untuned.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# float_share on untuned coverage models", "",
             f"{target}'s PT2E quantized reference vs FP32, 16 held-out photos (calibrated on photos 1-32); random-init "
             "models with BatchNorm re-estimated (bench/model_coverage.py's build), so top-1 agreement on 16 photos is "
             "coarse. Run: `python bench/mixed_untuned.py`.", "",
             "| model | " + " | ".join(f"float_share {s:g}: float layers, SQNR dB, top-1" for s in SHARES) + " |",
             "|---|" + "---|" * len(SHARES)]
    for name in models:
        cells = [f"{len(r['float_layers'])}, {r['sqnr_db']:.2f}, {r['top1_agree']:.2f}" for r in rows if r["model"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    (res / "mixed_untuned.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tflite", (sys.argv[2] if len(sys.argv) > 2 else MODELS).split(","))
