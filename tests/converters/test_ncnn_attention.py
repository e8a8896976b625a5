"""ncnn on the pieces attention models are built from (issue 12): each pattern is a small module that
does what the real architecture does, exported with the real pnnx and run in the real ncnn runtime
(strict FP32), compared with PyTorch on several inputs.

- MobileViT v2 unfold/fold: 6-D reshape + permute (ncnn blobs have at most 4 dims).
- MobileViT v1: patches as the batch of a transformer, its qkv a 5-D permute + unbind.
- EdgeNeXt's cross-covariance attention: unbind of qkv, F.normalize over the last dim, uneven chunk.
- LeViT: strided slice x[:, ::2, ::2] on an odd grid, BatchNorm1d on flatten(0, 1).
- SDPA with a bool padding mask (ncnn's SDPA adds its mask: a padded key must get a large negative).
- MobileBERT's trigram embedding: a pad of outer dims by zero, concatenated with the unpadded tensor.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from converter_checks import assert_close  # noqa: E402
from edgekit.errors import UnsupportedOpError
from edgekit.spec import ModelSpec, TensorSpec

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn import CONVERTER  # noqa: E402
from edgekit.converters.ncnn.layout import MAX_DIMS, apply, plan, strided_factors  # noqa: E402

N_SAMPLES = 3


def _export(module, example, tmp_path, input_names=None):
    """Export FP32 to ncnn; -> (artifact, runner, reference fn)."""
    module = module.eval()
    with torch.no_grad():
        out = module(*example)
    names = input_names or [f"x{k}" for k in range(len(example))]
    spec = ModelSpec("m", tuple(TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                                for n, t in zip(names, example)),
                     (TensorSpec("y", tuple(out.shape)),), task="embedding")
    artifact = CONVERTER.export(module, spec, None, tmp_path, example)
    return artifact, CONVERTER.runner(artifact, tmp_path)


def _check_parity(module, shape, tmp_path, seed=0) -> float:
    torch.manual_seed(seed)
    artifact, run = _export(module, (torch.randn(shape),), tmp_path)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(N_SAMPLES):
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        worst = max(worst, assert_close(run([x])[0], ref))
    return artifact, worst


# --------------------------------------------------------------------------------------------
# The layout planner on its own: every reshape/permute/slice chain becomes <= 4-D ops, exactly.
# --------------------------------------------------------------------------------------------

def _chains():
    yield (1, 3, 8, 8), lambda x: x.reshape(1, 3, 4, 2, 4, 2).permute(0, 1, 3, 5, 2, 4).reshape(1, 3, 4, 16)
    yield (1, 3, 4, 16), lambda x: x.reshape(1, 3, 2, 2, 4, 4).permute(0, 1, 4, 2, 5, 3).reshape(1, 3, 8, 8)
    yield (1, 49, 8), lambda x: x.view(1, 7, 7, 8)[:, ::2, ::2].reshape(1, -1, 8)
    yield (1, 36, 8), lambda x: x.view(1, 6, 6, 8)[:, 1::3, ::2]
    for k in range(3):
        yield (4, 16, 24), lambda x, k=k: x.reshape(4, 16, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)[k]
        yield (1, 16, 24), lambda x, k=k: x.reshape(1, 16, 3, 2, 4).permute(2, 0, 3, 4, 1).unbind(0)[k]
    for perm in itertools.islice(itertools.permutations(range(5)), 0, 120, 7):
        yield (2, 3, 4, 5, 6), lambda x, perm=perm: x.permute(perm).flatten(0, 1)


@pytest.mark.parametrize("shape,chain", list(_chains()))
def test_plan_picks_the_same_elements_with_at_most_4_dims(shape, chain):
    source = torch.arange(math.prod(shape)).reshape(shape)
    index = chain(source)
    steps = plan(source.numel(), index.shape, *strided_factors(index))
    assert torch.equal(apply(steps, source.flatten()), index)
    assert all(len(s.args) <= MAX_DIMS for s in steps[:-1] if s.op in ("reshape", "permute"))
    assert steps[-1].args == tuple(index.shape)


# --------------------------------------------------------------------------------------------
# The patterns, through pnnx and ncnn.
# --------------------------------------------------------------------------------------------

class _MobileVitV2Block(nn.Module):
    """timm MobileVitV2Block: unfold by a 6-D reshape + permute, 1x1 convs on patches, fold back."""

    def __init__(self, c=8, p=2):
        super().__init__()
        self.p = p
        self.local = nn.Conv2d(3, c, 3, padding=1)
        self.mix = nn.Conv2d(c, c, 1)
        self.proj = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.local(x)
        b, c, h, w = x.shape
        nh, nw, p = h // self.p, w // self.p, self.p
        x = x.reshape(b, c, nh, p, nw, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c, p * p, nh * nw)
        x = self.mix(x).relu()
        x = x.reshape(b, c, p, p, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(b, c, h, w)
        return self.proj(x)


def test_mobilevit_v2_unfold_fold_6d(tmp_path):
    artifact, err = _check_parity(_MobileVitV2Block(), (1, 3, 8, 12), tmp_path)
    assert artifact.meta["traced_rewrites"][0].startswith("layout-chain x")
    assert err < 1e-5


class _Attention(nn.Module):
    """timm's ViT Attention: qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _MobileVitBlock(nn.Module):
    """timm MobileVitBlock: patches (B * P) become the batch of a transformer, then fold back."""

    def __init__(self, c=16, p=2):
        super().__init__()
        self.p = p
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.attn = _Attention(c)
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        p, nh, nw = self.p, h // self.p, w // self.p
        x = x.reshape(b * c * nh, p, nw, p).transpose(1, 2)
        x = x.reshape(b, c, nh * nw, p * p).transpose(1, 3).reshape(b * p * p, nh * nw, c)
        x = x + self.attn(x)
        x = x.contiguous().view(b, p * p, nh * nw, -1).transpose(1, 3).reshape(b * c * nh, nw, p, p)
        x = x.transpose(1, 2).reshape(b, c, nh * p, nw * p)
        return self.out(x)


def test_mobilevit_v1_patch_batch_attention_unbind(tmp_path):
    _, err = _check_parity(_MobileVitBlock(), (1, 3, 8, 8), tmp_path)
    assert err < 1e-5


class _EdgeNextBlock(nn.Module):
    """timm EdgeNeXt: Res2Net-like chunk of 28 channels in 3 (uneven: 10, 10, 8), then cross-covariance
    attention: unbind of qkv, F.normalize over the last dim, a per-head temperature."""

    def __init__(self, c=24, heads=3):
        super().__init__()
        self.heads = heads
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.narrow = nn.Conv2d(28, c, 1)
        self.qkv = nn.Linear(c, c * 3)
        self.temperature = nn.Parameter(torch.rand(heads, 1, 1) + 0.5)
        self.proj = nn.Linear(c, 8)

    def forward(self, x):
        a, b, c = x.chunk(3, 1)
        x = self.narrow(torch.cat([self.dw(a), b + a, c], 1))
        bsz, ch, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(x).reshape(bsz, h * w, 3, self.heads, ch // self.heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = (attn.softmax(-1) @ v).permute(0, 3, 1, 2).reshape(bsz, h * w, ch)
        return self.proj(x)


def test_edgenext_xca_unbind_normalize_uneven_chunk(tmp_path):
    _, err = _check_parity(_EdgeNextBlock(), (1, 28, 4, 4), tmp_path)
    assert err < 1e-5


class _LevitSubsample(nn.Module):
    """timm LeViT: LinearNorm (BatchNorm1d on flatten(0, 1)) and the strided subsampling x[:, ::2, ::2]
    of a 7 x 7 grid (odd: the last row and column are kept)."""

    def __init__(self, c=16, r=7):
        super().__init__()
        self.r = r
        self.linear = nn.Linear(c, 32)
        self.bn = nn.BatchNorm1d(32)
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2.0)
        self.out = nn.Linear(32, 8)

    def forward(self, x):
        x = self.linear(x)
        x = self.bn(x.flatten(0, 1)).reshape_as(x)
        b, n, c = x.shape
        x = x.view(b, self.r, self.r, c)[:, ::2, ::2].reshape(b, -1, c)
        return self.out(x)


def test_levit_strided_slice_and_batchnorm_on_rows(tmp_path):
    torch.manual_seed(0)
    _, err = _check_parity(_LevitSubsample(), (1, 49, 16), tmp_path)
    assert err < 1e-5


class _LinearNorm(nn.Module):
    """timm LeViT's LinearNorm on its own: ncnn reads past the (N, C) rows without the rewrite."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 32)
        self.bn = nn.BatchNorm1d(32)
        self.bn.running_mean.normal_()
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = self.linear(x)
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def test_batchnorm1d_on_flattened_rows(tmp_path):
    torch.manual_seed(0)
    _, err = _check_parity(_LinearNorm(), (1, 49, 16), tmp_path)
    assert err < 1e-5


class _MaskedSdpa(nn.Module):
    """transformers' SDPA attention: a bool mask (True = attend) from the int attention mask."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))

    def forward(self, x, attention_mask):
        b, n, c = x.shape
        keep = attention_mask.to(torch.bool)[:, None, None, :].expand(b, 1, n, n)
        q, k, v = (f(x).view(b, n, self.heads, c // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return y.transpose(1, 2).reshape(b, n, c)


def test_sdpa_bool_padding_mask_is_additive(tmp_path):
    torch.manual_seed(0)
    module = _MaskedSdpa().eval()
    n = 12
    artifact, run = _export(module, (torch.randn(1, n, 16), torch.ones(1, n, dtype=torch.int64)), tmp_path,
                            ["x", "attention_mask"])
    assert any(e.startswith("SDPA ") for e in artifact.meta["legalised_layers"])
    rng = np.random.default_rng(0)
    for real in (n, 9, 4, 1):  # tokens past `real` are padding
        x = rng.standard_normal((1, n, 16)).astype(np.float32)
        mask = (np.arange(n) < real).astype(np.int64)[None]
        with torch.no_grad():
            ref = module(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        got = run([x, mask])[0]
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), f"{real} real tokens"


class _Trigram(nn.Module):
    """transformers MobileBERT's trigram embedding: the embeddings shifted by one token each way (a
    constant pad that also names the batch dim), concatenated with them."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.proj = nn.Linear(24, 8)

    def forward(self, ids):
        e = self.embed(ids)
        x = torch.cat([F.pad(e[:, 1:], [0, 0, 0, 1, 0, 0]), e, F.pad(e[:, :-1], [0, 0, 1, 0, 0, 0])], dim=2)
        return self.proj(x)


def test_mobilebert_trigram_pad_concat(tmp_path):
    torch.manual_seed(0)
    module = _Trigram().eval()
    _, run = _export(module, (torch.randint(0, 100, (1, 16)),), tmp_path, ["input_ids"])
    for seed in range(N_SAMPLES):
        ids = np.random.default_rng(seed).integers(0, 100, (1, 16))
        with torch.no_grad():
            ref = module(torch.from_numpy(ids)).numpy()
        assert_close(run([ids])[0], ref)


class _Unexpressible(nn.Module):
    """A 5-D tensor that something other than a layout op reads: no <= 4-D form."""

    def forward(self, x):
        return x.reshape(1, 2, 3, 4, 5).cumsum(2).reshape(1, 120)


def test_layout_chain_ncnn_cannot_express_is_refused(tmp_path):
    spec = ModelSpec("u", (TensorSpec("x", (1, 120)),), (TensorSpec("y", (1, 120)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_Unexpressible().eval(), spec, None, tmp_path, (torch.randn(1, 120),))
    assert (err.value.code, err.value.target, err.value.op) == ("E-OP-UNSUPPORTED", "ncnn", "Tensor.reshape")
    assert "4 dims" in str(err.value)
    assert list(tmp_path.iterdir()) == []
