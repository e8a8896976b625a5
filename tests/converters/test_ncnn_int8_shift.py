"""ncnn INT8 reflected input shift (converters/ncnn/shift.py): a conv reading a ReLU6 output reads
c - x on the full symmetric int8 grid; the rewrite is exact, the artifact computes its reference,
the error vs FP32 drops; ncnn's int8 padding takes param 18 as an int8 level (what the shift relies
on); the .param float text is read back as ncnn reads it; the weight-rounding bias correction is
(W_q - W) times the input means, as a conv computes it; the mixed-precision rule keeps float only
layers with disproportionate noise per byte, within its budget."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

ncnn = pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn import CONVERTER  # noqa: E402
from edgekit.converters.ncnn import shift as ncnn_shift  # noqa: E402
from edgekit.converters.ncnn.int8 import TAG_INT8, quantize_weights  # noqa: E402
from edgekit.converters.ncnn.per_layer import compare_blobs  # noqa: E402
from edgekit.converters.ncnn.rounding_bias import rounding_bias  # noqa: E402


def _cbr(cin: int, cout: int, k: int = 1, groups: int = 1) -> list:
    return [nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]


class _ReLU6Chain(nn.Module):
    """conv-bn-relu6 blocks, 1x1 and 3x3 depthwise (32 channels: ncnn's packed int8 layout on x86),
    then a 1x1 projection and a spatial mean: every int8 conv but the first reads a ReLU6 output."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*_cbr(3, 16, 3), *_cbr(16, 32), *_cbr(32, 32, 3, 32), *_cbr(32, 32),
                                      *_cbr(32, 32, 3, 32))
        self.proj = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return self.proj(self.features(x)).mean((2, 3))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = _ReLU6Chain()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.8)
            mod.running_var.data.uniform_(0.5, 1.5)
    return m.eval()


def _sqnr(ref, got) -> float:
    return float(10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((got - ref).astype(np.float64) ** 2).sum()))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(model, held-out samples, {"on"/"off": (artifact, dir)}): the same export with and without the shift."""
    lm = BUILTIN["tiny_cnn"]()  # its 3x32x32 images and spec (10 outputs)
    data = load_samples(lm.default_data, lm.spec)
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    model, out = _model(), {}
    for mode in ("off", "on"):
        d = tmp_path_factory.mktemp(f"shift_{mode}")
        with pytest.MonkeyPatch.context() as mp:
            if mode == "off":
                mp.setattr(ncnn_shift, "plan_shifts", lambda *a, **k: [])
            out[mode] = (CONVERTER.export(model, lm.spec, QuantRecipe(), d, example, calibration=data.head(32)), d)
    return model, data.samples[32:], out


def test_shift_lowers_the_error_and_the_artifact_computes_its_reference(exports):
    model, held, out = exports
    fp32 = run_program(model, held)[0]
    sqnr = {}
    for mode, (art, d) in out.items():
        run = CONVERTER.runner(art, d)
        got = np.stack([run(s)[0] for s in held])
        ref = run_program(load_quantized_reference(d / art.meta["reference"]).module(), held)[0]
        # x86's approximate-reciprocal depthwise dequantize (int8._FakeQuant): measured 6.5e-5 (on), 8.3e-5 (off)
        assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max(), mode
        sqnr[mode] = _sqnr(fp32, got)
    assert sqnr["on"] >= sqnr["off"] + 6.0, sqnr  # measured 61.2 vs 49.1 dB


def test_shifted_layers_params_and_records(exports):
    _, _, out = exports
    art, d = out["on"]
    q8 = art.meta["int8_layers"]
    # the first conv reads the image; every other one reads a ReLU6 output: c - x, scale x2 of the unshifted one
    assert [q["input_shift"] is not None for q in q8] == [False, True, True, True, True, True]
    off = {q["layer"]: q for q in out["off"][0].meta["int8_layers"]}
    for q in q8[1:]:
        assert q["input_scale"] == pytest.approx(2 * off[q["layer"]]["input_scale"], rel=1e-6)
        assert q["input_shift"] * q["input_scale"] == pytest.approx(127.0, rel=1e-6)
    lines = {ln.split()[1]: ln.split() for ln in (d / art.files[0]).read_text().splitlines()[2:]}
    for q in q8[:-1]:  # every producer: a clip [c - 6, c] of its reader's c
        nxt = q8[q8.index(q) + 1]
        lo, hi = (float(v) for v in next(t for t in lines[q["layer"]] if t.startswith("-23310=")).split(",")[1:])
        assert (lo, hi) == pytest.approx((nxt["input_shift"] - 6.0, nxt["input_shift"]), rel=1e-6)
    pads = [q["layer"] for q in q8 if "18=1.27000000e+02" in lines[q["layer"]]]
    assert pads == [q["layer"] for q in q8 if q["op"] == "ConvolutionDepthWise"]  # only the padded readers
    assert (d / art.files[1]).read_bytes()[:4] == struct.pack("<I", TAG_INT8)
    assert any("reflected shift" in n for n in art.meta["quant_notes"])


def test_per_blob_report_reads_the_shifted_blobs(exports):
    _, held, out = exports
    art, d = out["on"]
    rep = compare_blobs(art, d, held[:2])
    assert not any(r["flagged"] for r in rep), [(r["layer"], r["local_sqnr_db"]) for r in rep]


def _pad_probe(tmp_path, kind: str, channels: int, pad_value: str) -> float:
    """Corner output of a 3x3 int8 conv (all weights 1, scales 1) on an all-ones input with pad 1."""
    nw = 9 * channels if kind == "ConvolutionDepthWise" else 9 * channels * channels
    if kind == "ConvolutionDepthWise":
        w, extra = np.ones(nw, np.int8), f" 7={channels}"
    else:
        w, extra = np.zeros((channels, channels, 9), np.int8), ""
        w[np.arange(channels), np.arange(channels)] = 1
    param = (f"7767517\n2 2\nInput in 0 1 in\n{kind} c 1 1 in out 0={channels} 1=3 4=1 5=1 6={nw}{extra} "
             f"8=1 18={pad_value}\n")
    raw = w.tobytes() + b"\0" * (-nw % 4)
    record = (struct.pack("<I", TAG_INT8) + raw + np.zeros(channels, "<f4").tobytes()
              + np.ones(channels, "<f4").tobytes() + struct.pack("<f", 1.0))
    (tmp_path / "p.param").write_text(param)
    (tmp_path / "p.bin").write_bytes(record)
    net = ncnn.Net()
    net.opt.num_threads = 1
    assert net.load_param(str(tmp_path / "p.param")) == 0 and net.load_model(str(tmp_path / "p.bin")) == 0
    ex = net.create_extractor()
    ex.input("in", ncnn.Mat(np.ones((channels, 4, 4), np.float32)).clone())
    _, mat = ex.extract("out")
    return float(np.array(mat)[-1, 0, 0])  # last channel: 8 of 8 lanes of a packed int8 pixel read


@pytest.mark.parametrize("kind", ["ConvolutionDepthWise", "Convolution"])
@pytest.mark.parametrize("channels", [3, 16])
def test_int8_padding_takes_pad_value_as_an_int8_level(tmp_path, kind, channels):
    """ncnn quantizes first and pads the int8 blob with (signed char) pad_value: 4 ones + 5 pads in a
    corner. (A negative level breaks on x86's packed layout: its 8-byte fill is built from a
    sign-extended int64, measured -1 instead of -5 on 7 of 8 channels; the shift pads with +127.)"""
    assert _pad_probe(tmp_path, kind, channels, "1.27000000e+02") == pytest.approx(4 + 5 * 127, rel=1e-3)
    assert _pad_probe(tmp_path, kind, channels, "0.0") == pytest.approx(4, rel=1e-3)


def test_param_float_text_reads_back_as_written():
    for v in (0.0, 2.5301458835601807, -3.4698541164398193, 127.0, 1e-7, -1e30, 6.0):
        text = ncnn_shift.ncnn_float_text(np.float32(v))
        assert len(text) <= 15 and ("." in text or "e" in text)  # ncnn scans 15 characters; "." or "e": a float
        assert ncnn_shift.ncnn_parsed(text) == pytest.approx(float(np.float32(v)), rel=1e-7, abs=1e-37)


def test_rounding_bias_is_the_conv_of_the_weight_error_on_the_input_means():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 12, 3, padding=0, groups=4, bias=False)
    w = conv.weight.detach().numpy().reshape(12, -1)
    mean = np.random.default_rng(0).normal(size=8)
    q, s = quantize_weights(w)
    err = torch.from_numpy((q / s.astype(np.float64)[:, None] - w.astype(np.float64)).reshape(conv.weight.shape))
    x = torch.from_numpy(np.broadcast_to(mean[None, :, None, None], (1, 8, 3, 3)).copy())
    expected = torch.nn.functional.conv2d(x, err, groups=4).reshape(-1).numpy()
    assert np.allclose(rounding_bias(w, tuple(conv.weight.shape), 4, mean), expected, rtol=1e-9, atol=1e-12)


def test_mixed_precision_keeps_only_disproportionate_layers_within_the_budget(monkeypatch):
    """converters/ncnn/mixed.py's rule on given sensitivities: layers by noise per extra byte, kept
    float while >= 10x the model's average and within 2% of the int8 weight bytes."""
    from edgekit.converters.ncnn import mixed
    from edgekit.converters.ncnn.int8 import QLayer

    sizes = {"big": 30000, "a": 100, "b": 50, "c": 80, "d": 60}  # 30,290 int8 weight bytes: budget 605.8 bytes
    noise = {"big": 0.02, "a": 0.05, "b": 0.001, "c": 0.03, "d": 0.0001}
    qs = [QLayer(n, "Convolution", n, "x", "y", np.ones((1, k), np.float32), None) for n, k in sizes.items()]
    total = sum(noise.values())

    def fake(folded, qlayers, samples, float_out):
        return total if len(qlayers) > 1 else noise[qlayers[0].name]

    monkeypatch.setattr(mixed, "relative_noise", fake)
    monkeypatch.setattr("edgekit.reference.run_reference", lambda m, s: [np.ones((1, 1))])
    chosen = [q.name for q, _ in mixed.sensitive_layers(None, qs, [()])]
    # noise per extra byte: a 1.67e-4, c 1.25e-4, b 6.7e-6, d 5.6e-7; average 0.1011 / 90,870 = 1.1e-6:
    # a (300 bytes) and c (240: 540 <= 605.8) are kept; b is 6x the average only; big (90,000) is over the budget
    assert chosen == ["a", "c"]
