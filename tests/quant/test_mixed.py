"""Mixed precision by sensitivity (recipe.float_share, edgekit/quant/mixed.py): the layers whose int8
error is out of proportion to their size are found on real photos and kept float, within the share."""
from __future__ import annotations

import pytest

from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.mixed import describe, sensitive_float


@pytest.fixture(scope="module")
def mobilenet_v2():
    lm = BUILTIN["mobilenet_v2"]()
    return lm, load_samples(lm.default_data, lm.spec)


def test_mobilenet_v2s_first_layers_are_the_sensitive_ones(mobilenet_v2):
    """Its stem, first depthwise and first projection (1,664 weights of 3.5 M): the first depthwise
    conv alone takes the logits to ~24 dB vs FP32, the median layer costs > 40 dB."""
    lm, data = mobilenet_v2
    recipe, rows = sensitive_float(lm.module, data.samples, QuantRecipe(float_share=0.002, keep_float=("features.18",)))
    assert [r.layer for r in rows] == ["features.1.conv.0.0", "features.1.conv.1", "features.0.0"]
    assert recipe.keep_float == ("features.18", "features.1.conv.0.0", "features.1.conv.1", "features.0.0")
    assert rows[0].db < 28 and all(r.db < 35 for r in rows)
    extra = sum(r.extra_bytes for r in rows)
    assert extra == 3 * (288 + 512 + 864) <= 0.002 * 3_504_872
    assert "3 int8-sensitive layer(s) kept float, +4,992 bytes" in describe(rows, 0.002)


def test_int16x8_is_measured_on_its_int16_activation_grid(mobilenet_v2):
    """int16x8 reads each layer's input on the int16 grid, so what is left is mostly its int8 weights'
    cost: summed over MobileNetV2's layers, two thirds of the int8 figure (measured 0.67; 1.0 if the
    int8 grid were used for both)."""
    from edgekit.quant.mixed import ranked

    lm, data = mobilenet_v2
    int8 = {r.layer: r for r in ranked(lm.module, data.samples, QuantRecipe())}
    int16 = ranked(lm.module, data.samples, QuantRecipe(scheme="int16x8"))
    assert set(int8) == {r.layer for r in int16}
    assert 0.5 < sum(r.noise for r in int16) / sum(r.noise for r in int8.values()) < 0.8
    assert int16[0].layer == "features.1.conv.0.0"  # the first depthwise's 288 weights, in both


def test_a_larger_share_keeps_more_and_zero_keeps_none(mobilenet_v2):
    lm, data = mobilenet_v2
    _, small = sensitive_float(lm.module, data.samples, QuantRecipe(float_share=0.002))
    _, large = sensitive_float(lm.module, data.samples, QuantRecipe(float_share=0.01))
    assert [r.layer for r in small] == [r.layer for r in large][:len(small)] and len(large) > len(small)
    assert sum(r.extra_bytes for r in large) <= 0.01 * 3_504_872
    assert sensitive_float(lm.module, data.samples, QuantRecipe()) == (QuantRecipe(), [])


def test_a_model_with_no_outlier_layer_keeps_everything_int8():
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    recipe, rows = sensitive_float(lm.module, data.samples, QuantRecipe(float_share=0.25))
    assert rows == [] and recipe.keep_float == ()


@pytest.mark.parametrize("share", [-0.1, 0.3, True, "0.1", float("nan")])
def test_a_float_share_outside_0_to_0_25_is_refused(share):
    with pytest.raises(UserError) as e:
        QuantRecipe(float_share=share)
    assert e.value.code == "E-ARGS" and "float_share" in str(e.value)


def test_weight_only_schemes_refuse_a_float_share():
    with pytest.raises(UserError) as e:
        QuantRecipe(scheme="dynamic", float_share=0.01)
    assert e.value.code == "E-ARGS" and "float_share" in str(e.value)


def test_the_recipe_round_trips_with_its_share():
    r = QuantRecipe(float_share=0.005)
    assert QuantRecipe.from_dict(r.to_dict()) == r
    assert "sensitive layers float within 0.005 of the weight bytes" in r.describe()
