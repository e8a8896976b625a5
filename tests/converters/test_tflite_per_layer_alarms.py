"""The tflite per-layer view raises no alarm on a correct INT8 file where the converter quantizes a resize's
input onto the resize's output grid before an int8 RESIZE_BILINEAR (the coverage bench's MobileViT-XXS and
SegFormer-B0 rows), or writes a chunked add on one grid and slices its pieces from it (EdgeNeXt-XXS's SDTA
blocks: three slices of one grid and size, and piece 0 rounded twice), and still flags a seeded fault next
to them (converters/tflite/requant.py, per_layer.py). Values a split's grid clips where the reference keeps
them stay flagged (MixNet-S, EdgeNeXt-XXS on the bench): these models keep every piece in range."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from artifact_edit import flip_largest_tflite_weight
from photos import photo_array

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import requant  # noqa: E402
from edgekit.converters.tflite.per_layer import tflite_per_layer  # noqa: E402

SIZE = 64


class ResizeNet(nn.Module):
    """SegFormer's decode head and MobileViT's unfold in small: a float op (SiLU, as MobileViT's LayerNorm)
    resized with no quantize node between, and a conv output on its own grid resized 4x4 -> 11x11 with a
    concat sharing the resizes' output grid (SegFormer's upsampled MLP outputs)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.a = nn.Conv2d(16, 16, 3, 2, 1)
        self.b = nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(32, 10, 1)

    def forward(self, image):
        x = F.relu(self.stem(image))
        y = F.interpolate(F.silu(self.a(x)), size=(11, 11), mode="bilinear", align_corners=False)
        z = self.b(F.adaptive_avg_pool2d(x, 4)) * 4.0
        z = F.interpolate(z, size=(11, 11), mode="bilinear", align_corners=False)
        return self.head(torch.cat([y, z], 1)).mean((2, 3))


class SplitNet(nn.Module):
    """EdgeNeXt's SDTA block in small: an add chunked into 4 pieces of equal size, piece 0 into a depthwise
    conv, pieces 1 and 2 added to the running depthwise output, piece 3 passed to the concat. The file
    writes the add on the concat's grid and slices pieces 1-3 from it: three slices of one grid and size.
    (Piece 3 gets 4x the range of the others: the concat's grid then holds every piece, and no value is
    clipped where the reference keeps it float, a real loss the view must flag: see the module docstring
    of converters/tflite/requant.py.)"""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, 2, 1)  # 24 channels at 32x32 (not 32: NHWC and NCHW alike)
        self.pw = nn.Conv2d(24, 24, 1)
        self.dw = nn.ModuleList(nn.Conv2d(6, 6, 3, 1, 1, groups=6) for _ in range(3))
        self.head = nn.Conv2d(24, 10, 1)
        with torch.no_grad():
            self.stem.weight[18:] *= 4.0
            self.stem.bias[18:] *= 4.0

    def forward(self, image):
        x = F.relu(self.stem(image))
        x = x + self.pw(x) * 0.1
        spx = x.chunk(4, 1)
        sp = self.dw[0](spx[0])
        out = [sp]
        for k in (1, 2):
            sp = self.dw[k](sp + spx[k])
            out.append(sp)
        return self.head(torch.cat([*out, spx[3]], 1)).mean((2, 3))


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 36, margin=8)


def _export(model_class, photos, out):
    torch.manual_seed(0)
    model = model_class().eval()
    bundle = edgekit.export(model, torch.from_numpy(photos[:1]), targets="tflite", data=photos[:, None], quant="int8",
                            samples=8, out=out)
    target = bundle.report["targets"]["tflite:int8"]
    tfl = out / target["file"]
    return target, tfl, tfl.with_name(tfl.name + ".reference.pt2")


def test_resize_fed_on_its_output_grid_raises_no_alarm(photos, tmp_path, monkeypatch):
    target, tfl, ref = _export(ResizeNet, photos, tmp_path / "b")
    rows = target["per_layer"]
    assert [r["op"] for r in rows].count("RESIZE_BILINEAR") == 2
    # both resize inputs are judged on the resize's grid: the SiLU quantized there, the conv requantized
    assert {r["layer"] for r in rows if r["op"] == "QUANTIZE"} >= {"silu", "mul"}, rows
    assert not [r for r in rows if r["flagged"]] and max(r["max_steps"] for r in rows) <= 1.0, rows

    # inputs beyond the calibrated range (2x the photos): the conv's values beyond the concat's grid are
    # clipped before the 4x4 -> 11x11 interpolation in the file, after it in the reference; judged on
    # the resize's input, every layer stays within 1 step; the old view flagged the resize (measured 8 steps)
    samples = [(photos[k:k + 1] * 2.0,) for k in range(28, 36)]
    rows = tflite_per_layer(tfl, ref, samples)
    assert not [r for r in rows if r["flagged"]] and max(r["max_steps"] for r in rows) <= 1.0, rows
    with monkeypatch.context() as m:
        m.setattr(requant._FileGrids, "resize_inputs", lambda self: None)
        old = {r["layer"]: r for r in tflite_per_layer(tfl, ref, samples)}
    assert old["upsample_bilinear2d_1"]["flagged"], old

    # a seeded fault in the conv whose output is requantized and resized: flagged there
    faulty = flip_largest_tflite_weight(tfl, "CONV_2D", 2, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples[:4]) if r["flagged"]]
    assert flagged and flagged[0]["module"] == "b" and flagged[0]["op"] == "CONV_2D", flagged


def test_split_pieces_of_one_grid_each_take_their_own_node(photos, tmp_path, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.converters.tflite import per_layer

    target, tfl, ref = _export(SplitNet, photos, tmp_path / "b")
    ops = Interpreter(model_path=str(tfl))._get_ops_details()
    assert sum(o["op_name"] == "SLICE" for o in ops) == 4  # the case at hand: pieces sliced in the file
    rows = target["per_layer"]
    assert not [r for r in rows if r["flagged"]], [r for r in rows if r["flagged"]]
    assert max(r["max_steps"] for r in rows) <= 1.0, rows
    piece3 = [r for r in rows if r["layer"] == "getitem_3"]
    assert piece3 and piece3[0]["op"] == "SLICE", rows

    # the first slice of the concat's grid (piece 1) taking piece 3's quantize node, as before: flagged
    samples = [(photos[k:k + 1],) for k in range(28, 32)]
    with monkeypatch.context() as m:
        m.setattr(per_layer, "_same_piece", lambda begin, shape, q: True)
        old = {r["layer"]: r for r in tflite_per_layer(tfl, ref, samples)}
    assert old["getitem_3"]["flagged"], old

    # a seeded fault in the depthwise conv of piece 1: flagged there
    faulty = flip_largest_tflite_weight(tfl, "DEPTHWISE_CONV_2D", 1, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["op"] == "DEPTHWISE_CONV_2D" and flagged[0]["module"] == "dw.1", flagged
