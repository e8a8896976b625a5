"""INT8 .tflite of models that concatenate (issue 13: GhostNet, MixNet, ReXNet, EdgeNeXt): litert-torch's
quantizer leaves torch.cat unannotated under torch 2.13's export, the file then puts every concat input on
one grid the reference does not have (converters/tflite/quantizer.py). With the cat annotated (the tflite
quantizer of quantizer.py) the file passes and the per-layer view shows every layer within its bound; a
changed weight of the depthwise conv feeding the concat is still flagged on that conv. Float outputs the
converter emits as int8 (BERT's last_hidden_state) are pointed back at the file's float tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from artifact_edit import flip_largest_tflite_weight

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import CONVERTER  # noqa: E402
from edgekit.converters.tflite.per_layer import tflite_per_layer  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec  # noqa: E402


class GhostChunk(nn.Module):
    """A ghost module (1x1 conv, depthwise conv on its output, cat, residual add) and an EdgeNeXt-style
    split (the untouched half of a torch.chunk concatenated with a depthwise conv of the other half)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.primary = nn.Conv2d(16, 8, 1)
        self.cheap = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, image):
        x = torch.relu(self.stem(image))
        y = self.primary(x)
        x = torch.cat([y, self.cheap(y) * 5.0], dim=1) + x  # the second input's range 5x the first's
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.dw(a) * 0.1, b], dim=1)  # the pass-through half: 10x the conv half's range
        return self.head(x).mean((2, 3))


def _data(n: int):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((1, 3, 32, 32)).astype(np.float32),) for _ in range(n)]


def _calibration(samples):
    from edgekit.data import CalibrationSet

    return CalibrationSet(tuple(samples), tuple(f"sample {k}" for k in range(len(samples))), "tensor", "(memory)")


def _export(tmp_path, monkeypatch, fixed: bool):
    import litert_torch.quantize.pt2e_quantizer as litert_quantizer

    from edgekit.converters.tflite.quantizer import _quantizer_class

    if fixed:  # what converters/tflite/__init__.py's export_int8 gets from quantizer.tflite_quantizer()
        monkeypatch.setattr(litert_quantizer, "PT2EQuantizer", _quantizer_class())
    torch.manual_seed(0)
    model = GhostChunk().eval()
    spec = ModelSpec("ghost_chunk", inputs=(TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),),
                     outputs=(TensorSpec("logits", (1, 10)),))
    calibration = _calibration(_data(24))
    art = CONVERTER.export(model, spec, QuantRecipe(), tmp_path, (torch.from_numpy(_data(1)[0][0]),),
                           calibration=calibration)
    return tmp_path / art.path, tmp_path / art.meta["reference"], art


def _steps(tfl, ref, art, samples) -> float:
    """End to end: the file (XNNPACK) vs its reference, in output steps."""
    from edgekit.quant.reference import load_quantized_reference

    run = CONVERTER.runner(art, tfl.parent)
    gm = load_quantized_reference(ref).module()
    scale = art.meta["output_scales"][0] or 1.0
    worst = 0.0
    for (x,) in samples:
        with torch.no_grad():
            want = gm(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(run([x])[0].reshape(want.shape) - want).max()) / scale)
    return worst


def test_concat_on_one_grid_passes_and_no_layer_is_flagged(tmp_path, monkeypatch):
    tfl, ref, art = _export(tmp_path, monkeypatch, fixed=True)
    samples = _data(28)[24:]
    rows = tflite_per_layer(tfl, ref, samples)
    assert {"CONCATENATION", "DEPTHWISE_CONV_2D"} <= {r["op"] for r in rows}, rows
    assert rows and not [r for r in rows if r["flagged"]], [r for r in rows if r["flagged"]]
    assert _steps(tfl, ref, art, samples) <= 2.0

    # a seeded fault where the concat's grid is now shared: the cheap conv's largest weight, sign flipped
    faulty = flip_largest_tflite_weight(tfl, "DEPTHWISE_CONV_2D", 0, tmp_path / "faulty.tflite")
    flagged = [r for r in tflite_per_layer(faulty, ref, samples) if r["flagged"]]
    assert flagged and flagged[0]["module"] == "cheap" and flagged[0]["op"] == "DEPTHWISE_CONV_2D", flagged


def test_float_output_kept_float(tmp_path):
    """BERT-like: the whole sequence is an output, a slice of it feeds a quantized linear."""
    from edgekit.converters.tflite.float_outputs import keep_float_outputs

    class Pool(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.norm, self.pool = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 16)

        def forward(self, x):
            h = self.norm(self.proj(x))
            return h, torch.tanh(self.pool(h[:, 0]))

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    data = [(rng.standard_normal((1, 8, 16)).astype(np.float32) * (1 + 3 * (k % 2)),) for k in range(20)]
    data = [(np.concatenate([d[0][:, :1] * 0.2, d[0][:, 1:]], axis=1),) for d in data]  # token 0: narrow range
    spec = ModelSpec("pool", inputs=(TensorSpec("x", (1, 8, 16), "float32"),),
                     outputs=(TensorSpec("seq", (1, 8, 16)), TensorSpec("pooled", (1, 16))))
    art = CONVERTER.export(Pool().eval(), spec, QuantRecipe(), tmp_path, (torch.from_numpy(data[0][0]),),
                           calibration=_calibration(data[:16]))
    tfl = tmp_path / art.path
    assert art.meta["output_scales"][0] == 0.0  # the reference's sequence output is float
    # litert-torch emits the float sequence as int8, clipped at token 0's range (measured: 0.336 max abs
    # error); the export points the output at the float tensor the reference returns, and says so
    assert "outputs kept float (as in the reference): output_0" in art.meta["quant_notes"], art.meta["quant_notes"]
    after = _seq_error(tfl, tmp_path / art.meta["reference"], art, data[16:])
    assert keep_float_outputs(tfl, tfl, art.meta["output_scales"])["outputs"] == []  # nothing left to change
    assert after <= 0.05, after


def _seq_error(tfl, ref, art, samples) -> float:
    from edgekit.quant.reference import load_quantized_reference

    run = CONVERTER.runner(art, tfl.parent)
    gm = load_quantized_reference(ref).module()
    worst = 0.0
    for (x,) in samples:
        with torch.no_grad():
            want = gm(torch.from_numpy(x))[0].numpy()
        worst = max(worst, float(np.abs(run([x])[0].reshape(want.shape) - want).max()))
    return worst
