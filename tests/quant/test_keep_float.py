"""--keep-float on the PT2E targets: the kept layer is really left float, in the quantized reference
and in the .tflite (litert-torch's own module-name filter does not match torch 2.13's export
metadata, so edgekit strips the annotations itself; a kept layer used to be silently quantized)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.pt2e import quantize

pytest.importorskip("litert_torch")


def _quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


@pytest.fixture(scope="module")
def setup():
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    return lm, data, example


def _weight_quants(gm) -> int:
    return sum(1 for n in gm.graph.nodes if "quantize_per_channel" in str(n.target) and "dequantize" not in str(n.target))


def _run(gm, samples) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([gm(torch.from_numpy(s[0])).numpy() for s in samples])


def test_kept_layer_has_no_quantized_weight_and_its_output_is_float(setup):
    lm, data, example = setup
    cal = data.samples[:16]
    full = quantize(lm.module, example, cal, QuantRecipe(), _quantizer())
    kept = quantize(lm.module, example, cal, QuantRecipe(keep_float=("classifier",)), _quantizer())
    assert _weight_quants(kept.module) == _weight_quants(full.module) - 1
    assert kept.output_scales == [None]  # the classifier's output is not quantized any more
    assert full.output_scales[0] and full.output_scales[0] > 0
    assert any("kept float: classifier" in n for n in kept.notes)
    held = data.samples[32:40]
    fp32 = _run(lm.module.eval(), held)
    err_full = np.abs(_run(full.module, held) - fp32).max()
    err_kept = np.abs(_run(kept.module, held) - fp32).max()
    assert err_kept != err_full  # it changed the numbers: the layer is really float now


def test_keep_float_by_class_name_keeps_every_conv_float(setup):
    lm, data, example = setup
    kept = quantize(lm.module, example, data.samples[:8], QuantRecipe(keep_float=("Conv2d",)), _quantizer())
    assert _weight_quants(kept.module) == 1  # only the Linear classifier is quantized


@pytest.mark.slow
def test_tflite_keeps_the_layer_float_in_the_file(setup, tmp_path):
    from edgekit.converters.tflite import CONVERTER
    from edgekit.converters.tflite.coverage.model import read_tflite

    lm, data, example = setup
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(keep_float=("classifier",)), tmp_path, example,
                           calibration=data.head(16))
    sg = read_tflite(tmp_path / art.path).subgraphs[0]
    fc = [op for op in sg.ops if op.builtin == "FULLY_CONNECTED"]
    assert len(fc) == 1
    assert {t.dtype for t in sg.op_inputs(fc[0])} == {"float32"}
    convs = [op for op in sg.ops if op.builtin in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert convs and all(sg.op_inputs(op)[1].dtype == "int8" for op in convs)
    assert art.meta["kept_float"] == ["classifier"]


def test_dynamic_weight_only_quantization_keeps_the_layer_float_too(setup):
    """The dynamic (weight-only) path of tflite and executorch shares the same KeepFloat: it used the
    quantizer's own name filter, which silently quantized the kept layer."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    from edgekit.quant.pt2e import quantize_dynamic

    lm, _, example = setup

    def dynamic(keep):
        q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        return quantize_dynamic(lm.module, example, QuantRecipe(scheme="dynamic", keep_float=keep), q)

    full, kept = _weight_quants(dynamic(())), _weight_quants(dynamic(("classifier",)))
    assert full >= 1 and kept == full - 1


def _float_layers_graph(gm) -> tuple[list, list]:
    """(the ReLU6 nodes left float: hardtanh, the quantize nodes that read one of them)."""
    caps = [n for n in gm.graph.nodes if n.op == "call_function" and "hardtanh" in str(n.target)]
    read = [n for n in gm.graph.nodes if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)
            and n.args[0] in caps]
    return caps, read


def test_a_float_layer_keeps_its_activation_float_and_capped(setup):
    """A kept layer's ReLU6 stays float with it (the quantizer's stand-alone ReLU annotation used to
    round it to int8 anyway): between two float layers no quantize, and the cap at 6 is back, since
    no int8 grid caps a float tensor."""
    lm, data, example = setup
    kept = quantize(lm.module, example, data.samples[:8], QuantRecipe(keep_float=("stem", "block.0")), _quantizer())
    caps, read = _float_layers_graph(kept.module)
    assert len(caps) == 2 and all(tuple(n.args[1:]) == (0.0, 6.0) for n in caps)
    assert len(read) == 1  # only the int8 depthwise conv after block.0 quantizes (its own input)


def test_with_every_layer_float_only_the_pooling_stays_int8(setup):
    """All conv and linear layers kept float: no layer's output is rounded any more; what is quantized
    is the pooling (litert-torch's quantizer makes average pooling an int8 op of its own: its input
    and output). Before, every ReLU6 output was still int8."""
    lm, data, example = setup
    kept = quantize(lm.module, example, data.samples[:8], QuantRecipe(keep_float=("Conv2d", "Linear")), _quantizer())
    rounded = [str(n.args[0].target) for n in kept.module.graph.nodes
               if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)]
    assert sorted(rounded) == ["aten.adaptive_avg_pool2d.default", "aten.flatten.using_ints", "aten.relu.default"], rounded


def test_a_lone_float_layer_between_quantized_ones_stays_quantized_on_tflite(setup):
    """TFLite's converter fuses dequantize -> float layer -> quantize back into a quantized op (with
    weights it quantizes itself): MobileNetV2's first depthwise conv kept float alone came out an int16
    DEPTHWISE_CONV_2D, 2,507 output steps from its float reference. On tflite's quantizer such a layer
    stays quantized in the reference too and the notes say so; with a float neighbour it is float;
    a quantizer without the flag (litert-torch's own) keeps it float."""
    from edgekit.converters.tflite import CONVERTER

    lm, data, example = setup
    cal = data.samples[:8]
    full = _weight_quants(quantize(lm.module, example, cal, QuantRecipe(), CONVERTER.pt2e_quantizer()).module)
    alone = quantize(lm.module, example, cal, QuantRecipe(keep_float=("block.3",)), CONVERTER.pt2e_quantizer())
    assert _weight_quants(alone.module) == full
    assert any(n.startswith("not kept float on this target: block.3 ") for n in alone.notes), alone.notes
    assert not any("held no op" in n for n in alone.notes)
    pair = quantize(lm.module, example, cal, QuantRecipe(keep_float=("block.3", "block.6")), CONVERTER.pt2e_quantizer())
    assert _weight_quants(pair.module) == full - 2 and not any("not kept float" in n for n in pair.notes)
    plain = quantize(lm.module, example, cal, QuantRecipe(keep_float=("block.3",)), _quantizer())
    assert _weight_quants(plain.module) == full - 1


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_a_whole_block_kept_float_between_quantized_layers_is_float_on_tflite():
    """A block (the budget search keeps blocks float) reads and feeds only quantized tensors too, but it is
    a chain of float ops, which no converter fuses into one quantized op: it stays float, unlike a lone layer."""
    from edgekit.converters.tflite import CONVERTER

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), _Block(), torch.nn.Conv2d(8, 4, 1)).eval()
    cal = [(np.random.default_rng(i).standard_normal((1, 3, 12, 12)).astype(np.float32),) for i in range(4)]
    example = (torch.from_numpy(cal[0][0]),)
    block = quantize(model, example, cal, QuantRecipe(keep_float=("2",)), CONVERTER.pt2e_quantizer())
    assert _weight_quants(block.module) == 2 and not any("not kept float" in n for n in block.notes)
    lone = quantize(model, example, cal, QuantRecipe(keep_float=("2.b",)), CONVERTER.pt2e_quantizer())
    assert _weight_quants(lone.module) == 4 and any("not kept float on this target: 2.b" in n for n in lone.notes)


@pytest.mark.slow
def test_the_tflite_file_computes_what_its_reference_does_with_a_lone_float_layer(setup, tmp_path):
    """End to end on the int16x8 file (where the 2,507 steps were seen): within the int16 grid's few steps."""
    from edgekit.converters.tflite import CONVERTER
    from edgekit.quant.reference import load_quantized_reference

    lm, data, example = setup
    recipe = QuantRecipe(scheme="int16x8", keep_float=("block.3",))
    art = CONVERTER.export(lm.module, lm.spec, recipe, tmp_path, example, calibration=data.head(16))
    ref = load_quantized_reference(tmp_path / art.meta["reference"]).module()
    run = CONVERTER.runner(art, tmp_path)
    held = data.samples[32:40]
    got = np.concatenate([run(s)[0] for s in held])
    want = _run(ref, held)
    assert np.abs(got - want).max() / art.meta["output_scales"][0] < 64  # the int16x8 tolerance in steps
    assert art.meta["kept_float"] == []
