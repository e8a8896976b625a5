"""The tflite per-layer view pairs each tensor of the file with its own reference tensor, even where
the converter adds layout ops: an explicitly padded conv (TF-style "same" padding, as EfficientNet-Lite
does) becomes TRANSPOSE, PAD, TRANSPOSE in the INT8 file, and after ReLU6 many activations share one
scale and zero point. A TRANSPOSE output carries its input's quantization and has no reference tensor
of its own; taken as a candidate it stole another layer's (EfficientNet-Lite0 real weights: 42 of 77
layers flagged on a correct file, every one within 1 step once layout ops are left out)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from photos import photo_array

pytest.importorskip("ai_edge_litert")

SIZE = 64
BENCH = Path(__file__).resolve().parents[2] / "bench"


def _mini_efficientnet_lite():
    """The stem and first three blocks of EfficientNet-Lite0 (the class in bench/int8_efficientnet_lite0.py,
    TF "SAME" padding) at 64x64, random weights at seed 0, and a small head."""
    sys.path.insert(0, str(BENCH))
    try:
        import int8_efficientnet_lite0 as lite
    finally:
        sys.path.remove(str(BENCH))

    class Mini(nn.Module):
        def __init__(self):
            super().__init__()
            full = lite.EfficientNetLite0(num_classes=10, size=SIZE)
            self.stem, self.bn0, self.blocks = full._conv_stem, full._bn0, nn.Sequential(*list(full._blocks)[:3])
            self.fc = nn.Linear(self.blocks[-1]._project_conv.out_channels, 10)

        def forward(self, image):
            return self.fc(self.blocks(F.relu6(self.bn0(self.stem(image)))).mean((2, 3)))

    torch.manual_seed(0)
    return Mini().eval()


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 36, margin=8)


def test_layout_ops_do_not_steal_reference_tensors(photos, tmp_path):
    model = _mini_efficientnet_lite()
    bundle = edgekit.export(model, torch.from_numpy(photos[:1]), targets="tflite", data=photos[:, None], quant="int8",
                            samples=8, out=tmp_path / "b")
    target = bundle.report["targets"]["tflite:int8"]
    from ai_edge_litert.interpreter import Interpreter

    ops = [op["op_name"] for op in Interpreter(model_path=str(tmp_path / "b" / target["file"]))._get_ops_details()]
    assert ops.count("TRANSPOSE") >= 4 and ops.count("PAD") >= 2  # pads kept between TRANSPOSEs: the case at hand
    rows = target["per_layer"]
    assert len(rows) >= 10 and not [r for r in rows if r["op"] == "TRANSPOSE"]
    # measured: every layer within 1 step on photos (4 on a depthwise conv fed random tensors); with the
    # TRANSPOSE outputs as candidates the layers after a kept PAD read 34 and 80 steps
    assert max(r["max_steps"] for r in rows) <= 4.0, rows
