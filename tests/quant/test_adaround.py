"""AdaRound on tiny_cnn with its shipped calibration data: weights land on the grid every target
re-derives, the layer reconstruction error beats round-to-nearest, the result is deterministic, and
the PT2E quantized reference (tflite's) stores exactly the learned integers."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.adaround import AdaRoundConfig, adaround, channel_scales, fold_batchnorm, on_grid

FAST = AdaRoundConfig(iterations=120, positions=1024, batch=256)
CACHE_FAST = AdaRoundConfig(iterations=40, positions=512, batch=128)  # for the on-disk cache tests


@pytest.fixture(autouse=True)
def cache_env(tmp_path, monkeypatch):
    """Every test: round_weights' default disk cache under tmp_path (never the real ~/.cache), an
    empty process memo."""
    from edgekit.quant import adaround as ada

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ada, "_MEMO", {})
    return tmp_path / "cache" / "adaround"


@pytest.fixture(scope="module")
def tiny():
    lm = BUILTIN["tiny_cnn"]()
    samples = list(load_samples(lm.default_data, lm.spec).samples)[:32]
    model, report = adaround(lm.module, lm.example_inputs, samples, FAST, act_recipe=QuantRecipe())
    return lm, samples, model, report


def _layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_weights_are_on_the_grid_with_the_same_scale(tiny):
    lm, _, model, report = tiny
    ref = lm.module.__class__()
    ref.load_state_dict(lm.module.state_dict())
    fold_batchnorm(ref.eval())
    assert report["batchnorm_folded"] == 5 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert len(report["layers"]) == 6  # the classifier (48 pooled vectors, fan-in 64) is rounded to nearest
    assert report["layers"][-1]["kept"].startswith("nearest")
    for name, mod in _layers(model).items():
        q, s = on_grid(mod.weight)
        shape = (-1,) + (1,) * (q.dim() - 1)
        assert torch.equal(q * s.reshape(shape), mod.weight.detach()), name  # exactly s * q
        top = q.abs().reshape(len(q), -1).amax(1)
        floored = s == 2.0 ** -12  # channels below the PT2E observers' scale floor keep it (max|q| < 127)
        assert torch.equal(top[~floored], torch.full_like(top[~floored], 127.0)), name
        # the scale a target re-derives is the scale of the BN-folded float weights
        torch.testing.assert_close(s, channel_scales(_layers(ref)[name].weight), rtol=1e-6, atol=0)
        # learned rounding moves each weight by less than one step from the float weight
        diff = (mod.weight - _layers(ref)[name].weight).abs() / s.reshape(shape)
        assert float(diff.detach().max()) < 1.0 + 1e-4, name


def test_reconstruction_error_is_lower_than_round_to_nearest(tiny):
    _, _, _, report = tiny
    rows = [r for r in report["layers"] if "rel_err_nearest" in r]  # learned (enough positions)
    # on the positions learned from, and on positions of the samples held out from learning
    assert sum(r["rel_err_adaround"] for r in rows) < 0.9 * sum(r["rel_err_nearest"] for r in rows), rows
    kept = [r for r in rows if r["kept"] == "adaround"]
    assert len(kept) >= 3 and any(r["changed_vs_nearest"] > 0.02 for r in kept), rows
    assert all(r["val_rel_err_adaround"] <= r["val_rel_err_nearest"] for r in kept), rows
    assert sum(r["val_rel_err_adaround"] for r in kept) < 0.9 * sum(r["val_rel_err_nearest"] for r in kept), rows


def test_deterministic(tiny):
    lm, samples, model, _ = tiny
    again, _ = adaround(lm.module, lm.example_inputs, samples, FAST, act_recipe=QuantRecipe())
    for (n, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), n


def test_one_pass_capture_learns_what_a_forward_per_layer_does(tiny, monkeypatch):
    """The fx one-pass capture (the default) and the per-layer forwards (models that do not trace)
    give every layer the same inputs and targets: the same integers."""
    from edgekit.quant import adaround as ada

    lm, samples, _, _ = tiny
    one, rep_one = adaround(lm.module, lm.example_inputs, samples, CACHE_FAST, act_recipe=QuantRecipe())
    monkeypatch.setattr(ada, "_graph", lambda model: None)
    per, rep_per = adaround(lm.module, lm.example_inputs, samples, CACHE_FAST, act_recipe=QuantRecipe())
    assert rep_one["capture"].startswith("one pass") and rep_per["capture"].startswith("a forward per layer")
    for (n, a), b in zip(one.state_dict().items(), per.state_dict().values()):
        assert torch.equal(a, b), n


def test_pt2e_reference_stores_the_learned_integers(tiny):
    """Round trip through the tflite target's quantizer: convert_pt2e's per-channel weight q/dq
    re-derives scale max|w|/127 from the rounded weights and gets back the learned integers."""
    pytest.importorskip("litert_torch")
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

    from edgekit.quant.pt2e import quantize

    lm, samples, model, _ = tiny
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    gm = quantize(model, lm.example_inputs, samples[:8], QuantRecipe(), quantizer).module
    learned = [on_grid(m.weight)[0] for m in _layers(model).values()]
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and "quantize_per_channel.default" in str(node.target) \
                and "dequantize" not in str(node.target):
            w, scale = (_attr(gm, a.target) for a in node.args[:2])
            found.append(torch.clamp(torch.round(w / scale.reshape(-1, *[1] * (w.dim() - 1))), -127, 127))
    assert len(found) == len(learned)
    for q in found:  # each quantized weight equals one learned integer tensor
        assert any(q.shape == l.shape and torch.equal(q, l) for l in learned)


def _attr(gm, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach()


def test_recipe_rounding_is_checked():
    with pytest.raises(UserError, match="E-ARGS"):
        QuantRecipe(rounding="stochastic").with_()
    assert "AdaRound" in QuantRecipe(rounding="adaround").describe()
    with pytest.raises(UserError, match="E-ARGS"):
        adaround(nn.Conv2d(1, 1, 1), (torch.zeros(1, 1, 2, 2),), [], AdaRoundConfig(iterations=0))


def test_ptl_quantized_module_stores_the_learned_integers(tiny):
    """The ptl target (FX qnnpack, its own per-channel observers) gets the same integers."""
    from edgekit.converters.ptl.quant import quantize

    lm, samples, model, _ = tiny
    q = quantize(model, lm.example_inputs, samples[:8], QuantRecipe())
    learned = [on_grid(m.weight)[0] for m in _layers(model).values()]
    stored = [m.weight().int_repr().float() for m in q.module.modules()
              if hasattr(m, "weight") and callable(m.weight) and type(m).__module__.startswith("torch.ao.nn")]
    assert len(stored) == len(learned)
    for s in stored:
        assert any(s.shape == l.shape and torch.equal(s, l) for l in learned)


def test_every_target_recipe_path_learns_once_per_job(tiny):
    """round_weights (what tflite, executorch, onnx, ptl and ncnn call) caches per weights + samples +
    recipe, so the targets of one export job share one learning run and get the same integers."""
    from edgekit.quant.adaround import round_weights

    lm, samples, _, _ = tiny
    recipe = QuantRecipe(rounding="adaround")
    a, rep_a = round_weights(lm.module, lm.example_inputs, samples, recipe)
    b, rep_b = round_weights(lm.module, lm.example_inputs, samples, recipe)
    assert not rep_a.get("cached") and rep_b.get("cached")
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
    same, none = round_weights(lm.module, lm.example_inputs, samples, QuantRecipe())
    assert same is lm.module and none == {}


def test_ncnn_writer_stores_the_learned_integers(tiny):
    """ncnn's weight writer (scale 127/max|w|, capped by the recipe's floor) gets the same integers."""
    from edgekit.converters.ncnn.int8 import quantize_weights

    _, _, model, _ = tiny
    for name, m in _layers(model).items():
        q, _ = quantize_weights(m.weight.detach().numpy())
        want = on_grid(m.weight)[0].reshape(q.shape)
        assert torch.equal(torch.from_numpy(q.astype("float32")), want), name


def test_ptl_export_with_learned_rounding_is_clean_layer_by_layer(tiny, tmp_path):
    """Folded BatchNorms leave Identity modules between conv and ReLU6: the ptl path drops them, so
    conv+ReLU6 still fuse and every layer of the .ptl stays within one step of its reference."""
    from edgekit.converters.ptl import CONVERTER

    lm, samples, _, _ = tiny
    data = load_samples(lm.default_data, lm.spec)
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(rounding="adaround"), tmp_path, lm.example_inputs,
                           calibration=data.head(32))
    assert any("AdaRound" in n for n in art.meta["quant_notes"])
    assert any("conv+ReLU6 fused" in n for n in art.meta["quant_notes"])
    rows = CONVERTER.per_layer(art, tmp_path, list(data.samples[32:36]))
    assert rows and all(r["max_steps"] <= 1.0 and not r["flagged"] for r in rows), rows


def _cache_files(folder):
    return sorted(folder.glob("adaround-*.npz")) if folder.is_dir() else []


def test_default_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    from pathlib import Path

    from edgekit.quant.adaround import default_cache_dir

    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "other"))
    assert default_cache_dir() == tmp_path / "adaround"
    monkeypatch.delenv("EDGEKIT_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "other" / "adaround"  # the variable edgekit.arm reads
    monkeypatch.delenv("EDGEKIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "edgekit" / "adaround"


def test_rerun_in_a_new_process_loads_from_disk_and_learns_nothing(tiny, cache_env, monkeypatch):
    from edgekit.quant import adaround as ada

    lm, samples, _, _ = tiny
    recipe = QuantRecipe(rounding="adaround")
    a, rep_a = ada.round_weights(lm.module, lm.example_inputs, samples, recipe, config=CACHE_FAST)
    assert not rep_a["cached"] and len(_cache_files(cache_env)) == 1
    assert not list(cache_env.glob("*.part"))  # written to a temporary file, then renamed
    monkeypatch.setattr(ada, "_MEMO", {})  # what a new process starts with

    def no_learning(*args, **kwargs):
        raise AssertionError("learned again")

    monkeypatch.setattr(ada, "adaround", no_learning)
    b, rep_b = ada.round_weights(lm.module, lm.example_inputs, samples, recipe, config=CACHE_FAST)
    assert rep_b["cached"] and rep_b["layers"] == rep_a["layers"]
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
    assert not any(isinstance(m, nn.BatchNorm2d) for m in b.modules())  # the folded model, as learned


def test_cache_key_changes_with_samples_weights_and_config(tiny):
    import copy

    from edgekit.quant.adaround import _cache_key

    lm, samples, _, _ = tiny
    recipe = QuantRecipe(rounding="adaround")
    key = _cache_key(lm.module, samples, CACHE_FAST, recipe)
    assert key == _cache_key(lm.module, [tuple(a.copy() for a in s) for s in samples], CACHE_FAST, recipe)
    other = [tuple(a.copy() for a in s) for s in samples]
    other[3][0].flat[7] += 1e-3
    assert _cache_key(lm.module, other, CACHE_FAST, recipe) != key
    changed = copy.deepcopy(lm.module)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert _cache_key(changed, samples, CACHE_FAST, recipe) != key
    assert _cache_key(lm.module, samples, AdaRoundConfig(iterations=41, positions=512, batch=128), recipe) != key
    assert _cache_key(lm.module, samples, CACHE_FAST, recipe.with_(calibrator="minmax")) != key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_cache_file_is_relearned_and_rewritten(tiny, cache_env, monkeypatch, damage, caplog):
    from edgekit.quant import adaround as ada

    lm, samples, _, _ = tiny
    recipe = QuantRecipe(rounding="adaround")
    a, _ = ada.round_weights(lm.module, lm.example_inputs, samples, recipe, config=CACHE_FAST)
    (path,) = _cache_files(cache_env)
    good = path.read_bytes()
    bad = {"truncated": good[: len(good) // 2], "garbage": b"PK\x03\x04" + bytes(range(256)) * 8, "empty": b""}[damage]
    path.write_bytes(bad)
    monkeypatch.setattr(ada, "_MEMO", {})
    b, rep = ada.round_weights(lm.module, lm.example_inputs, samples, recipe, config=CACHE_FAST)
    assert not rep["cached"] and "unusable" in caplog.text
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n  # learned again: the same integers (deterministic)
    assert path.read_bytes() != bad  # and rewritten: the next run loads it
    monkeypatch.setattr(ada, "_MEMO", {})
    c, rep = ada.round_weights(lm.module, lm.example_inputs, samples, recipe, config=CACHE_FAST)
    assert rep["cached"] and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_cache_file_holds_no_pickle(tiny, cache_env):
    import numpy as np

    from edgekit.quant import adaround as ada

    lm, samples, _, _ = tiny
    ada.round_weights(lm.module, lm.example_inputs, samples, QuantRecipe(rounding="adaround"), config=CACHE_FAST)
    (path,) = _cache_files(cache_env)
    with np.load(path, allow_pickle=False) as z:  # raises on any object (pickled) entry
        assert all(z[k].dtype == np.uint8 for k in z.files)


def test_cache_file_round_trips_any_dtype(tmp_path):
    """Tensors are stored as raw bytes: dtypes numpy lacks (bfloat16), 0-d and empty tensors come back exact."""
    from edgekit.quant.adaround import _load, _save

    state = {"w": torch.randn(3, 4).to(torch.bfloat16), "n": torch.tensor(7), "e": torch.zeros(0, 2),
             "b": torch.tensor([True, False])}
    path = tmp_path / "x.npz"
    _save(path, "k" * 64, state, {"layers": []})
    got, report = _load(path, "k" * 64, state)
    assert report == {"layers": []} and all(torch.equal(got[n], state[n]) and got[n].dtype == state[n].dtype for n in state)
    assert _load(path, "j" * 64, state) is None  # another key: not used
    assert _load(path, "k" * 64, {**state, "w": torch.zeros(4, 3, dtype=torch.bfloat16)}) is None  # another shape
