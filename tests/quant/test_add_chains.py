"""XNNPACK's placement (executorch, onnx): an add whose result another add reads leaves it float, as
TFLite's converter does, and the real .pte and .onnx compute what that reference computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.quant import QuantRecipe
from edgekit.quant.pt2e import quantize

from photos import photo_array
from residual_stage import ResidualStage

pytest.importorskip("executorch")


def _adds(gm) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) == "aten.add.Tensor"]


def _run(module, held: np.ndarray) -> np.ndarray:
    with torch.no_grad():  # one photo at a time: the exported program is specialised to batch 1
        return np.concatenate([module(torch.from_numpy(h[None])).numpy() for h in held])


def _sqnr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10((want ** 2).sum() / ((got - want) ** 2).sum()))


@pytest.fixture(scope="module")
def setup(calib_root):
    photos = photo_array(calib_root, 16, 24)
    cal = [(p[None],) for p in photos[:16]]
    held = photos[16:]
    model = ResidualStage().eval()
    with torch.no_grad():
        fp32 = model(torch.from_numpy(held)).numpy()
    return model, cal, held, fp32


def _quantized(setup, quantizer):
    model, cal, _, _ = setup
    return quantize(model, (torch.from_numpy(cal[0][0]),), cal, QuantRecipe(), quantizer)


def _xnnpack(float_chains: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config

    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    q.float_add_chains = float_chains
    return q


def test_an_add_read_by_another_add_hands_it_over_in_float(setup):
    """Blocks 1-5 read the previous sum straight (float); the last sum, the model's output,
    and every layer's input stay quantized; the reference is closer to FP32 than XNNPACK's own placement."""
    from edgekit.converters.executorch import CONVERTER

    q = _quantized(setup, CONVERTER.pt2e_quantizer())
    adds = _adds(q.module)
    assert len(adds) == 6 and all(b.args[0] is a for a, b in zip(adds, adds[1:]))  # no dequantize in between
    assert all("dequantize" in str(a.args[1].target) for a in adds)
    assert [str(u.target) for u in adds[-1].users] == ["quantized_decomposed.quantize_per_tensor.default"]
    for add in adds[:-1]:  # the next block's conv reads it through a quantize of its own
        assert any("quantize_per_tensor" in str(u.target) for u in add.users)
    assert any(n.startswith("5 residual add(s)") for n in q.notes), q.notes

    _, _, held, fp32 = setup
    plain = _quantized(setup, _xnnpack(False))
    assert all("dequantize" in str(a.args[0].target) for a in _adds(plain.module))
    chained, rounded = _sqnr(_run(q.module, held), fp32), _sqnr(_run(plain.module, held), fp32)
    assert chained > rounded + 3.0, (chained, rounded)  # measured 36.1 vs 31.8 dB


@pytest.mark.slow
@pytest.mark.parametrize("target", ["executorch", "onnx"])
def test_the_runtime_computes_the_float_chain_as_its_reference(setup, target, tmp_path, calib_root):
    from edgekit.converters import get as get_converter
    from edgekit.data import CalibrationSet
    from edgekit.quant.reference import load_quantized_reference
    from edgekit.spec import ModelSpec, TensorSpec

    model, cal, held, fp32 = setup
    conv = get_converter(target)
    spec = ModelSpec("stage", (TensorSpec("image", (1, 3, 16, 16), "float32", "NCHW"),), (TensorSpec("out", (1, 8, 16, 16)),))
    art = conv.export(model, spec, QuantRecipe(), tmp_path, (torch.from_numpy(cal[0][0]),),
                      calibration=CalibrationSet(tuple(cal), tuple(f"photo {k}" for k in range(len(cal))),
                                                  "image", str(calib_root)))
    assert any("5 residual add(s)" in n for n in art.meta["quant_notes"])
    if target == "executorch":  # the float adds and their quantizes run inside XNNPACK's one subgraph
        assert art.meta["delegation"]["subgraphs"] == 1 and art.meta["delegation"]["portable_ops"] == {}
    ref = load_quantized_reference(tmp_path / art.meta["reference"]).module()
    run = conv.runner(art, tmp_path)
    got = np.concatenate([run((h[None],))[0] for h in held])
    want = _run(ref, held)
    assert np.abs(got - want).max() / art.meta["output_scales"][0] <= 1.0 + 1e-3
    assert _sqnr(got, fp32) > 30.0
