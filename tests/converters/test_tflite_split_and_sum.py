"""tflite INT8: the pieces of a split / chunk share one grid, the whole tensor's (converters/tflite/quantizer.py
``annotate_splits``), so the converter's single grid before its SLICEs is the reference's and no piece is
clipped where the reference keeps it (MixNet-S, EdgeNeXt-XXS on the coverage bench); and a correct int8 SUM
raises no per-layer alarm (TFLite's reference kernel computes a wrong int8 SUM, the optimized builtin kernel
and XNNPACK the right one: the view runs the builtin kernels, converters/tflite/per_layer.py); and a conv the
file writes straight onto a resize's output grid is judged there (MobileViTv2's last fold,
converters/tflite/requant.py item 4). Seeded faults next to each are still flagged."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from artifact_edit import flip_largest_tflite_weight
from photos import photo_array

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import per_layer, quantizer  # noqa: E402
from edgekit.converters.tflite.per_layer import tflite_per_layer  # noqa: E402

SIZE = 64


class SplitRanges(nn.Module):
    """MixNet's mixed conv and EdgeNeXt's chunk in small: a float SiLU split into a wide piece (12 channels, 8x
    the range) and a narrow one, each into its own depthwise conv; then a SiLU chunked in two, one half
    convolved, the other passed to the concat. Without the shared grid the converter quantized the SiLU onto
    the narrow (last) piece's grid and clipped the wide one (measured: 921 steps at the SiLU, 44 output steps
    end to end, cosine 0.963 vs the reference); with it, 0 output steps."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.mix = nn.ModuleList([nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.Conv2d(4, 4, 5, 1, 2, groups=4)])
        self.pw = nn.Conv2d(16, 16, 1)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.head = nn.Conv2d(16, 10, 1)
        with torch.no_grad():
            self.stem.weight[:12] *= 8.0
            self.stem.bias[:12] *= 8.0
            self.pw.weight[:8] *= 0.1
            self.pw.bias[:8] *= 0.1

    def forward(self, image):
        x = F.silu(self.stem(image))
        a, b = torch.split(x, [12, 4], 1)
        x = torch.cat([self.mix[0](a), self.mix[1](b)], 1)
        y = F.silu(self.pw(x))
        c, d = y.chunk(2, 1)
        return self.head(torch.cat([self.dw(c), d], 1)).mean((2, 3))


class ChunkResidual(nn.Module):
    """EdgeNeXt's SDTA block with its residual: an add chunked in 4, piece 3 passed straight to the concat,
    the add also read in float by the residual. With the pieces on the add's grid and piece 3 alone on the
    concat's, the converter refused the model (a SLICE from one grid onto another: "same scale
    constraint", E-OP-UNSUPPORTED, as on EdgeNeXt-XXS); the concat's group joins the split's grid."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, 2, 1)
        self.pw = nn.Conv2d(24, 24, 1)
        self.dw = nn.ModuleList(nn.Conv2d(6, 6, 3, 1, 1, groups=6) for _ in range(3))
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, image):
        x = F.relu(self.stem(image))
        x = x + self.pw(x) * 0.1
        spx = x.chunk(4, 1)
        sp = self.dw[0](spx[0])
        out = [sp]
        for k in (1, 2):
            sp = self.dw[k](sp + spx[k])
            out.append(sp)
        return self.head(x + torch.cat([*out, spx[3]], 1) * 0.5).mean((2, 3))


class FoldResize(nn.Module):
    """MobileViTv2's last fold in small: a 1x1 conv on a 7x7 map resized to 8x8 (bilinear, align_corners) and
    read by a depthwise conv. The file writes the conv straight onto the resize's (narrower) output grid."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.proj = nn.Conv2d(16, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, image):
        x = F.adaptive_avg_pool2d(F.relu(self.stem(image)), 7)
        x = F.interpolate(self.proj(x), size=(8, 8), mode="bilinear", align_corners=True)
        return self.head(F.relu(self.dw(x))).mean((2, 3))


class SumNet(nn.Module):
    """MobileViTv2's linear attention in small: ``(softmax(v) * v).sum(-1, keepdim=True)`` as an int8 SUM."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.out = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        v = self.conv(x)
        c = (v.softmax(-1) * v).sum(-1, keepdim=True)
        return self.out(F.relu(v) * c)


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 24, margin=8)


def _photo_export(model_class, photos, out):
    """INT8 tflite export of ``model_class`` (seeded) calibrated on the photos -> ``_target``'s triple."""
    torch.manual_seed(0)
    bundle = edgekit.export(model_class().eval(), torch.from_numpy(photos[:1]), targets="tflite",
                            data=photos[:, None], quant="int8", samples=8, out=out)
    return _target(bundle, out)


def _target(bundle, out):
    target = bundle.report["targets"]["tflite:int8"]
    tfl = out / target["file"]
    return target, tfl, tfl.with_name(tfl.name + ".reference.pt2")


def test_split_pieces_share_the_whole_tensors_grid(photos, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.quant.reference import load_quantized_reference

    target, tfl, ref = _photo_export(SplitRanges, photos, tmp_path / "b")
    rows = target["per_layer"]
    assert not [r for r in rows if r["flagged"]] and max(r["max_steps"] for r in rows) <= 1.0, rows
    assert target["metrics"]["max_steps"] <= 1.0, target["metrics"]  # end to end (was 44 steps)

    # the reference: the SiLU quantized once, its pieces on that very grid (the split)
    gm = load_quantized_reference(ref).module()
    qs = {n.args[0].name: (float(n.args[1]), int(n.args[2])) for n in gm.graph.nodes
          if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.quantize_per_tensor")}
    assert qs["getitem"] == qs["getitem_1"] == qs["silu"], qs
    assert qs["getitem_2"] == qs["silu_1"], qs  # (the chunk's other half shares the concat's grid)

    # the file: the tensor both SLICEs of the split read is the SiLU's, on the reference's grid, no requantize
    interp = Interpreter(model_path=str(tfl))
    details = {d["index"]: d for d in interp.get_tensor_details()}
    slices = [o for o in interp._get_ops_details() if o["op_name"] == "SLICE"]
    src = {int(o["inputs"][0]) for o in slices[:2]}
    assert len(src) == 1, slices
    scale, zp = details[src.pop()]["quantization"]
    assert abs(scale - qs["silu"][0]) <= 1e-6 * scale and zp == qs["silu"][1], (scale, zp, qs["silu"])

    # a seeded fault in the depthwise conv of the wide piece: flagged there
    samples = [(photos[k:k + 1],) for k in range(16, 20)]
    faulty = flip_largest_tflite_weight(tfl, "DEPTHWISE_CONV_2D", 0, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["op"] == "DEPTHWISE_CONV_2D" and flagged[0]["module"] == "mix.0", flagged


def test_chunk_piece_into_a_concat_converts_on_one_grid(photos, tmp_path):
    target, tfl, ref = _photo_export(ChunkResidual, photos, tmp_path / "b")
    assert target["status"] == "pass", target.get("error") or target.get("failures")
    rows = target["per_layer"]
    assert not [r for r in rows if r["flagged"]] and max(r["max_steps"] for r in rows) <= 1.0, rows


def test_resize_input_written_by_a_conv_on_the_resize_grid(photos, tmp_path):
    target, tfl, ref = _photo_export(FoldResize, photos, tmp_path / "b")
    rows = target["per_layer"]
    assert not [r for r in rows if r["flagged"]] and max(r["max_steps"] for r in rows) <= 1.0, rows
    assert [r["op"] for r in rows if r["layer"] == "conv2d_1"] == ["CONV_2D"], rows

    samples = [(photos[k:k + 1],) for k in range(16, 20)]
    faulty = flip_largest_tflite_weight(tfl, "CONV_2D", 1, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["op"] == "CONV_2D" and flagged[0]["module"] == "proj", flagged


def test_int8_sum_raises_no_alarm_and_a_wrong_one_does(tmp_path, monkeypatch):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 8, 4, 16)).astype(np.float32) for _ in range(8)]
    out = tmp_path / "b"
    bundle = edgekit.export(SumNet().eval(), (torch.randn(1, 8, 4, 16),), targets=["tflite"], data=data, quant="int8",
                            task="regression", out=out)
    target, tfl, ref = _target(bundle, out)
    rows = target["per_layer"]
    sums = [r for r in rows if r["op"] == "SUM"]
    assert sums and sums[0]["max_steps"] <= 1.0, rows  # was 104 steps (mean 44) under the reference kernels
    assert not [r for r in rows if r["flagged"]], rows

    samples = [(a,) for a in data[:4]]
    # a wrong SUM: TFLite's reference kernel writes a constant here (-1 on every value): flagged at the SUM
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def reference_kernels(path):
        interp = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        interp.allocate_tensors()
        return interp

    with monkeypatch.context() as m:
        m.setattr(per_layer, "_interpreter", reference_kernels)
        flagged = [r for r in tflite_per_layer(tfl, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["op"] == "SUM", flagged

    # a seeded fault in the conv after it: flagged there
    faulty = flip_largest_tflite_weight(tfl, "CONV_2D", 1, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["op"] == "CONV_2D" and flagged[0]["module"] == "out", flagged


def test_annotate_splits_leaves_non_float_and_unquantized_splits():
    """No plain-spec'd quantized use of two pieces (or one piece of several): the split is left alone."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    class M(nn.Module):
        def forward(self, x):
            a, b = x.split(2, 1)
            return a.sum() + b.sum()

    gm = torch.export.export(M(), (torch.randn(1, 4, 3),)).module()
    spec = get_symmetric_quantization_config().input_activation
    assert quantizer.annotate_splits(gm, spec) == 0
