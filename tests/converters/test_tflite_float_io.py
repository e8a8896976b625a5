"""Float model I/O for INT8 .tflite files (converters/tflite/float_io.py), checked in the real
ai-edge-litert interpreter: the rewritten file takes and returns float32, and computes exactly
dequantize(int8 file(quantize(x))) because the int8 graph inside is untouched.

Fast tests use small models written here with the TFLite schema's object API (int8 and int32 I/O,
external buffers, per-channel I/O); the slow ones rewrite a real litert-torch INT8 tiny_cnn and run
it on the shipped photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from ai_edge_litert import schema_py_generated as S  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from edgekit.converters.tflite.float_io import add_float_io  # noqa: E402
from edgekit.errors import UserError  # noqa: E402

X_Q, C_Q, Y_Q = (0.05, -3), (0.02, 5), (0.1, 2)  # (scale, zero point) of x, the constant c, y = x + c
C = np.array([[-100, -7, 0, 90]], np.int8)


def _tensor(name, shape, ttype, buffer, q=None, per_channel=False):
    t = S.TensorT()
    t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), ttype, buffer
    if q is not None:
        t.quantization = S.QuantizationParametersT()
        reps = 2 if per_channel else 1
        t.quantization.scale = np.array([q[0]] * reps, np.float32)
        t.quantization.zeroPoint = np.array([q[1]] * reps, np.int64)
        t.quantization.quantizedDimension = 1 if per_channel else 0
    return t


def _add(a, b, out):
    op = S.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([a, b], np.int32), np.array([out], np.int32)
    op.builtinOptionsType, op.builtinOptions = S.BuiltinOptions.AddOptions, S.AddOptionsT()
    return op


def _tiny_model(with_int8=True, per_channel_input=False) -> bytes:
    """y = x + c (int8, quantized) and v = t + u (int32 token-like I/O), one signature."""
    m = S.ModelT()
    m.version, m.description = 3, "edgekit test"
    code = S.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = S.BuiltinOperator.ADD
    code.version = 2
    m.operatorCodes = [code]
    m.buffers = [S.BufferT() for _ in range(7)]
    m.buffers[2].data = C.view(np.uint8).ravel()
    m.buffers[5].data = np.array([[1000, -2]], np.int32).view(np.uint8).ravel()
    g = S.SubGraphT()
    g.name = "main"
    g.tensors = [_tensor("x", [1, 4], S.TensorType.INT8, 1, X_Q, per_channel_input),
                 _tensor("c", [1, 4], S.TensorType.INT8, 2, C_Q),
                 _tensor("y", [1, 4], S.TensorType.INT8, 3, Y_Q),
                 _tensor("t", [1, 2], S.TensorType.INT32, 4),
                 _tensor("u", [1, 2], S.TensorType.INT32, 5),
                 _tensor("v", [1, 2], S.TensorType.INT32, 6)]
    g.operators = [_add(0, 1, 2), _add(3, 4, 5)] if with_int8 else [_add(3, 4, 5)]
    g.inputs = [0, 3] if with_int8 else [3]
    g.outputs = [2, 5] if with_int8 else [5]
    m.subgraphs = [g]
    sig = S.SignatureDefT()
    sig.signatureKey, sig.subgraphIndex = "serving_default", 0
    sig.inputs = [_map(n, i) for n, i in (("x", 0), ("t", 3)) if with_int8 or n != "x"]
    sig.outputs = [_map(n, i) for n, i in (("y", 2), ("v", 5)) if with_int8 or n != "y"]
    m.signatureDefs = [sig]
    return _finish(m)


def _map(name, index):
    t = S.TensorMapT()
    t.name, t.tensorIndex = name, index
    return t


def _finish(m) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _externalize(raw: bytes) -> bytes:
    """The same model with its constant buffers stored after the flatbuffer (offset/size), the
    layout TFLite uses for models over 2 GB."""
    m = S.ModelT.InitFromObj(S.Model.GetRootAs(raw, 0))
    blobs = {k: bytes(b.data) for k, b in enumerate(m.buffers) if b.data is not None and len(b.data)}
    for k, data in blobs.items():
        m.buffers[k].data, m.buffers[k].offset, m.buffers[k].size = None, 1 << 40, len(data)
    head = _finish(m)
    at = (len(head) + 63) // 64 * 64
    for k, data in blobs.items():
        m.buffers[k].offset, at = at, (at + len(data) + 63) // 64 * 64
    head2 = _finish(m)
    assert len(head2) == len(head)
    out = bytearray(head2)
    for k, data in blobs.items():
        out.extend(b"\0" * (m.buffers[k].offset - len(out)) + data)
    return bytes(out)


def _signature(path: Path):
    interp = Interpreter(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    return interp.get_signature_runner("serving_default")


def _quantize(x, q):
    return np.clip(np.round(x / np.float32(q[0])) + q[1], -128, 127).astype(np.int8)


def _dequantize(a, q):
    return (a.astype(np.float32) - np.float32(q[1])) * np.float32(q[0])


X = np.array([[-3.3, 0.04, 1.26, 6.7]], np.float32)  # 6.7 saturates: int8 x tops out at (127 + 3) * 0.05 = 6.5
T = np.array([[7, -9]], np.int32)


def test_int8_io_becomes_float_and_int32_io_is_left_alone(tmp_path):
    src, dst = tmp_path / "m.tflite", tmp_path / "f.tflite"
    src.write_bytes(_tiny_model())
    result = add_float_io(src, dst)
    assert result["changed"] is True
    (i,), (o,) = result["inputs"], result["outputs"]
    assert (i["signature_name"], i["tensor"], i["old_dtype"], i["int8_tensor"]) == ("x", "x", "int8", "x_int8")
    assert (i["zero_point"], o["zero_point"]) == (X_Q[1], Y_Q[1]) and i["scale"] == pytest.approx(X_Q[0])
    assert {(u["kind"], u["signature_name"], u["old_dtype"]) for u in result["unchanged"]} == {
        ("input", "t", "int32"), ("output", "v", "int32")}
    int8, flt = _signature(src), _signature(dst)
    assert flt.get_input_details()["x"]["dtype"] == np.float32 and flt.get_output_details()["y"]["dtype"] == np.float32
    assert flt.get_input_details()["t"]["dtype"] == np.int32 and flt.get_output_details()["v"]["dtype"] == np.int32
    want = int8(x=_quantize(X, X_Q), t=T)
    got = flt(x=X, t=T)
    np.testing.assert_array_equal(got["y"], _dequantize(want["y"], Y_Q))
    np.testing.assert_array_equal(got["v"], want["v"])
    np.testing.assert_array_equal(got["v"], T + np.array([[1000, -2]]))
    # the float result is the int8 sum, not a float sum: saturated input, requantized output
    assert got["y"][0, 3] == pytest.approx(6.5 + 1.7)


def test_tensor_names_move_to_the_float_tensors(tmp_path):
    src, dst = tmp_path / "m.tflite", tmp_path / "f.tflite"
    src.write_bytes(_tiny_model())
    add_float_io(src, dst)
    interp = Interpreter(model_path=str(dst), num_threads=1)
    ins = {d["name"]: np.dtype(d["dtype"]).name for d in interp.get_input_details()}
    outs = {d["name"]: np.dtype(d["dtype"]).name for d in interp.get_output_details()}
    assert ins == {"x": "float32", "t": "int32"} and outs == {"y": "float32", "v": "int32"}
    m = S.ModelT.InitFromObj(S.Model.GetRootAs(dst.read_bytes(), 0))
    ops = [m.operatorCodes[op.opcodeIndex].builtinCode for op in m.subgraphs[0].operators]
    assert ops == [S.BuiltinOperator.QUANTIZE, S.BuiltinOperator.ADD, S.BuiltinOperator.ADD, S.BuiltinOperator.DEQUANTIZE]
    versions = {c.builtinCode: c.version for c in m.operatorCodes}
    assert versions[S.BuiltinOperator.QUANTIZE] == 2 and versions[S.BuiltinOperator.DEQUANTIZE] == 2
    x_int8 = next(t for t in m.subgraphs[0].tensors if t.name == b"x_int8")
    assert x_int8.type == S.TensorType.INT8 and x_int8.quantization.zeroPoint[0] == X_Q[1]


def test_file_without_8bit_io_is_copied_unchanged(tmp_path):
    src, dst = tmp_path / "m.tflite", tmp_path / "f.tflite"
    src.write_bytes(_tiny_model(with_int8=False))
    result = add_float_io(src, dst)
    assert result["changed"] is False and result["inputs"] == result["outputs"] == []
    assert [u["old_dtype"] for u in result["unchanged"]] == ["int32", "int32"]
    assert dst.read_bytes() == src.read_bytes()


def test_rewrite_in_place_and_twice(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(_tiny_model())
    assert add_float_io(path, path)["changed"] is True
    once = path.read_bytes()
    again = add_float_io(path, path)
    assert again["changed"] is False and path.read_bytes() == once
    assert [f.name for f in tmp_path.iterdir()] == ["m.tflite"]  # no temp file left behind


def test_external_buffers_are_laid_out_again(tmp_path):
    inline, ext, dst = tmp_path / "in.tflite", tmp_path / "ext.tflite", tmp_path / "f.tflite"
    inline.write_bytes(_tiny_model())
    ext.write_bytes(_externalize(inline.read_bytes()))
    np.testing.assert_array_equal(_signature(ext)(x=_quantize(X, X_Q), t=T)["y"],
                                  _signature(inline)(x=_quantize(X, X_Q), t=T)["y"])  # the runtime reads them
    add_float_io(ext, dst)
    m = S.ModelT.InitFromObj(S.Model.GetRootAs(dst.read_bytes(), 0))
    assert sum(b.offset > 1 for b in m.buffers) == 2  # still outside the flatbuffer
    want = _signature(inline)(x=_quantize(X, X_Q), t=T)
    got = _signature(dst)(x=X, t=T)
    np.testing.assert_array_equal(got["y"], _dequantize(want["y"], Y_Q))
    np.testing.assert_array_equal(got["v"], want["v"])


def test_bad_files_give_coded_errors(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(UserError) as err:
        add_float_io(bad, tmp_path / "out.tflite")
    assert err.value.code == "E-ARTIFACT-CORRUPT" and "TFL3" in str(err.value)
    with pytest.raises(UserError) as err:
        add_float_io(tmp_path / "missing.tflite", tmp_path / "out.tflite")
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    per_channel = tmp_path / "pc.tflite"
    per_channel.write_bytes(_tiny_model(per_channel_input=True))
    with pytest.raises(UserError) as err:
        add_float_io(per_channel, tmp_path / "out.tflite")
    assert err.value.code == "E-ARTIFACT-CORRUPT" and "2 scales" in str(err.value)
    assert not (tmp_path / "out.tflite").exists()


# --- a real litert-torch INT8 file ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    pytest.importorskip("litert_torch")
    import torch

    from edgekit.converters.tflite import CONVERTER
    from edgekit.data import load_samples
    from edgekit.models import BUILTIN
    from edgekit.quant import QuantRecipe

    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    out = tmp_path_factory.mktemp("float_io")
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, example, calibration=data.head(16))
    src = out / art.path
    dst = out / "tiny_cnn-int8-float-io.tflite"
    return lm, data, src, dst, add_float_io(src, dst)


@pytest.mark.slow  # one litert-torch INT8 export (~20 s)
def test_real_int8_file_gets_float_io_and_is_bit_exact_on_photos(tiny_int8):
    lm, data, src, dst, result = tiny_int8
    assert result["changed"] and [e["old_dtype"] for e in result["inputs"] + result["outputs"]] == ["int8", "int8"]
    assert 0 < result["bytes_after"] - result["bytes_before"] < 2048  # two tensors, two ops, alignment
    int8, flt = _signature(src), _signature(dst)
    assert flt.get_input_details()["args_0"]["dtype"] == np.float32
    assert flt.get_output_details()["output_0"]["dtype"] == np.float32
    qi = int8.get_input_details()["args_0"]["quantization"]
    qo = int8.get_output_details()["output_0"]["quantization"]
    assert len(data.samples) >= 32
    for (x,) in data.samples:
        want = _dequantize(int8(args_0=_quantize(x, qi))["output_0"], qo)
        np.testing.assert_array_equal(flt(args_0=x)["output_0"], want)


@pytest.mark.slow
def test_edgekit_runner_takes_the_float_file_as_it_is(tiny_int8):
    from edgekit.converters.tflite import CONVERTER, _io_meta
    from edgekit.converters.base import Artifact

    lm, data, src, dst, _ = tiny_int8
    meta_int8, meta_float = _io_meta(src, lm.spec), _io_meta(dst, lm.spec)
    assert meta_float["inputs"][0]["dtype"] == "float32" and meta_float["outputs"][0]["dtype"] == "float32"
    assert meta_float["inputs"][0]["tensor"] == meta_int8["inputs"][0]["tensor"]  # same names for apps
    run_int8 = CONVERTER.runner(Artifact("tflite", "int8", src.name, (src.name,), meta_int8), src.parent)
    run_float = CONVERTER.runner(Artifact("tflite", "int8", dst.name, (dst.name,), meta_float), dst.parent)
    for s in data.samples[:16]:
        np.testing.assert_array_equal(run_float(s)[0], run_int8(s)[0])


@pytest.mark.slow
def test_per_layer_fidelity_check_reads_the_float_file_alike(tiny_int8):
    from edgekit.converters.tflite.per_layer import tflite_per_layer

    lm, data, src, dst, _ = tiny_int8
    ref = next(src.parent.glob("*.reference.pt2"))
    rows_int8 = tflite_per_layer(src, ref, data.samples[:4])
    rows_float = tflite_per_layer(dst, ref, data.samples[:4])
    assert len(rows_float) >= 6 and rows_float == rows_int8
