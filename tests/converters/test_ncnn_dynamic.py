"""ncnn with dynamic shapes (FP32), end to end through edgekit.export: a CNN with a dynamic image height
and width, attention blocks with a dynamic sequence length, and token ids + mask sharing one, each pass
at every probed size (min, middle, max: edgekit.size_probes), again under edgekit.verify and at an
unprobed size through Bundle.run. Refused with E-DYNAMIC-UNSUPPORTED (reported ``unsupported``): a
dynamic batch (an ncnn Mat has no batch axis) and a model that needs a rewrite written at the traced
size (layout.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.export import Dim

import edgekit
from edgekit.isolate import run_artifact
from edgekit.models.tiny import TinyEncoderLayer

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn import CONVERTER  # noqa: E402

MAX_ABS = 1e-4  # measured: <= ~1e-6 at every size


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class TinyAttention(nn.Module):
    """(1, T, C) -> (1, T, C): two-head self-attention (pnnx fuses it), a channel shuffle and an MLP,
    then edgekit's tiny encoder layer (a fused qkv reshaped to 5-D and unbound: legalised)."""

    def __init__(self, c: int = 16, heads: int = 2):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(c, c) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.ReLU(), nn.Linear(2 * c, c))
        self.heads = heads
        self.encoder = TinyEncoderLayer(c, 2, 2 * c)

    def forward(self, x):
        b, t, c = x.shape
        split = lambda y: y.reshape(b, t, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) * (c // self.heads) ** -0.5, dim=-1)
        y = x + self.o((att @ v).transpose(1, 2).reshape(b, t, c))
        y = y.reshape(b, t, 2, c // 2).transpose(2, 3).reshape(b, t, c)  # a channel shuffle: reshapes by T
        return self.encoder(y + self.mlp(y), torch.zeros(1, 1, 1, 1))


class TinyTokens(nn.Module):
    """(input_ids, attention_mask) of length T -> 4 logits: embedding + the first T learned positions,
    masked self-attention, masked mean. ncnn crops the positions to T by the ids' shape."""

    def __init__(self, vocab: int = 100, c: int = 16, max_len: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, c)
        self.pos = nn.Parameter(0.1 * torch.randn(1, max_len, c))
        self.q, self.k, self.v = (nn.Linear(c, c) for _ in range(3))
        self.cls = nn.Linear(c, 4)

    def forward(self, input_ids, attention_mask):
        x = self.embed(input_ids) + self.pos[:, :input_ids.shape[1]]
        m = attention_mask.to(x.dtype)
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) * 0.25 + ((1.0 - m) * -1e4)[:, None, :], dim=-1)
        x = x + att @ self.v(x)
        return self.cls((x * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0))


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


def _dynamic_details(out, sizes_expected: list[dict]) -> list[dict]:
    report = json.loads((out / "report.json").read_text())
    entry = report["targets"]["ncnn"]
    assert entry["status"] == "pass", entry
    details = entry["dynamic"]
    rows = details["sizes"]
    assert [r["sizes"] for r in rows] == sizes_expected
    for r in rows:
        assert r["status"] == "pass" and r["max_abs"] < MAX_ABS, r
    assert not details["failures"] and not details["errors"]
    return rows


def _run(bundle, x: np.ndarray):
    """The bundle's ncnn artifact on one sample of any shape, in its confined subprocess, past
    Bundle.run's own shape check (to reach the runner's), -> (outputs, error)."""
    entry = bundle.manifest["artifacts"][0]
    art = {**entry, "files": [f["path"] for f in entry["files"]]}
    res = run_artifact("ncnn", art, bundle.path, [x[None]], timeout_s=120)
    return (None if res.outputs is None else [o[0] for o in res.outputs]), res.error


def test_cnn_dynamic_height_and_width(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4, 1, 3, 32, 32)).astype(np.float32)
    dims = {"x": {2: Dim("h", min=1, max=4) * 16, 3: Dim("w", min=1, max=4) * 16}}
    bundle = edgekit.export(_model(TinyCNN), torch.zeros(1, 3, 32, 32), targets=["ncnn"], data=data,
                            dynamic_shapes=dims, out=tmp_path / "b")
    assert bundle.passed and bundle.results["ncnn"].status == "pass"
    _dynamic_details(tmp_path / "b", [{"h": 16, "w": 16}, {"h": 32, "w": 32}, {"h": 64, "w": 64}])
    art = bundle.manifest["artifacts"][0]
    meta = art["meta"]
    assert [d["name"] for d in meta["dynamic"]] == ["h", "w"] and meta["output_dynamic_axes"] == [[]]
    again = edgekit.verify(bundle.path)  # from the manifest: the same probes, the same runner
    assert again.passed and [r["status"] for r in again.report["targets"]["ncnn"]["dynamic"]["sizes"]] == ["pass"] * 3
    # the bundle runs at a size in the range that verification did not probe, and refuses one outside it
    x = rng.standard_normal((1, 3, 48, 16)).astype(np.float32)
    with torch.no_grad():
        want = _model(TinyCNN)(torch.from_numpy(x)).numpy()
    (got,) = bundle.run("ncnn", x)
    assert got.shape == want.shape and np.abs(got - want).max() < MAX_ABS
    _, err = _run(bundle, rng.standard_normal((1, 3, 40, 32)).astype(np.float32))  # 40: not a multiple of 16
    assert err["code"] == "E-DATA-SHAPE" and "16..64" in err["message"]


def test_attention_dynamic_sequence_length(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((3, 1, 8, 16)).astype(np.float32)
    bundle = edgekit.export(_model(TinyAttention), torch.zeros(1, 8, 16), targets=["ncnn"], data=data,
                            dynamic_shapes=("seq:x.1=1..12",), out=tmp_path / "b")
    assert bundle.passed, bundle
    _dynamic_details(tmp_path / "b", [{"seq": 1}, {"seq": 6}, {"seq": 12}])
    meta = bundle.manifest["artifacts"][0]["meta"]
    assert meta["output_dynamic_axes"] == [[1]]  # (1, T, C): T follows the input's
    assert [e.split()[0] for e in meta["legalised_layers"]] == ["torch.unbind"]  # its Reshapes: expressions of T
    # pnnx wrote sizes that follow T as expressions, not the traced T: Reshape 6="...", Gemm 7=0 (M from the input)
    layers = [ln.split() for ln in (bundle.path / bundle.manifest["artifacts"][0]["path"]).read_text().splitlines()[2:]]
    assert all("7=0" in ln for ln in layers if ln[0] == "Gemm")
    assert any(p.startswith("6=") for ln in layers if ln[0] == "Reshape" for p in ln[6:])
    x = rng.standard_normal((1, 5, 16)).astype(np.float32)
    with torch.no_grad():
        want = _model(TinyAttention)(torch.from_numpy(x)).numpy()
    (got,) = bundle.run("ncnn", x)
    assert got.shape == (1, 5, 16) and np.abs(got - want).max() < MAX_ABS


def test_token_ids_and_mask_share_a_dynamic_length(tmp_path):
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 100, (3, 1, 8))
    mask = np.ones((3, 1, 8), np.int64)
    mask[1, 0, 5:] = 0
    ids[mask == 0] = 0
    data = [(ids[i], mask[i]) for i in range(3)]
    example = (torch.from_numpy(ids[0]), torch.from_numpy(mask[0]))
    bundle = edgekit.export(_model(TinyTokens), example, targets=["ncnn"], data=data,
                            dynamic_shapes=("seq:input_ids.1,attention_mask.1=2..16",), out=tmp_path / "b")
    assert bundle.passed, bundle
    _dynamic_details(tmp_path / "b", [{"seq": 2}, {"seq": 9}, {"seq": 16}])
    meta = bundle.manifest["artifacts"][0]["meta"]
    # the ids feed the Embed layer as int32 bit patterns; the Crop that reads their shape does not count
    assert meta["input_feed"] == ["int32", "float32"] and meta["output_dynamic_axes"] == [[]]


def test_dynamic_batch_is_refused(tmp_path):
    data = np.random.default_rng(2).standard_normal((2, 1, 3, 32, 32)).astype(np.float32)
    bundle = edgekit.export(_model(TinyCNN), torch.zeros(1, 3, 32, 32), targets=["ncnn"], data=data,
                            dynamic_shapes="batch=1..4", out=tmp_path / "b")
    assert not bundle.passed
    res = bundle.results["ncnn"]
    assert res.status == "unsupported"  # as an op ncnn cannot take: `--targets all` goes on without it
    report = json.loads((tmp_path / "b" / "report.json").read_text())["targets"]["ncnn"]
    assert report["error"]["code"] == "E-DYNAMIC-UNSUPPORTED" and "one sample at a time" in report["error"]["message"]


def test_capability_row_says_what_is_dynamic():
    assert "batch" in CONVERTER.info.dynamic and "sequence" in CONVERTER.info.dynamic


class FusedQkvUnbind(nn.Module):
    """timm's attention: a 5-D qkv ``reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)``, which
    ncnn takes only through layout.py's rewrite (at most 4-D chains written at the traced size)."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.qkv, self.o = nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, 2, c // 2).permute(2, 0, 3, 1, 4).unbind(0)
        y = (torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v).transpose(1, 2).reshape(b, t, c)
        return self.o(y)


def test_a_rewrite_at_the_traced_size_is_refused(tmp_path):
    data = np.random.default_rng(4).standard_normal((2, 1, 8, 16)).astype(np.float32)
    bundle = edgekit.export(_model(FusedQkvUnbind), torch.zeros(1, 8, 16), targets=["ncnn"], data=data,
                            dynamic_shapes=("seq:x.1=1..12",), out=tmp_path / "b")
    entry = json.loads((tmp_path / "b" / "report.json").read_text())["targets"]["ncnn"]
    assert entry["status"] == "unsupported" and entry["error"]["code"] == "E-DYNAMIC-UNSUPPORTED"
    assert "traced size" in entry["error"]["message"] and not bundle.passed
    assert "unbind(0)" in entry["error"]["source"]  # the model line, as for an op ncnn cannot take


@pytest.mark.parametrize("got, fixed, free, want", [
    ((5,), (1, 5), [], (1, 5)),  # fixed: the spec's shape
    ((7, 16), (1, 8, 16), [1], (1, 7, 16)),  # the Mat without the batch axis
    ((1, 16), (1, 8, 16), [1], (1, 1, 16)),  # T = 1
    ((16,), (1, 8, 16), [1], (1, 1, 16)),  # T = 1 and ncnn dropped that axis: from the element count
    ((3, 20, 30), (1, 3, 32, 32), [2, 3], (1, 3, 20, 30)),
    ((20, 30), (1, 1, 32, 32), [2, 3], (1, 1, 20, 30)),  # one channel dropped by ncnn: matched without the 1s
    ((6,), (1, 5), [], None),  # wrong size
    ((3, 20, 30), (1, 4, 32, 32), [2, 3], None),  # a fixed axis differs
])
def test_output_shape_from_the_mat(got, fixed, free, want):
    from edgekit.converters.ncnn.dynamic_shapes import output_shape as _output_shape

    assert _output_shape(got, fixed, free) == want
