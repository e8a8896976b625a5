"""QuantRecipe: frozen, validated with coded errors, keep-float matching by name or class."""
from __future__ import annotations

import dataclasses

import pytest
from torch import nn

from edgekit.errors import UserError
from edgekit.quant import QuantRecipe, check
from edgekit.quant.recipe import keep_float_modules


def test_frozen_and_round_trips():
    r = QuantRecipe(calibrator="percentile", percentile=99.9, keep_float=("classifier",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.calibrator = "mse"
    assert QuantRecipe.from_dict(r.to_dict()) == r
    assert "percentile 99.9" in r.describe() and "classifier" in r.describe()


@pytest.mark.parametrize("change", [dict(calibrator="kl"), dict(percentile=40.0), dict(bins=10), dict(io="uint8"),
                                    dict(scheme="int4"), dict(max_samples=0), dict(keep_float=["a"])])
def test_bad_values_are_coded_errors(change):
    with pytest.raises(UserError) as e:
        check(dataclasses.replace(QuantRecipe(), **change))
    assert e.value.code == "E-ARGS"


def test_unknown_key_is_an_error():
    with pytest.raises(UserError, match="unknown quantization recipe keys"):
        QuantRecipe.from_dict({"calibrator": "mse", "calibratr": "x"})


def test_keep_float_by_name_prefix_and_type():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    got = keep_float_modules(m, QuantRecipe(keep_float=("2", "Conv2d")))
    assert got == {"0": "Conv2d", "2": "2", "2.0": "2", "2.1": "2"}
    with pytest.raises(UserError) as e:
        keep_float_modules(m, QuantRecipe(keep_float=("classifier",)))
    assert "matches no module" in e.value.what
