"""PyTorch Mobile INT8: FX static PTQ (qnnpack) with edgekit's calibrated ranges, judged against a
float simulation that shares the artifact's scales and zero points but none of its kernels.

(a) the torch 2.13 qnnpack bug: quantized hardtanh (ReLU6) on a channels_last quint8 tensor is wrong;
(b) a naive export (PyTorch's default qnnpack FX flow) hits it: the .ptl equals its eager quantized
    module bit for bit, yet edgekit's fidelity check against the independent reference fails it;
(c) edgekit's ptl INT8 of tiny_cnn (ReLU6, depthwise, residual add) is within about one output step.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.converters.ptl import CONVERTER, INT8_TOLERANCE
from edgekit.converters.ptl.quant import qnnpack_engine, simulate
from edgekit.data import load_samples
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN
from edgekit.parity import compare
from edgekit.quant import QuantRecipe, qparams
from edgekit.quant.reference import load_quantized_reference, run_program


def test_qnnpack_hardtanh_on_channels_last_is_scrambled():
    """STACK.md's repro: the same quantized values, two memory formats, two different answers."""
    x = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0)) * 4
    q = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    want = torch.clamp(q.dequantize(), 0.0, 6.0)
    with qnnpack_engine():
        plain = F.hardtanh(q.contiguous(), 0.0, 6.0).dequantize()
        nhwc = F.hardtanh(q.contiguous(memory_format=torch.channels_last), 0.0, 6.0).dequantize()
        relu = F.relu(q.contiguous(memory_format=torch.channels_last)).dequantize()
    assert torch.equal(plain, want)
    assert torch.equal(relu, torch.relu(q.dequantize()))  # ReLU is fine
    assert (nhwc - want).abs().max() >= 3.0  # wrong by whole values, not by rounding
    assert (nhwc != want).float().mean() > 0.5


@pytest.fixture(scope="module")
def data():
    lm = BUILTIN["tiny_cnn"]()
    d = load_samples(lm.default_data, lm.spec)
    return lm, d.head(32), d.samples[32:]


def _save_ptl(module, example, path):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.freeze(torch.jit.trace(module, example).eval())._save_for_lite_interpreter(str(path))


@pytest.mark.slow
def test_naive_export_is_caught_as_a_conversion_fault(data, tmp_path):
    """PyTorch's own qnnpack FX flow (default qconfig, its own observers): ReLU6 runs as a quantized
    hardtanh on the channels_last output of a quantized conv. The .ptl reproduces the eager quantized
    module exactly, so comparing with that module would pass; the float simulation does not share
    the kernel and the fidelity check fails the artifact in output steps."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    from torch.jit.mobile import _load_for_lite_interpreter

    lm, calib, held = data
    example = lm.example_inputs
    with qnnpack_engine():
        prepared = prepare_fx(lm.module, get_default_qconfig_mapping("qnnpack"), example,
                              backend_config=get_qnnpack_backend_config())
        run_program(prepared, calib.samples)
        naive = convert_fx(prepared, backend_config=get_qnnpack_backend_config())
        assert any(type(m).__name__ == "ReLU6" for m in naive.modules())  # ReLU6 left on its own
        _save_ptl(naive, example, tmp_path / "naive.ptl")
        eager = run_program(naive, held)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ptl = _load_for_lite_interpreter(str(tmp_path / "naive.ptl"))
        got = run_program(ptl, held)[0]
    np.testing.assert_array_equal(got, eager)  # bit for bit: the kernels agree with themselves
    sim, out_qp, _ = simulate(naive)
    ref = run_program(sim, held)[0]
    res = compare("ptl", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, [out_qp[0][0]])
    assert res.status == "fail"
    m = res.outputs[0]
    assert m.max_steps > 3 * INT8_TOLERANCE.max_steps, m
    assert any("quantization steps" in f for f in res.failures)
    fp32 = run_program(lm.module, held)[0]
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() < 0.9


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    lm, calib, held = data
    out = tmp_path_factory.mktemp("ptl_int8")
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, lm.example_inputs, calibration=calib)
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    return lm, art, out, held, ref


@pytest.mark.slow
def test_artifact_layout_and_meta(exported):
    lm, art, out, *_ = exported
    assert art.precision == "int8" and art.path == "tiny_cnn-int8.ptl"
    assert art.files == ("tiny_cnn-int8.ptl", "tiny_cnn-int8.ptl.reference.pt2")
    assert sorted(p.name for p in out.iterdir()) == sorted(art.files)  # no partial file left
    assert 0 < art.meta["output_scales"][0] < 1 and art.meta["engine"] == "qnnpack"
    assert art.meta["recipe"]["calibrator"] == "percentile" and art.meta["calibration"]["count"] == 32
    assert any("3 conv+ReLU6 fused" in n for n in art.meta["quant_notes"])  # tiny_cnn has 3 ReLU6
    scale, zp = art.meta["input_qparams"][0]
    assert scale > 0 and 0 <= zp <= 255


@pytest.mark.slow
def test_scales_come_from_edgekits_calibrator(data):
    """Every activation observer holds edgekit's range; its qparams are edgekit's qparams on quint8."""
    from edgekit.converters.ptl.quant import _caps, _observer_groups, calibrate, prepare

    lm, calib, _ = data
    recipe = QuantRecipe(calibrator="minmax")
    with qnnpack_engine():
        prepared, _, _ = prepare(lm.module, lm.example_inputs, recipe)
        caps = _caps(prepared, _observer_groups(prepared))
        assert sorted(caps.values()) == [6.0, 6.0, 6.0]  # tiny_cnn's 3 conv+ReLU6 (fused) outputs
        ranges = calibrate(prepared, calib.samples, recipe)
    assert len(ranges) >= 6
    for name, (lo, hi) in ranges.items():
        obs = prepared.get_submodule(name)
        s, z = obs.calculate_qparams()
        want_s, want_z = qparams(lo, hi)
        assert float(s) == pytest.approx(want_s, rel=1e-6), name
        assert int(z) == want_z + 128, name
    assert sum(lo == 0.0 and hi <= 6.0 for lo, hi in ranges.values()) >= 3


@pytest.mark.slow
def test_fidelity_within_one_step_of_the_independent_reference(exported):
    lm, art, out, held, ref = exported
    run = CONVERTER.runner(art, out)
    got = np.stack([run(s)[0] for s in held])
    res = compare("ptl", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert res.status == "pass", res.failures
    assert res.outputs[0].max_steps <= 1.0 + 1e-3  # float32 rounding of the difference
    assert res.outputs[0].top1_agreement == 1.0
    fp32 = run_program(lm.module, held)[0]
    sqnr = 10 * np.log10((fp32 ** 2).sum() / ((got - fp32) ** 2).sum())
    assert sqnr > 25.0 and (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


@pytest.mark.slow
def test_isolated_runner_sets_the_qnnpack_engine(exported):
    """A fresh runtime process (engine default x86/fbgemm) must still give the qnnpack numbers."""
    lm, art, out, held, ref = exported
    res = run_artifact("ptl", art.to_dict(), out, [np.stack([s[0] for s in held])])
    assert res.error is None, res.error
    assert np.abs(res.outputs[0] - ref).max() / art.meta["output_scales"][0] <= 1.0 + 1e-3


@pytest.mark.slow
def test_relu6_without_fusing_runs_on_a_contiguous_copy(data, tmp_path):
    """fuse_relu6=False keeps ReLU6 as its own op: edgekit runs it on a contiguous tensor, so the
    .ptl still matches the simulation (the naive export above does not)."""
    lm, calib, held = data
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(fuse_relu6=False), tmp_path, lm.example_inputs,
                           calibration=calib.head(16))
    assert any("contiguous copy" in n for n in art.meta["quant_notes"])
    ref = run_program(load_quantized_reference(tmp_path / art.meta["reference"]).module(), held)[0]
    run = CONVERTER.runner(art, tmp_path)
    got = np.stack([run(s)[0] for s in held])
    assert np.abs(got - ref).max() / art.meta["output_scales"][0] <= 1.0 + 1e-3


def test_a_float_layer_keeps_its_relu6_float_and_the_ptl_matches(data, tmp_path):
    """The stem and the first 1x1 conv kept float: their ReLU6s stay float with them (a ReLU6 again,
    since no int8 grid caps a float tensor), no quantize between the two, and the .ptl still matches
    its reference within a step."""
    from edgekit.converters.ptl.quant import quantize

    lm, calib, held = data
    recipe = QuantRecipe(keep_float=("stem.0", "block.0"))
    q = quantize(lm.module, lm.example_inputs, calib.samples[:16], recipe)
    assert type(q.module.stem.get_submodule("2")) is torch.nn.ReLU6
    code = q.module.code
    assert "block_0 = getattr(self.block, \"0\")(float_boundary" in code  # it reads the float ReLU6 output
    art = CONVERTER.export(lm.module, lm.spec, recipe, tmp_path, lm.example_inputs, calibration=calib.head(16))
    ref = run_program(load_quantized_reference(tmp_path / art.meta["reference"]).module(), held)[0]
    run = CONVERTER.runner(art, tmp_path)
    got = np.stack([run(s)[0] for s in held])
    assert np.abs(got - ref).max() / art.meta["output_scales"][0] <= 1.0 + 1e-3
