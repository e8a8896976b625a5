"""ncnn INT8 written by edgekit: tiny_cnn calibrated on real images, run by the ncnn runtime with int8
weights, compared with its quantized reference (float simulation of ncnn's int8 scheme), per blob;
a conv feeding one int8 conv requantizes its output itself (8=101, ncnn2int8's fusion) and changes no
output; a wrong activation scale in the .bin is caught on exactly its layer; keep-float by class name."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from artifact_edit import scale_ncnn_input_scale
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn import CONVERTER  # noqa: E402
from edgekit.converters.ncnn import int8 as ncnn_int8  # noqa: E402
from edgekit.converters.ncnn.int8 import TAG_INT8  # noqa: E402
from edgekit.converters.ncnn.per_layer import compare_blobs  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    return lm, data.head(32), data.samples[32:], example


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    lm, calib, held, example = setup
    out = tmp_path_factory.mktemp("ncnn_int8")
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, example, calibration=calib)
    fp32 = CONVERTER.export(lm.module, lm.spec, None, tmp_path_factory.mktemp("ncnn_fp32"), example)
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    return art, out, fp32, ref, run_program(lm.module, held)[0]


def _records(art, out):
    """(layer type, .param line) of every layer of the int8 .param."""
    return [ln.split() for ln in (out / art.files[0]).read_text().splitlines()[2:]]


def test_layout_meta_and_int8_records(exported, setup):
    art, out, fp32, *_ = exported
    assert (art.target, art.precision, art.path) == ("ncnn", "int8", "tiny_cnn-int8.param")
    assert art.files == ("tiny_cnn-int8.param", "tiny_cnn-int8.bin", "tiny_cnn-int8.ncnn.reference.pt2")
    assert all((out / f).is_file() for f in art.files)
    assert json.loads(json.dumps(art.meta)) == art.meta
    assert art.meta["reference"] == art.files[2]
    # float outputs judged in one int8 step of their calibrated range, the unit of every INT8 target
    ref_out = run_program(load_quantized_reference(out / art.meta["reference"]).module(), list(setup[1].samples))[0]
    assert art.meta["output_scales"] == pytest.approx([float(ref_out.max() - ref_out.min()) / 255], rel=1e-5)
    assert art.meta["recipe"]["calibrator"] == "percentile" and art.meta["kept_float"] == []
    quantized = [r for r in _records(art, out) if r[0] in ("Convolution", "ConvolutionDepthWise", "InnerProduct")]
    assert [q["module"] for q in art.meta["int8_layers"]] == ["stem.0", "block.0", "block.3", "block.6", "head.0", "classifier"]
    # requantize fusion on the conv -> conv chain only: block.0 (1x1) -> block.3 (depthwise) -> block.6 (1x1);
    # the stem feeds a Split (residual), block.6 the add, head.0 the pooling, the classifier the output
    flags = [[t for t in r if t.startswith("8=")] for r in quantized]
    assert flags == [["8=1"], ["8=101"], ["8=101"], ["8=1"], ["8=1"], ["8=1"]]
    q8 = art.meta["int8_layers"]
    assert [q["output_scale"] for q in q8] == [None, q8[2]["input_scale"], q8[3]["input_scale"], None, None, None]
    assert any("2 of them requantize their output" in n for n in art.meta["quant_notes"])
    # int8 weights: 2624 fp32 weights (10.5 kB) become 2624 bytes; the .bin shrinks ~3x
    data = (out / art.files[1]).read_bytes()
    assert data[:4] == struct.pack("<I", TAG_INT8)  # the stem conv's record starts with the int8 tag
    # + 4 bytes per fused layer: its top scale (the consumer's input scale) right after its own input scale
    assert len(data) == 4816 + 2 * 4 and art.meta["file_bytes"][1] == 4824  # FP32 .bin: 14336 bytes
    pair = struct.pack("<ff", q8[1]["input_scale"], q8[2]["input_scale"])
    assert data.count(pair) == 1 and data.index(pair) + 8 == data.index(struct.pack("<I", TAG_INT8), data.index(pair))
    scales = [q["input_scale"] for q in art.meta["int8_layers"]]
    assert all(s > 0 for s in scales) and 127 / scales[2] <= 6.0 + 1e-5  # depthwise input is after ReLU6


def test_fidelity_and_compression(exported, setup):
    art, out, _, ref, fp32 = exported
    held = setup[2]
    run = CONVERTER.runner(art, out)
    got = np.stack([run(s)[0] for s in held])
    assert got.shape == ref.shape == (16, 1, 10)
    # ncnn's int32 sums and the simulation's integer-valued float sums agree exactly on tiny_cnn
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    sqnr = 10 * np.log10((fp32 ** 2).sum() / ((got - fp32) ** 2).sum())
    assert sqnr > 17.0  # measured 20.1 dB
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9  # measured 1.0


def test_requantize_fusion_changes_no_output(exported, setup, tmp_path, monkeypatch):
    """The same export with the fusion off (every int8 layer 8=1): the same reference and, on the
    runtime, bit-identical outputs: the fused layer's rounding is its consumer's input rounding."""
    lm, calib, held, example = setup
    art, out, _, ref, _ = exported

    def off(layers, qlayers, outputs=()):
        for q in qlayers:
            q.out_scale = None
        return 0

    monkeypatch.setattr(ncnn_int8, "plan_requantize", off)
    plain = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path, example, calibration=calib)
    assert all("8=101" not in r for r in _records(plain, tmp_path))
    assert all(q["output_scale"] is None for q in plain.meta["int8_layers"])
    ref_plain = run_program(load_quantized_reference(tmp_path / plain.meta["reference"]).module(), held)[0]
    assert np.array_equal(ref_plain, ref)
    fused_run, plain_run = CONVERTER.runner(art, out), CONVERTER.runner(plain, tmp_path)
    got = np.stack([fused_run(s)[0] for s in held])
    assert np.array_equal(got, np.stack([plain_run(s)[0] for s in held]))  # measured: max diff 0.0
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_requantize_fusion_only_on_a_conv_read_by_one_int8_conv():
    """plan_requantize (ncnn2int8's rule, Splits not fused through): a conv/depthwise whose output
    blob one quantized conv/depthwise alone reads gets the reader's input scale; a blob read twice, by
    a Split, by a float (kept) or non-conv layer, by an InnerProduct, or that is a network output,
    keeps 8=1; an InnerProduct never requantizes."""
    from edgekit.converters.ncnn.param import Layer

    def conv(name, src, dst, kind="Convolution"):
        return Layer(kind, name, [src], [dst])

    layers = [conv("a", "in", "x"), conv("b", "x", "y", "ConvolutionDepthWise"),  # a -> b: fused
              conv("c", "y", "z"), Layer("Split", "s", ["z"], ["z0", "z1"]),  # b -> c fused; c -> Split: no
              conv("d", "z0", "u"), conv("e", "z1", "v"), Layer("BinaryOp", "add", ["u", "v"], ["w"]),
              conv("f", "w", "f0"), conv("g", "f0", "g0"),  # g is kept float: f stays 8=1
              conv("h", "g0", "h0"), Layer("InnerProduct", "fc", ["h0"], ["h1"]),  # h -> InnerProduct: no
              Layer("InnerProduct", "fc2", ["h1"], ["h2"]), conv("k", "h2", "k0"), conv("m", "k0", "out")]
    q = {n: ncnn_int8.QLayer(n, t, n, i, o, np.zeros((1, 1), np.float32), None, in_scale=float(k + 1))
         for k, (n, t, i, o) in enumerate((la.name, la.type, la.inputs[0], la.outputs[0]) for la in layers
                                          if la.type != "Split" and la.type != "BinaryOp" and la.name != "g")}
    assert ncnn_int8.plan_requantize(layers, list(q.values()), outputs=["out"]) == 3
    assert {n for n, x in q.items() if x.out_scale is not None} == {"a", "b", "k"}
    assert (q["a"].out_scale, q["b"].out_scale, q["k"].out_scale) == (q["b"].in_scale, q["c"].in_scale, q["m"].in_scale)
    # the last conv's blob is a network output although another int8 conv reads it: not fused
    layers.append(conv("n", "out", "n0"))
    q["n"] = ncnn_int8.QLayer("n", "Convolution", "n", "out", "n0", np.zeros((1, 1), np.float32), None, in_scale=99.0)
    ncnn_int8.plan_requantize(layers, list(q.values()), outputs=["out"])
    assert q["m"].out_scale is None and q["k"].out_scale == q["m"].in_scale


def test_per_blob_report_is_clean(exported, setup):
    art, out, *_ = exported
    rep = compare_blobs(art, out, setup[2][:4])
    assert json.loads(json.dumps(rep)) == rep
    assert [r["layer"] for r in rep] == [q["layer"] for q in art.meta["int8_layers"]]
    assert not any(r["flagged"] for r in rep)
    # a fused layer's int8 output (divided by its output scale) against the reference rounded the same
    # way: equal except where x86's approximate-reciprocal depthwise dequantize (the _FakeQuant note)
    # moves a value across a rounding boundary, one int8 step (the 8=1 file makes the same flips in
    # block.6's input quantize). Measured: block.0 exact (200 dB), block.3 60.7 dB, max one step.
    fused = {q["layer"]: q["output_scale"] for q in art.meta["int8_layers"] if q["output_scale"] is not None}
    assert len(fused) == 2
    for r in rep:
        if r["layer"] in fused:
            assert r["local_max_abs"] <= 1.0001 / fused[r["layer"]] and r["max_abs"] <= 1.0001 / fused[r["layer"]], r
            assert r["local_sqnr_db"] > 45.0 and r["sqnr_db"] > 45.0, r
        else:
            assert r["local_sqnr_db"] > 60.0 and r["sqnr_db"] > 60.0, r


def _scale_stored(out, dst, art, value: float, occurrence: int, count: int, factor: float = 4.0) -> None:
    """Copy the artifact into ``dst`` with the ``occurrence``-th of the ``count`` stored copies of
    ``value`` (a float32 scale) in the .bin multiplied by ``factor``. (artifact_edit.scale_ncnn_input_scale
    needs the scale stored once; with the requantize fusion a fused consumer's input scale is stored
    twice: as its producer's top scale and as its own input scale.)"""
    import shutil

    for f in art.files:
        shutil.copy(out / f, dst / f)
    path = dst / art.files[1]
    data = bytearray(path.read_bytes())
    packed = struct.pack("<f", value)
    assert data.count(packed) == count
    at = -1
    for _ in range(occurrence + 1):
        at = data.index(packed, at + 1)
    data[at:at + 4] = struct.pack("<f", value * factor)
    path.write_bytes(bytes(data))


def test_wrong_activation_scale_is_localised(exported, setup, tmp_path):
    """x4 on a layer's input scale in the .bin: the file still loads and runs, and the per-blob check
    flags exactly that layer. The first int8 layer (its input scale stored once) through the shared
    helper; the fused depthwise layer (its input scale also stored as block.0's top scale) here."""
    art, out, *_ = exported
    stem = art.meta["int8_layers"][0]
    (tmp_path / "stem").mkdir()
    scale_ncnn_input_scale(out, tmp_path / "stem", art, stem)
    rep = compare_blobs(art, tmp_path / "stem", setup[2][:4])
    assert [r["layer"] for r in rep if r["flagged"]] == [stem["layer"]]
    dw = next(q for q in art.meta["int8_layers"] if q["op"] == "ConvolutionDepthWise")
    assert dw["output_scale"] is not None  # fused, and fed by a fused layer
    (tmp_path / "dw").mkdir()
    _scale_stored(out, tmp_path / "dw", art, dw["input_scale"], occurrence=1, count=2)  # its own record's copy
    rep = compare_blobs(art, tmp_path / "dw", setup[2][:4])
    assert [r["layer"] for r in rep if r["flagged"]] == [dw["layer"]]
    bad = next(r for r in rep if r["layer"] == dw["layer"])
    assert bad["local_sqnr_db"] < 20.0


def test_wrong_requantize_scale_is_localised(exported, setup, tmp_path):
    """x4 on a fused layer's top scale (block.0 requantizes for the depthwise layer): flagged on
    block.0, whose int8 output is read with the scale the meta records, not on its consumer."""
    art, out, *_ = exported
    q8 = art.meta["int8_layers"]
    producer = next(q for q in q8 if q["module"] == "block.0")
    _scale_stored(out, tmp_path, art, producer["output_scale"], occurrence=0, count=2)  # the producer's copy
    rep = compare_blobs(art, tmp_path, setup[2][:4])
    assert [r["layer"] for r in rep if r["flagged"]] == [producer["layer"]]
    assert next(r for r in rep if r["layer"] == producer["layer"])["local_sqnr_db"] < 20.0


def test_keep_float_by_class_name(setup, tmp_path):
    lm, calib, _, example = setup
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(keep_float=("Linear",)), tmp_path, example,
                           calibration=calib.head(8))
    assert art.meta["kept_float"] == ["classifier"]
    ip = next(r for r in _records(art, tmp_path) if r[0] == "InnerProduct")
    assert "8=1" not in ip
    assert [q["module"] for q in art.meta["int8_layers"]][-1] == "head.0"


class _NormAct(torch.nn.BatchNorm2d):
    """A BatchNorm subclass with its own forward (timm's BatchNormAct2d): torch.fx traces through it
    to an ``F.batch_norm`` call, which torch.fx's ``fuse`` does not fold."""

    def forward(self, x):
        torch._assert(x.ndim == 4, "NCHW")  # a shape read of the conv output, as timm's _assert
        x = torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                           False, 0.0, self.eps)
        return torch.nn.functional.relu6(x)


class _NormActNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.n1 = torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False), _NormAct(8)
        self.c2, self.n2 = torch.nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), _NormAct(8)
        self.c3 = torch.nn.Conv2d(8, 16, 3, 1, 1, groups=2)  # grouped, not depthwise: stays float
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.c3(self.n2(self.c2(self.n1(self.c1(x)))))
        return self.fc(x.mean((2, 3)))


def test_batch_norm_subclass_folds_and_grouped_conv_stays_float(setup, tmp_path):
    lm, calib, held, example = setup
    torch.manual_seed(0)
    model = _NormActNet().eval()
    for n in (model.n1, model.n2):
        n.running_mean.uniform_(-0.5, 0.5), n.running_var.uniform_(0.5, 2.0), n.weight.data.uniform_(0.5, 1.5)
    art = CONVERTER.export(model, lm.spec, QuantRecipe(), tmp_path, example, calibration=calib)
    assert [q["module"] for q in art.meta["int8_layers"]] == ["c1", "c2", "fc"]  # the batch-normed convs are int8
    assert any("grouped convolution" in n for n in art.meta["quant_notes"])  # c3 float, and said so
    ref = run_program(load_quantized_reference(tmp_path / art.meta["reference"]).module(), held[:8])[0]
    run = CONVERTER.runner(art, tmp_path)
    got = np.stack([run(s)[0] for s in held[:8]])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()  # and the int8 layers compute their reference


def test_equalize_applies_and_bias_correction_is_refused(setup, tmp_path):
    """Recipe levers are implemented or refused with a coded error, never ignored."""
    lm, calib, held, example = setup
    plain = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path / "plain", example, calibration=calib.head(8))
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(equalize=True), tmp_path / "cle", example,
                           calibration=calib.head(8))
    assert any(n.startswith("cross-layer equalization on") for n in art.meta["quant_notes"])
    assert (tmp_path / "cle" / art.files[1]).read_bytes() != (tmp_path / "plain" / plain.files[1]).read_bytes()
    ref = run_program(load_quantized_reference(tmp_path / "cle" / art.meta["reference"]).module(), held[:8])[0]
    run = CONVERTER.runner(art, tmp_path / "cle")
    got = np.stack([run(s)[0] for s in held[:8]])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()  # the file computes its (equalized) reference
    with pytest.raises(UserError) as err:
        CONVERTER.export(lm.module, lm.spec, QuantRecipe(bias_correction=True), tmp_path / "bc", example,
                         calibration=calib.head(8))
    assert err.value.code == "E-TARGET-PRECISION" and "bias correction" in err.value.what


class _Attention(torch.nn.Module):
    """A ViT attention block whose SDPA pnnx keeps as ncnn's SDPA layer (no weights of its own)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(32, 96), torch.nn.Linear(32, 10)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(1, 16, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 16, 32)
        return self.out(y).mean(1)


def test_an_sdpa_layer_does_not_stop_the_int8_writer(tmp_path):
    """The writer sized every layer's .bin record and refused SDPA as unknown (DeiT, MobileViT:
    E-OP-UNSUPPORTED 'INT8 layer SDPA'); ncnn's SDPA has no record, so the file is written and runs."""
    from edgekit.data import samples_from
    from edgekit.model_source import load_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 16, 32)).astype(np.float32) for _ in range(16)]
    lm = load_model(_Attention().eval(), (torch.from_numpy(data[0]),))
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path, lm.example_inputs, calibration=samples_from(data, lm.spec))
    assert any(r[0] == "SDPA" for r in _records(art, tmp_path))
    samples = [(d,) for d in data[:4]]
    ref = run_program(load_quantized_reference(tmp_path / art.meta["reference"]).module(), samples)[0]
    run = CONVERTER.runner(art, tmp_path)
    got = np.stack([run(list(s))[0] for s in samples])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
