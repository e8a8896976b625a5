"""Attention-head / FFN-neuron pruning: whole heads leave (exactly, when they carry nothing), MACs
drop, the pruned transformer exports to tflite and onnx and computes what torch computes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgekit.compress.heads import HeadPruneConfig, encoder_layers, prune_heads
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.model_source import load_model


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny_transformer")
    return loaded, load_samples(loaded.default_data, loaded.spec).head(8)


def test_heads_and_neurons_leave_and_macs_drop(tiny):
    loaded, _ = tiny
    assert encoder_layers(loaded.module) == {"layers.0": "fused_qkv", "layers.1": "fused_qkv"}
    res = prune_heads(loaded.module, loaded.example_inputs, HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5))
    layer = res.model.layers[0]
    assert res.layers["layers.0"]["heads"] == [4, 2] and res.layers["layers.0"]["ffn"] == [64, 32]
    assert layer.qkv.weight.shape == (3 * 2 * 8, 32) and layer.proj.weight.shape == (32, 16)
    assert layer.ffn[0].weight.shape == (32, 32) and layer.ffn[2].weight.shape == (32, 32)
    assert res.size.before.macs == 295_040 and res.size.after.macs < 0.55 * res.size.before.macs
    assert res.model(*loaded.example_inputs).shape == (1, 4)
    assert loaded.module.layers[0].qkv.out_features == 96  # the original is untouched


def test_a_head_that_carries_nothing_is_removed_exactly(tiny):
    loaded, data = tiny
    model = copy.deepcopy(loaded.module)
    with torch.no_grad():  # zero every weight of head 1 (rows 8..15 of q, k, v; columns of proj) and FFN neurons 0..7
        for layer in model.layers:
            for s in range(3):
                layer.qkv.weight[s * 32 + 8: s * 32 + 16] = 0
                layer.qkv.bias[s * 32 + 8: s * 32 + 16] = 0
            layer.proj.weight[:, 8:16] = 0
            layer.ffn[0].weight[:8] = 0
            layer.ffn[0].bias[:8] = 0  # GELU(0) = 0
            layer.ffn[2].weight[:, :8] = 0
    res = prune_heads(model, loaded.example_inputs, HeadPruneConfig(head_ratio=0.25, ffn_ratio=0.125))
    assert res.layers["layers.1"]["kept_heads"] == [0, 2, 3] and res.layers["layers.1"]["ffn"] == [64, 56]
    for sample in data.samples:
        x = tuple(torch.from_numpy(a) for a in sample)
        torch.testing.assert_close(res.model(*x), model(*x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tflite", "onnx"])
def test_head_pruned_transformer_exports_and_matches_torch(tiny, tmp_path, target):
    from edgekit.converters import get

    loaded, data = tiny
    model = prune_heads(loaded.module, loaded.example_inputs, HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5)).model.eval()
    conv = get(target)
    art = conv.export(model, loaded.spec, None, tmp_path, loaded.example_inputs)
    run = conv.runner(art, tmp_path, threads=1)
    for sample in data.samples:
        out = run([np.asarray(a) for a in sample])[0]
        ref = model(*(torch.from_numpy(a) for a in sample)).detach().numpy()
        np.testing.assert_allclose(out.reshape(ref.shape), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kwargs, code, needle", [
    ({"head_ratio": 1.0}, "E-COMPRESS-CONFIG", "outside (0, 1)"),
    ({"ffn_ratio": 0.0}, "E-COMPRESS-CONFIG", "outside (0, 1)"),
    ({"head_ratio": None, "ffn_ratio": None}, "E-COMPRESS-CONFIG", "neither"),
    ({"importance": "random"}, "E-COMPRESS-CONFIG", "l1, l2"),
])
def test_bad_config_is_coded(kwargs, code, needle):
    with pytest.raises(UserError) as e:
        HeadPruneConfig(**kwargs)
    assert e.value.code == code and needle in str(e.value)


def test_bad_layer_names_are_coded(tiny):
    loaded, _ = tiny
    with pytest.raises(UserError) as e:
        prune_heads(loaded.module, loaded.example_inputs, HeadPruneConfig(layers=("layers.7",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "layers.7" in str(e.value) and "layers.0" in str(e.value)
    with pytest.raises(UserError) as e:
        prune_heads(loaded.module, loaded.example_inputs, HeadPruneConfig(layers=("classifier",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "not a recognised encoder layer" in str(e.value)
    cnn = load_model("tiny_cnn")
    with pytest.raises(UserError) as e:
        prune_heads(cnn.module, cnn.example_inputs, HeadPruneConfig())
    assert e.value.code == "E-COMPRESS-UNSUPPORTED"
