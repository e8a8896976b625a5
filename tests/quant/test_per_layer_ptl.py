"""Per-layer fidelity of an INT8 .ptl (edgekit.converters.ptl.per_layer): the artifact's own graph, tapped
at every quantized tensor, against the independent float simulation fed the runtime's own inputs.

(a) the tapped graph computes what the lite interpreter computes, bit for bit;
(b) edgekit's ptl INT8 of tiny_cnn is within 1 step on every layer, nothing flagged;
(c) the naive export (PyTorch's default qnnpack FX flow) is attributed to the ReLU6 after the first
    conv (the torch 2.13 qnnpack channels_last hardtanh bug), the conv before it within 1 step;
(d) a x1.25 weight scale on one output channel of one conv, stored in the artifact, is flagged on
    exactly that conv and channel; a x1.25 output (activation) scale stored for one conv is flagged
    on that conv (and on the pooling/flatten that keep its qparams), nothing before it;
(e) the view runs qnnpack kernels whatever engine the calling process had set.
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from edgekit.converters.ptl import quant as ptl_quant
from edgekit.converters.ptl import CONVERTER
from edgekit.converters.ptl.quant import qnnpack_engine, simulate
from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.converters.ptl.per_layer import PtlTaps, ptl_per_layer
from edgekit.quant.reference import run_program, save_quantized_reference


@pytest.fixture(scope="module")
def data():
    lm = BUILTIN["tiny_cnn"]()
    d = load_samples(lm.default_data, lm.spec)
    return lm, d.head(16), d.samples[40:44]


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    lm, calib, held = data
    out = tmp_path_factory.mktemp("ptl_per_layer")
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, lm.example_inputs, calibration=calib)
    return art, out


def _lite(path):
    from torch.jit.mobile import _load_for_lite_interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _load_for_lite_interpreter(str(path))


def test_tapped_graph_is_the_lite_interpreters_computation(data, exported):
    lm, _, held = data
    art, out = exported
    with qnnpack_engine():  # weights are packed for the engine active at load
        taps = PtlTaps(out / art.path)
    ops = [t.op for t in taps.taps]
    assert ops.count("quantized::conv2d_relu") == 4 and "quantized::add" in ops and "quantized::linear" in ops
    with qnnpack_engine(), torch.no_grad():
        taps = PtlTaps(out / art.path)
        lite = _lite(out / art.path)
        for s in held:
            x = torch.from_numpy(s[0])
            result, tensors = taps(x)
            assert torch.equal(result, lite(x))  # bit for bit
            assert sum(isinstance(t, torch.Tensor) and t.is_quantized for t in tensors) == 10


def test_edgekits_artifact_is_within_one_step_on_every_layer(data, exported):
    lm, _, held = data
    art, out = exported
    rows = CONVERTER.per_layer(art, out, held)
    json.dumps(rows)  # JSON-safe
    by_module = {r["module"]: r for r in rows}
    assert {"stem.0", "block.0", "block.3", "block.6", "head.0", "classifier"} <= set(by_module)
    assert by_module["block.3"]["op"] == "quantized::conv2d_relu"  # depthwise, ReLU6 fused
    for name in filter(None, by_module):  # the model's own module paths (what --keep-float takes)
        lm.module.get_submodule(name)
    assert {r["op"] for r in rows} >= {"quantized::add", "aten::adaptive_avg_pool2d", "quantized::linear"}
    assert len(rows) == 10 and all(r["max_steps"] <= 1.0 and not r["flagged"] for r in rows), rows
    assert CONVERTER.per_layer(dataclasses.replace(art, precision="dynamic"), out, held) is None


def test_view_runs_qnnpack_whatever_the_callers_engine(data, exported):
    """Loading packs the weights for the engine active at load: a view loaded under x86/fbgemm would
    be another computation (on MobileNetV2 its depthwise layers were 20-93 steps off)."""
    _, _, held = data
    art, out = exported
    old = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "x86"
        under_x86 = CONVERTER.per_layer(art, out, held)
        torch.backends.quantized.engine = "qnnpack"
        under_qnnpack = CONVERTER.per_layer(art, out, held)
    finally:
        torch.backends.quantized.engine = old
    assert under_x86 == under_qnnpack


def _naive(lm, calib, out):
    """PyTorch's own qnnpack FX flow: ReLU6 stays a quantized hardtanh on a channels_last tensor."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.backend_config import get_qnnpack_backend_config
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with qnnpack_engine(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(lm.module, get_default_qconfig_mapping("qnnpack"), lm.example_inputs,
                              backend_config=get_qnnpack_backend_config())
        run_program(prepared, calib.samples)
        naive = convert_fx(prepared, backend_config=get_qnnpack_backend_config())
        with torch.no_grad():
            frozen = torch.jit.freeze(torch.jit.trace(naive, lm.example_inputs).eval())
        frozen._save_for_lite_interpreter(str(out / "naive.ptl"))
    save_quantized_reference(simulate(naive)[0], lm.example_inputs, out / "naive.reference.pt2")
    return out / "naive.ptl", out / "naive.reference.pt2"


def test_naive_export_fault_is_attributed_to_the_relu6_after_the_first_conv(data, tmp_path):
    lm, calib, held = data
    rows = ptl_per_layer(*_naive(lm, calib, tmp_path), held)
    first = next(k for k, r in enumerate(rows) if r["flagged"])
    bad = rows[first]
    assert bad["module"] == "stem.2" and bad["op"] == "aten::hardtanh", rows  # tiny_cnn's stem.2: the ReLU6
    assert bad["max_steps"] >= 100, bad  # scrambled whole values, not rounding
    conv = rows[first - 1]
    assert conv["module"] == "stem.0" and conv["op"] == "quantized::conv2d" and conv["max_steps"] <= 1.0
    # every other flagged layer is a ReLU6 too (block.2, block.5): each fault on its own op, the
    # layers after a fault computed from the runtime's own (scrambled) input stay within 1 step
    assert {r["module"] for r in rows if r["flagged"]} == {"stem.2", "block.2", "block.5"}
    assert all(r["max_steps"] <= 1.0 for r in rows if not r["flagged"])


def test_wrong_weight_scale_on_one_channel_is_flagged_on_its_conv(data, tmp_path, monkeypatch):
    """The int8 weights of block.0 (1x1 expand conv) stay, the stored scale of output channel 3 is
    x1.25; the reference keeps the scale the quantization chose (it is built before the edit)."""
    lm, calib, held = data

    def edit(module):
        conv = module.get_submodule("block.0")
        w = conv.weight()
        scales = w.q_per_channel_scales().clone()
        scales[3] *= 1.25
        bad = torch._make_per_channel_quantized_tensor(w.int_repr(), scales, w.q_per_channel_zero_points(),
                                                       w.q_per_channel_axis())
        conv.set_weight_bias(bad, conv.bias())

    _break_after_quantize(monkeypatch, edit)
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path, lm.example_inputs, calibration=calib)
    rows = CONVERTER.per_layer(art, tmp_path, held)
    flagged = [r for r in rows if r["flagged"]]
    assert len(flagged) == 1, rows
    assert flagged[0]["module"] == "block.0" and flagged[0]["op"] == "quantized::conv2d_relu"
    assert flagged[0]["worst_channel"] == 3 and flagged[0]["max_steps"] >= 4


def _break_after_quantize(monkeypatch, edit):
    """CONVERTER.export for real, with ``edit(quantized module)`` applied after the reference is built."""
    real = ptl_quant.quantize

    def quantize_then_break(*args, **kwargs):
        q = real(*args, **kwargs)
        with qnnpack_engine():
            edit(q.module)
        return q

    monkeypatch.setattr(ptl_quant, "quantize", quantize_then_break)


def test_wrong_output_scale_of_one_conv_is_flagged_on_that_conv(data, tmp_path, monkeypatch):
    """head.0 writes its output with a x1.25 scale: no reference activation has that grid; the tensor
    is paired with head.0's activation and flagged there (and on the pooling / flatten that keep its
    qparams); the classifier, fed the runtime's own input, is within 1 step again."""
    lm, calib, held = data

    def edit(module):
        module.get_submodule("head.0").scale *= 1.25

    _break_after_quantize(monkeypatch, edit)
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path, lm.example_inputs, calibration=calib)
    rows = CONVERTER.per_layer(art, tmp_path, held)
    json.dumps(rows)
    flagged = [r for r in rows if r["flagged"]]
    assert [r["op"] for r in flagged] == ["quantized::conv2d_relu", "aten::adaptive_avg_pool2d", "aten::flatten"], rows
    assert flagged[0]["module"] == "head.0" and "scale" in flagged[0]["note"] and flagged[0]["max_steps"] >= 4
    assert rows.index(flagged[0]) == len(rows) - 4 and rows[-1]["module"] == "classifier" and rows[-1]["max_steps"] <= 1


class _Block(torch.nn.Module):
    """timm's ResNet BasicBlock: conv -> BatchNorm -> Identity (drop_block) -> ReLU(inplace=True).
    Traced, the ReLU is ``aten::relu_`` writing into the conv's own output tensor."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.conv1, self.bn1, self.drop, self.act1 = nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.Identity(), nn.ReLU(inplace=True)
        self.conv2, self.bn2, self.act2 = nn.Conv2d(8, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.fc = nn.Linear(8, 10)
        torch.manual_seed(0)
        for bn in (self.bn1, self.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.stem(x)
        y = self.act1(self.drop(self.bn1(self.conv1(x))))
        x = self.act2(self.bn2(self.conv2(y)) + x)
        return self.fc(x.mean((2, 3)))


def test_conv_before_an_inplace_relu_is_not_a_false_alarm(data, tmp_path):
    """The view exposes a copy of each tensor taken when its op wrote it: read at the end, the conv's
    output had been overwritten by the in-place ReLU (ResNet conv1 layers were flagged 97-137 steps
    off on a correct file), and the Identity, which the frozen file does not have, is no activation."""
    lm, calib, held = data
    art = CONVERTER.export(_Block().eval(), lm.spec, QuantRecipe(), tmp_path, lm.example_inputs, calibration=calib)
    rows = CONVERTER.per_layer(art, tmp_path, held)
    by_module = {r["module"]: r for r in rows}
    assert by_module["conv1"]["op"] == "quantized::conv2d" and by_module["act1"]["op"] == "aten::relu_", rows
    assert all(r["max_steps"] <= 1.0 and not r["flagged"] for r in rows), rows


def test_wrong_weight_scale_before_an_inplace_relu_is_flagged_on_its_conv(data, tmp_path, monkeypatch):
    lm, calib, held = data

    def edit(module):
        conv = module.get_submodule("conv1")
        w = conv.weight()
        scales = w.q_per_channel_scales().clone()
        scales[3] *= 1.25
        conv.set_weight_bias(torch._make_per_channel_quantized_tensor(
            w.int_repr(), scales, w.q_per_channel_zero_points(), w.q_per_channel_axis()), conv.bias())

    _break_after_quantize(monkeypatch, edit)
    art = CONVERTER.export(_Block().eval(), lm.spec, QuantRecipe(), tmp_path, lm.example_inputs, calibration=calib)
    rows = CONVERTER.per_layer(art, tmp_path, held)
    flagged = [r for r in rows if r["flagged"]]
    assert flagged and flagged[0]["module"] == "conv1" and flagged[0]["worst_channel"] == 3, rows
    assert flagged[0]["max_steps"] >= 4
    # the in-place ReLU computed from the runtime's own (wrong) conv output is right again
    assert not by_name(rows, "act1")["flagged"], rows


def by_name(rows, module):
    return next(r for r in rows if r["module"] == module)
