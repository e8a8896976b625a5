"""Per-layer fidelity of an INT8 .tflite: a clean file is within 1 step on every layer; a x1.25
weight scale on one output channel, and one changed int8 weight, are each flagged on exactly the
layer they were made in."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import CONVERTER  # noqa: E402
from edgekit.converters.tflite.per_layer import tflite_per_layer  # noqa: E402
from edgekit.quant.per_layer import keep_float_suggestions  # noqa: E402

pytestmark = pytest.mark.slow  # one litert-torch INT8 conversion (~15 s)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    out = tmp_path_factory.mktemp("per_layer")
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, example, calibration=data.head(32))
    return lm, out / art.path, out / art.meta["reference"], data.samples[40:44]


def _const_weight(path, op_name: str, which: int = 0):
    """(tensor details, int8 values) of the weight of the which-th op named op_name."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    ops = [o for o in interp._get_ops_details() if o["op_name"] == op_name]
    w_index = int(ops[which]["inputs"][1])
    d = next(x for x in interp.get_tensor_details() if x["index"] == w_index)
    return d, interp.get_tensor(w_index)


def _patched(src, dst, old: bytes, new: bytes):
    blob = src.read_bytes()
    assert blob.count(old) == 1  # the pattern is unique in the file: the patch hits that tensor only
    dst.write_bytes(blob.replace(old, new))
    return dst


def _by_layer(rows):
    return {r["layer"]: r for r in rows}


def test_clean_file_is_within_one_step_everywhere(bundle):
    lm, tfl, ref, samples = bundle
    rows = tflite_per_layer(tfl, ref, samples, float_model=lm.module)
    ops = {r["op"] for r in rows}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"} <= ops
    assert all(r["max_steps"] <= 1.0 and not r["flagged"] for r in rows), rows
    sq = [r["sqnr_db"] for r in rows if r["sqnr_db"] is not None]
    assert len(sq) >= 5 and all(20.0 < s < 80.0 for s in sq)
    assert keep_float_suggestions(rows, 1)
    import json

    json.dumps(rows)  # JSON-safe


def test_one_channel_weight_scale_is_flagged_on_its_layer(bundle, tmp_path):
    lm, tfl, ref, samples = bundle
    d, _ = _const_weight(tfl, "CONV_2D", 1)  # block's expand conv (the 2nd CONV_2D)
    scales = np.asarray(d["quantization_parameters"]["scales"], np.float32)
    bad = scales.copy()
    bad[3] *= 1.25
    rows = tflite_per_layer(_patched(tfl, tmp_path / "bad_scale.tflite", scales.tobytes(), bad.tobytes()), ref, samples)
    flagged = [r for r in rows if r["flagged"]]
    assert len(flagged) == 1 and flagged[0]["op"] == "CONV_2D" and flagged[0]["module"] == "block.0"
    assert flagged[0]["worst_channel"] == 3 and flagged[0]["max_steps"] >= 4


def test_one_changed_weight_is_flagged_on_its_layer(bundle, tmp_path):
    lm, tfl, ref, samples = bundle
    d, w = _const_weight(tfl, "DEPTHWISE_CONV_2D", 0)
    bad = w.copy()
    flat = bad.reshape(-1)
    k = int(np.argmax(np.abs(flat)))
    flat[k] = np.int8(-int(flat[k]) // 2)  # the largest weight: sign flipped and halved
    rows = tflite_per_layer(_patched(tfl, tmp_path / "bad_weight.tflite", w.tobytes(), bad.tobytes()), ref, samples)
    flagged = [r for r in rows if r["flagged"]]
    assert len(flagged) == 1 and flagged[0]["op"] == "DEPTHWISE_CONV_2D"
    assert flagged[0]["max_steps"] >= 4
