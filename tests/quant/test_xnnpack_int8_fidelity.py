"""INT8 fidelity of the XNNPACK-quantizer targets (executorch, onnx) and the reference's own noise floor.

EfficientFormerV2-S0 and MobileViTv2-050 (model-coverage bench) miss their fidelity bounds on
executorch and onnx, yet no op of theirs computes differently from the quantized reference: the
runtime's and the reference's rounding decisions diverge at values on a rounding boundary, and the
flips cascade with depth (edgekit.quant.noise, module doc). Here: MobileViTv2's linear-attention
pattern (GroupNorm, qkv split, softmax over the patches, broadcast mul, sum, relu(v) * context)
reproduces its reference within one output step on both runtimes; the reference's own noise floor
(edgekit.quant.noise) is checked on the quantized program directly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from edgekit.data import load_samples
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

import without_vnni

pytest.importorskip("executorch")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow  # one PT2E quantization, an XNNPACK lowering and an onnx export (~40 s)


class LinearAttention(nn.Module):
    """timm MobileViTv2's LinearSelfAttention on unfolded 2x2 patches, twice, with GroupNorm(1)."""

    def __init__(self, c: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.norm = nn.GroupNorm(1, c)
        self.qkv, self.out = nn.Conv2d(c, 1 + 2 * c, 1), nn.Conv2d(c, c, 1)
        self.head = nn.Linear(c, 10)
        self.d = c

    def forward(self, image):
        x = F.silu(self.stem(image))
        b, c, h, w = x.shape
        p = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c, 4, -1)  # (B, C, P, N)
        for _ in range(2):
            q, k, v = self.qkv(self.norm(p)).split([1, self.d, self.d], dim=1)
            context = (k * F.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
            p = p + self.out(F.relu(v) * context.expand_as(v))
        return self.head(p.mean((2, 3)))


@pytest.fixture(scope="module")
def photos(calib_root):
    spec = ModelSpec("photos", (TensorSpec("image", (1, 3, 112, 112), "float32", "NCHW"),), (TensorSpec("out", (1,)),),
                     ImagePreprocess(128, 112))
    return np.concatenate([s[0] for s in load_samples(calib_root / "images", spec, limit=16).samples])


def test_reference_noise_floor(photos):
    """Twins of a small model's reference (edgekit.quant.noise) stay within an output step; the
    measurement is deterministic; with 5% op errors (many rounding flips) they move by several steps."""
    from edgekit.converters.executorch import CONVERTER
    from edgekit.quant import QuantRecipe
    from edgekit.quant.noise import reference_noise
    from edgekit.quant.pt2e import quantize

    samples = [(photos[i:i + 1],) for i in range(8)]
    q = quantize(LinearAttention().eval(), (torch.from_numpy(photos[:1]),), samples, QuantRecipe(),
                 CONVERTER.pt2e_quantizer(), fold_quantize=True)
    noise = reference_noise(q.module, samples[:4])
    assert noise == reference_noise(q.module, samples[:4])
    assert noise["max_abs"] <= 1.001 * q.output_scales[0] and noise["cosine_min"] > 0.999, noise
    coarse = reference_noise(q.module, samples[:4], rel=0.05)  # an op error of 5%: many rounding flips
    assert coarse["max_abs"] > 4 * q.output_scales[0], coarse


def test_linear_attention_reproduces_its_reference(photos, tmp_path):
    bundle = edgekit.export(LinearAttention().eval(), (torch.from_numpy(photos[:1]),), targets=["executorch", "onnx"],
                            data=photos, quant="int8", samples=8, out=tmp_path / "b")
    for target in ("executorch", "onnx"):
        r = bundle.results[target]
        assert r.status == "pass", (target, r.status, r.error, r.failures)
        assert r.raw["metrics"]["max_steps"] <= 1.0 + 1e-3, (target, r.raw["metrics"])
        assert "reference_noise" not in r.raw  # within the fixed bound: no twin is run
    layers = bundle.results["onnx"].raw["per_layer"]  # each layer cut out and replayed on the reference's input
    assert len(layers) >= 20 and all(r["max_steps"] <= 1.0 for r in layers), [r for r in layers if r["max_steps"] > 1]
    # executorch: each layer lowered and replayed; the shared conv's second call flipped 42% of its
    # values when both calls shared one bias tensor (XNNPACK quantized it at the first call's scale)
    layers = bundle.results["executorch"].raw["per_layer"]
    assert len(layers) >= 20 and all(r["max_steps"] <= 1.0 and r["mean_steps"] < 0.05 for r in layers), \
        [r for r in layers if r["max_steps"] > 1 or r["mean_steps"] >= 0.05]
    # every call of the shared convs is quantized (pt2e._untie_shared_params): the file has an integer
    # conv per call, with weights edgekit quantized; before, onnxruntime quantized the second call's
    # float weights by itself, and on an x86 CPU without VNNI that conv was 63 steps off
    import onnx

    meta = next(a for a in bundle.manifest["artifacts"] if a["target"] == "onnx")["meta"]
    model = onnx.load(str(bundle.path / bundle.results["onnx"].file))
    inits = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5 and not [n.name for n in convs if n.input[1] in inits]  # each weight through a DequantizeLinear
    if without_vnni.available():
        from edgekit.quant.reference import load_quantized_reference

        ref = load_quantized_reference(bundle.path / meta["reference"]).module()
        x = photos[8:12]
        want = np.stack([ref(torch.from_numpy(x[i:i + 1]))[0].detach().numpy().reshape(-1) for i in range(len(x))])
        got = np.stack([without_vnni.run_onnx(model, {"image": x[i:i + 1]}, tmp_path)[0].reshape(-1) for i in range(len(x))])
        assert np.abs(got - want).max() <= 1.001 * meta["output_scales"][0], np.abs(got - want).max() / meta["output_scales"][0]
