"""TFLite INT8: edgekit's recipe through PT2E + litert-torch, run in ai-edge-litert, compared with
the quantized reference (convert_pt2e program) in output steps; a wrong scale in the file is caught;
the FULLY_CONNECTED bias after a dropout is stored with the right scale (litert-torch bug pinned)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import CONVERTER  # noqa: E402

pytestmark = pytest.mark.slow  # one litert-torch INT8 conversion (~15 s) per module


class WithDropout(nn.Module):
    """tiny_cnn with MobileNetV2's classifier shape: Dropout then Linear (what triggers the bug)."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        b = self.base
        x = b.stem(x)
        x = x + b.block(x)
        x = b.head(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return b.classifier(self.drop(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lm = BUILTIN["tiny_cnn"]()
    model = WithDropout(copy.deepcopy(lm.module)).eval()
    data = load_samples(lm.default_data, lm.spec)
    calib, held = data.head(32), data.samples[32:]
    out = tmp_path_factory.mktemp("tflite_int8")
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    recipe = QuantRecipe(calibrator="mse", equalize=False, bias_correction=False)
    art = CONVERTER.export(model, lm.spec, recipe, out, example, calibration=calib)
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    fp32 = run_program(model, held)[0]
    return art, out, held, ref, fp32


def steps(got, ref, scale):
    return np.abs(got - ref) / scale


def test_artifact_layout_and_meta(exported):
    art, out, *_ = exported
    assert art.precision == "int8"
    assert art.path == "tiny_cnn-int8.tflite"
    assert art.files == ("tiny_cnn-int8.tflite", "tiny_cnn-int8.tflite.reference.pt2")
    assert all((out / f).is_file() for f in art.files)
    assert art.meta["reference"] == "tiny_cnn-int8.tflite.reference.pt2"
    assert len(art.meta["output_scales"]) == 1 and 0 < art.meta["output_scales"][0] < 1
    assert art.meta["inputs"][0]["dtype"] == "int8" and art.meta["outputs"][0]["dtype"] == "int8"
    assert art.meta["recipe"]["calibrator"] == "mse"
    assert any("identity" in n for n in art.meta["quant_notes"])  # the dropout was removed


def test_fidelity_within_one_step_of_the_reference(exported):
    art, out, held, ref, fp32 = exported
    run = CONVERTER.runner(art, out)
    got = np.stack([run(s)[0] for s in held])
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert steps(got, ref, art.meta["output_scales"][0]).max() <= 1.0 + 1e-3  # float32 rounding of the difference
    # compression cost (not a converter property, but the recipe must be usable): vs FP32
    sqnr = 10 * np.log10((fp32 ** 2).sum() / ((got - fp32) ** 2).sum())
    assert sqnr > 15.0
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.8


def _fc_bias_scales(path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    tensors = {d["index"]: d for d in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        if op["op_name"] == "FULLY_CONNECTED":
            x, w, b = (tensors[i]["quantization_parameters"] for i in op["inputs"][:3])
            out.append((x["scales"], w["scales"], b["scales"]))
    return out


def test_fully_connected_bias_has_input_times_weight_scale(exported):
    """litert-torch stores the bias of a FULLY_CONNECTED that follows a dropped requantize (dropout)
    with the wrong input scale (~3.9x too large bias on MobileNetV2); edgekit's export must not."""
    art, out, *_ = exported
    fcs = _fc_bias_scales(out / art.path)
    assert len(fcs) == 1
    x, w, b = fcs[0]
    np.testing.assert_allclose(b, x[0] * w, rtol=1e-5)


def test_a_wrong_weight_scale_in_the_file_is_caught(exported, tmp_path):
    """x1.25 on one output channel's weight scale of the stem conv: the file still loads, and the
    outputs leave the one-step band around the quantized reference."""
    import shutil

    from ai_edge_litert.interpreter import Interpreter

    from tests.artifact_edit import perturb_tensor

    art, out, held, ref, _ = exported
    bad = tmp_path / art.path
    shutil.copy(out / art.path, bad)
    it = Interpreter(model_path=str(bad))
    conv_w = [d for d in it.get_tensor_details()
              if d["dtype"] == np.int8 and len(d["shape"]) == 4 and d["shape"][0] == 16 and d["shape"][-1] == 3]
    assert len(conv_w) == 1, [d["name"] for d in conv_w]
    scales = conv_w[0]["quantization_parameters"]["scales"].astype(np.float32)
    perturb_tensor([bad], scales, index=int(np.argmax(scales)), delta=0.25 * float(scales.max()))
    run = CONVERTER.runner(art, tmp_path)
    got = np.stack([run(s)[0] for s in held])
    assert steps(got, ref, art.meta["output_scales"][0]).max() >= 3.0
