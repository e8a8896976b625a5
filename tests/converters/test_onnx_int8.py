"""ONNX INT8: a QDQ model with edgekit's calibrated ranges; onnxruntime runs it on its integer
kernels (QLinearConv, QGemm) and stays within about one output step of the quantized reference, while
a wrong weight scale written into the file is caught against that reference."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.parity import compare
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")  # its XNNPACK quantizer places the q/dq pairs

from edgekit.converters.onnx import CONVERTER, INT8_TOLERANCE  # noqa: E402
from edgekit.converters.onnx.per_layer import onnx_per_layer  # noqa: E402

pytestmark = pytest.mark.slow  # one PT2E calibration + dynamo ONNX export (~30 s)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    out = tmp_path_factory.mktemp("onnx_int8")
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, lm.example_inputs, calibration=data.head(32))
    held = data.samples[32:]
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    return lm, art, out, held, ref


def _run(art, root, held):
    run = CONVERTER.runner(art, root)
    return np.stack([run(s)[0] for s in held])


def test_file_is_qdq_with_int8_weights(exported, tmp_path):
    lm, art, out, _, _ = exported
    assert art.precision == "int8" and art.files == ("tiny_cnn-int8.onnx.reference.pt2", "tiny_cnn-int8.onnx")
    model = onnx.load(str(out / art.path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] >= 8 and ops["DequantizeLinear"] >= 8
    weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) >= 2]
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in lm.module.modules())
    # every conv/linear weight is stored in 1 byte, as uint8 with zero point 128 (u8_weights.py)
    assert len(weights) == n_layers and any("uint8 with zero point 128" in n for n in art.meta["quant_notes"])
    assert not [i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2]
    # onnxruntime really fuses the pairs into integer kernels (what an app runs)
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(out / art.path), opts, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert fused["QLinearConv"] >= 3 and fused["QGemm"] == 1


def test_fidelity_within_one_step_of_the_reference(exported):
    lm, art, out, held, ref = exported
    got = _run(art, out, held)
    steps = np.abs(got - ref).max() / art.meta["output_scales"][0]
    assert steps <= 1.0 + 1e-3, steps
    res = compare("onnx", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert res.status == "pass", res.failures
    fp32 = run_program(lm.module, held)[0]
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


def test_a_wrong_weight_scale_in_the_file_is_caught(exported, tmp_path):
    """One output channel of the first conv dequantized with its scale x1.25: the file still loads
    and runs, and only the comparison with the reference catches it."""
    lm, art, out, held, ref = exported
    model = onnx.load(str(out / art.path))
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    dq = producers[conv.input[1]]
    scale = inits[dq.input[1]]
    values = onnx.numpy_helper.to_array(scale).copy()
    values[0] *= 1.25
    scale.CopyFrom(onnx.numpy_helper.from_array(values, scale.name))
    (tmp_path / art.path).write_bytes(model.SerializeToString())
    for f in art.files:
        if f != art.path:
            (tmp_path / f).write_bytes((out / f).read_bytes())
    got = _run(art, tmp_path, held)
    res = compare("onnx", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert np.abs(got - ref).max() / art.meta["output_scales"][0] > 2.0
    assert res.outputs[0].max_steps > 2.0
    # the per-layer view (each layer cut out, fused as in the file, run on the reference's input) names it
    rows = onnx_per_layer(art, tmp_path, held[:2])
    flagged = [r for r in rows if r["flagged"]]
    assert [r["layer"] for r in flagged] == [rows[0]["layer"]] and flagged[0]["worst_channel"] == 0, flagged
    assert flagged[0]["kernel"] == "QLinearConv" and flagged[0]["max_steps"] > 10


def test_per_layer_view_of_a_correct_file_is_clean_on_integer_kernels(exported):
    lm, art, out, held, _ = exported
    rows = onnx_per_layer(art, out, held[:4])
    n_layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in lm.module.modules())
    assert len(rows) >= n_layers and all(r["max_steps"] <= 1.0 for r in rows), rows
    kernels = collections.Counter(r["kernel"] for r in rows)
    assert kernels["QLinearConv"] >= 3 and kernels["QGemm"] == 1, kernels
