"""INT8 on any model (issue 13): the op families mobile models use quantize on every INT8 target, or
are kept float automatically with a note, and each exported file computes its own quantized
reference (fidelity within the step bound) on real photos. Two small models cover the families:
a mobile CNN block (depthwise and grouped conv, hardswish, squeeze-excitation with a hardsigmoid gate,
SiLU, pad, nearest/bilinear resize, concat, average and adaptive pooling, broadcasting add/mul) and a
small attention block (linear on 3-D inputs, LayerNorm, softmax attention matmuls, GELU); a text
encoder adds token and position embeddings on int64 inputs (token ids and an attention mask), read
from the shipped sentences."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec
from test_ptl_int8_reach import TextEncoder as TextOps  # token + position embeddings, LayerNorm, GELU MLP

INT8_TARGETS = ["tflite", "executorch", "onnx", "ptl", "ncnn", "mnn", "openvino"]


class MobileOps(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 2, 1)
        self.dw = nn.Conv2d(16, 16, 3, 1, 1, groups=16)
        self.grouped = nn.Conv2d(16, 16, 3, 1, 1, groups=4)
        self.se1, self.se2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.pw = nn.Conv2d(32, 24, 1)
        self.head = nn.Linear(24, 10)

    def forward(self, image):
        x = F.hardswish(self.stem(image))
        y = F.hardswish(self.dw(x))
        gate = F.hardsigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(y, 1)))))
        y = y * gate  # squeeze-excitation: a broadcast multiply
        z = F.silu(self.grouped(F.pad(x, (1, 1, 1, 1))))[:, :, 1:-1, 1:-1]
        z = F.interpolate(F.avg_pool2d(z, 2), scale_factor=2, mode="nearest")
        x = torch.cat([x + y, z], dim=1)
        x = F.relu(self.pw(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class AttentionOps(nn.Module):
    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)
        self.heads = heads

    def forward(self, image):
        x = self.patch(image).flatten(2).transpose(1, 2)  # (1, 16, dim): linear on 3-D inputs
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


SPEC = dict(inputs=(TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),), outputs=(TensorSpec("logits", (1, 10)),),
            preprocess=ImagePreprocess(36, 32), task="classification")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Each model as a file.py:factory with a spec that reads the shipped photos."""
    root = tmp_path_factory.mktemp("ops")
    (root / "ops.py").write_text(
        "import torch\nfrom test_int8_op_families import MobileOps, AttentionOps, SPEC\nfrom edgekit.spec import ModelSpec\n"
        "def make(cls, name):\n    torch.manual_seed(0)\n    m = cls().eval()\n"
        "    return m, (torch.randn(1, 3, 32, 32),), ModelSpec(name, **SPEC)\n"
        "def mobile():\n    return make(MobileOps, 'mobile_ops')\n"
        "def attention():\n    return make(AttentionOps, 'attention_ops')\n"
        "def text():\n    from test_int8_op_families import TextOps, text_spec\n    torch.manual_seed(0)\n"
        "    ids = torch.zeros(1, 32, dtype=torch.int64)\n"
        "    return TextOps().eval(), (ids, torch.ones_like(ids)), text_spec()\n")
    return root


def text_spec():
    from edgekit.models.minilm import model_dir
    from edgekit.spec import TextPreprocess

    return ModelSpec("text_ops", (TensorSpec("input_ids", (1, 32), "int64"), TensorSpec("attention_mask", (1, 32), "int64")),
                     (TensorSpec("embedding", (1, 32)),), TextPreprocess(str(model_dir()), 32), "embedding")


@pytest.mark.parametrize("factory", ["mobile", "attention", "text"])
@pytest.mark.parametrize("target", INT8_TARGETS)
def test_op_family_quantizes_on_every_int8_target(model_files, calib_root, tmp_path, factory, target):
    bundle = edgekit.export(f"{model_files / 'ops.py'}:{factory}", targets=[target], quant="int8", samples=8,
                            data=calib_root / ("text" if factory == "text" else "images"), out=tmp_path / "b")
    r = bundle.results[target]
    assert r.status in ("pass", "unsupported"), (r.status, r.error, r.failures)
    if r.status == "unsupported":  # allowed only with the operator and the way out named
        assert r.error["op"] and r.error["fix"]
        pytest.skip(f"{target}: {r.error['message']}")
    per_layer = r.raw.get("per_layer") or []
    assert not [layer for layer in per_layer if layer.get("flagged")], "no false alarm from the per-layer view"
    cost = r.raw["compression"]["embedding" if factory == "text" else "logits"]
    assert cost["sqnr_db"] > 8, cost  # INT8 of a real model, not noise
