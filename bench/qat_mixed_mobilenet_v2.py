"""MobileNetV2 INT8: quantization-aware training (--qat-steps) on top of its mixed-precision default
(--float-share 0.002: stem, first depthwise and first projection float), in the PT2E quantized
reference of each placement (tflite's litert-torch quantizer, XNNPACK's for executorch/onnx).

Protocol: bench/int8_eval_set.py (64 calibration crops of files 1-32, QAT trains on them; 256 held-out
crops of files 33-48), metrics vs the FP32 model on the held-out crops. What `edgekit export
mobilenet_v2 --quant int8 --qat-steps STEPS` does, minus the files (bench/qat_mobilenet_v2.py measures
the real files of QAT without float layers).

Run: nice -n 10 python bench/qat_mixed_mobilenet_v2.py [STEPS [SHARE [TARGETS...]]]
     (defaults 160 0.002 tflite executorch) -> bench/results/qat_mixed_mobilenet_v2.json
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from int8_common import Timer, metrics, run_batched, unguard  # noqa: E402
from int8_eval_set import mobilenet_v2_setup  # noqa: E402

from edgekit.converters import get as get_converter  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.mixed import sensitive_float  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402
from edgekit.quant.qat import QATSettings, train_quantized  # noqa: E402

OUT = Path(__file__).parent / "results" / "qat_mixed_mobilenet_v2.json"


def main(argv: list[str]) -> None:
    steps = int(argv[0]) if argv else 160
    share = float(argv[1]) if len(argv) > 1 else 0.002
    targets = argv[2:] or ["tflite", "executorch"]
    s = mobilenet_v2_setup()
    recipe, _ = sensitive_float(s["lm"].module, s["calib"], QuantRecipe(minmax_output=True, float_share=share))
    with Timer() as t:
        res = train_quantized(s["lm"].module, list(s["calib"]), recipe, QATSettings(steps=steps))
    trained = res.recipe(recipe)
    rows = []
    for target in targets:
        conv = get_converter(target)
        for label, model, r in (("ptq", s["lm"].module, recipe), (f"qat {steps} steps", res.model, trained)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(model, s["example"], s["calib"], r, conv.pt2e_quantizer(), fold_quantize=target == "executorch")
            m = metrics(run_batched(unguard(q.module), s["held"]), s["fp32"])
            rows.append({"target": target, "flow": label, **m})
            print(target, label, m, flush=True)
    result = {"protocol": s["meta"], "float_share": share, "float_layers": list(recipe.keep_float),
              "qat": {**res.report, "wall_seconds": t.s}, "rows": rows}
    OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
