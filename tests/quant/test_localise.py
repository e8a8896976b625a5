"""Localisation of precision loss: the layer that causes it is the one suggested for --keep-float."""
from __future__ import annotations

import copy

import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.localise import localise, suggest_keep_float
from edgekit.quant.pt2e import quantize

pytest.importorskip("litert_torch")


def _quantizer():
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    return PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def _rows(model, data, example):
    q = quantize(model, example, data.samples[:16], QuantRecipe(calibrator="minmax"), _quantizer())
    return localise(q.module, model, data.samples[40:44])


def test_an_outlier_channel_is_localised_to_the_layer_that_reads_it():
    """One output channel of head.0 x60: the per-tensor range of head's ReLU output is set by that
    channel, so the classifier, which reads every channel, loses precision (not head.0 itself: its
    own SQNR is dominated by the big channel)."""
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    model = copy.deepcopy(lm.module).eval()
    with torch.no_grad():
        model.head[0].weight[3] *= 60.0
    rows = {r["module"]: r for r in _rows(model, data, example)}
    clean = {r["module"]: r for r in _rows(lm.module.eval(), data, example)}
    assert set(rows) >= {"stem.0", "block.0", "block.3", "block.6", "head.0", "classifier"}
    assert rows["stem.0"]["drop_db"] is None and rows["stem.0"]["sqnr_db"] > 35  # the first layer: no upstream
    assert rows["classifier"]["drop_db"] > clean["classifier"]["drop_db"] + 3.0
    assert rows["classifier"]["sqnr_db"] < clean["classifier"]["sqnr_db"] - 2.0
    assert all(rows[m]["sqnr_db"] == clean[m]["sqnr_db"] for m in ("stem.0", "block.0", "block.3"))  # upstream untouched
    assert suggest_keep_float(list(rows.values()), 1) == ["classifier"]
