"""ExecuTorch INT8: XNNPACK's PT2E quantizer places the q/dq pairs, edgekit's calibrator sets the
ranges (the same ranges the tflite target gets); the .pte runs in ExecuTorch and stays within one
output step of the quantized reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

pytest.importorskip("executorch")

from edgekit.converters.executorch import CONVERTER  # noqa: E402

pytestmark = pytest.mark.slow  # one PT2E + XNNPACK lowering (~20-60 s)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    out = tmp_path_factory.mktemp("et_int8")
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    recipe = QuantRecipe(calibrator="mse", equalize=False, bias_correction=False)
    art = CONVERTER.export(lm.module, lm.spec, recipe, out, example, calibration=data.head(32))
    return lm, art, out, data.samples[32:]


def test_int8_pte_matches_reference_within_one_step(exported):
    lm, art, out, held = exported
    assert art.files == ("tiny_cnn-int8.pte", "tiny_cnn-int8.executorch.reference.pt2")
    assert art.meta["delegation"]["subgraphs"] >= 1
    assert "quantized_decomposed" not in " ".join(art.meta["delegation"]["portable_ops"])  # q/dq run in XNNPACK
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    run = CONVERTER.runner(art, out)
    got = np.stack([run(s)[0] for s in held])
    scale = art.meta["output_scales"][0]
    assert np.abs(got - ref).max() / scale <= 1.0 + 1e-3
    fp32 = run_program(lm.module, held)[0]
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.8


def test_same_ranges_as_tflite(exported):
    """One recipe for every target: the output scale equals what the tflite path computes (same
    calibrator on the same data), measured 0.008092734 for tiny_cnn with mse on 32 photos."""
    _, art, _, _ = exported
    assert art.meta["output_scales"][0] == pytest.approx(0.008092734031379223, rel=1e-6)
