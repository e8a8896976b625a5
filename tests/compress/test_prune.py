"""Structured pruning: MACs and params drop, the pruned module is dense and exports; coded errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.compress.count import count_macs, measure
from edgekit.compress.prune import IMPORTANCE, PruneConfig, prune
from edgekit.errors import UserError
from edgekit.models import BUILTIN

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def tiny():
    return BUILTIN["tiny_cnn"]()


def test_count_macs_of_a_conv_by_hand():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    assert count_macs(conv, (torch.zeros(1, 4, 10, 10),)) == 8 * 10 * 10 * 4 * 9
    assert measure(nn.Linear(5, 3), (torch.zeros(2, 5),)).params == 18


@pytest.mark.parametrize("importance", sorted(IMPORTANCE))
def test_prune_halves_channels_and_cuts_macs(tiny, importance):
    x = tiny.example_inputs
    loss_fn = (lambda m: m(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))).logsumexp(-1).mean()) \
        if importance == "taylor" else None
    res = prune(tiny.module, x, PruneConfig(ratio=0.5, importance=importance), loss_fn=loss_fn)
    assert res.size.before.macs == 709_248 and res.size.before.params == 3_738
    assert res.size.after.macs < 0.5 * res.size.before.macs  # coupled convs lose in and out channels
    assert res.size.after.params < 0.5 * res.size.before.params
    assert res.channels["block.0"] == (32, 16) and res.channels["stem.0"] == (16, 8)
    assert res.model.classifier.out_features == 10  # the head keeps every class
    assert res.model(*x).shape == (1, 10)
    assert tiny.module.block[0].out_channels == 32  # the original is untouched


def test_taylor_and_l2_pick_different_channels(tiny):
    x = tiny.example_inputs
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(8, 3, 32, 32, generator=g)
    l2 = prune(tiny.module, x, PruneConfig(ratio=0.5, importance="l2", round_to=None)).model
    ty = prune(tiny.module, x, PruneConfig(ratio=0.5, importance="taylor", round_to=None),
               loss_fn=lambda m: m(batch)[:, 0].mean()).model
    assert not torch.equal(l2.head[0].weight, ty.head[0].weight)


def test_iterative_steps_call_recovery_between_steps(tiny):
    seen = []
    res = prune(tiny.module, tiny.example_inputs, PruneConfig(ratio=0.5, iterative_steps=2, round_to=None),
                recover=lambda m, step: seen.append((step, m.block[0].out_channels)))
    assert seen == [(0, 24), (1, 16)]
    assert res.model.block[0].out_channels == 16


def test_pruned_model_exports_to_onnx_and_runs(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from edgekit.converters import get
    from edgekit.isolate import run_artifact

    pruned = prune(tiny.module, tiny.example_inputs, PruneConfig(ratio=0.5)).model.eval()
    art = get("onnx").export(pruned, tiny.spec, None, tmp_path, tiny.example_inputs)
    x = np.random.default_rng(0).standard_normal((3, 1, 3, 32, 32)).astype(np.float32)
    out = run_artifact("onnx", art.to_dict(), tmp_path, [x])
    assert out.error is None, out.error
    want = pruned(torch.from_numpy(x[:, 0])).detach().numpy()
    np.testing.assert_allclose(out.outputs[0].reshape(3, 10), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.2, 1.5])
def test_ratio_outside_open_interval_is_coded(ratio):
    with pytest.raises(UserError) as e:
        PruneConfig(ratio=ratio)
    assert e.value.code == "E-COMPRESS-CONFIG" and str(ratio) in str(e.value)


def test_unknown_layer_name_is_coded(tiny):
    with pytest.raises(UserError) as e:
        prune(tiny.module, tiny.example_inputs, PruneConfig(ratio=0.5, ignore=("block.99",)))
    assert e.value.code == "E-COMPRESS-LAYER" and "block.99" in str(e.value)


def test_unknown_importance_names_the_choices():
    with pytest.raises(UserError) as e:
        PruneConfig(ratio=0.5, importance="l3")
    assert "l1, l2, bn_scale, taylor" in str(e.value)


class HardCodedView(nn.Module):
    """A reshape with a hard-coded channel count: the dependency analysis cannot see it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 64, 10)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv(x)))
        return self.fc(y.reshape(1, 16 * 64))


def test_model_the_analysis_cannot_handle_is_coded():
    with pytest.raises(UserError) as e:
        prune(HardCodedView(), (torch.randn(1, 3, 8, 8),), PruneConfig(ratio=0.5, round_to=None))
    assert e.value.code == "E-COMPRESS-UNSUPPORTED"
    assert "conv" in str(e.value)


def test_transformer_ffn_neurons_prune_and_a_head_reshape_is_reported():
    tr = BUILTIN["tiny_transformer"]()
    with pytest.raises(UserError) as e:  # pruning qkv breaks its hard-coded head reshape
        prune(tr.module, tr.example_inputs, PruneConfig(ratio=0.5, round_to=None))
    assert e.value.code == "E-COMPRESS-UNSUPPORTED" and "layers.0.qkv" in str(e.value)
    keep = tuple(n for n, _ in tr.module.named_modules() if n.endswith(("qkv", "proj", "ffn.2")))
    res = prune(tr.module, tr.example_inputs, PruneConfig(ratio=0.5, round_to=None, ignore=keep))
    assert res.channels == {"layers.0.ffn.0": (64, 32), "layers.1.ffn.0": (64, 32)}
    assert res.size.after.macs < 0.8 * res.size.before.macs
    assert res.model(*tr.example_inputs).shape == (1, 4)
