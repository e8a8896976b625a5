"""INT8 on any model, target ptl (issue 13): the code patterns that kept the model-coverage bench's
timm/transformers models from a verified INT8 .ptl, each in a small hand-made module, exported for
real (FX PTQ, TorchScript, lite interpreter under qnnpack) and verified on the shipped photos or
sentences against the quantized reference, end to end and layer by layer.

- functional ``F.linear`` inside an nn.Linear subclass (timm's Linear) and ``x.sigmoid()`` in a
  module's forward (timm's Sigmoid gate): simulated, quantized, within 1 step per layer;
- a ViT block: ``forward(x, attn_mask=None, is_causal=False)`` that hands the optional mask on to
  ``F.scaled_dot_product_attention`` by keyword, LayerNorm, and a scale computed from a shape;
- a text encoder (int64 token ids and mask): embeddings in float, LayerNorm and linears in INT8;
- ``keep_float`` of a LayerNorm really runs it in float (convert_fx used to lower it anyway);
- a function with no simulation (``F.elu``) is kept float automatically, said in the notes;
- a model torch.fx cannot trace is ``unsupported`` naming the model's own line and the way out;
- ``self.proj.weight.device`` / ``.dtype`` read in forward (EdgeNeXt's positional encoding) become
  literals: left as graph nodes they read an attribute of the quantized conv's ``weight`` method.
- a module that caches in its forward (timm's eval-mode attention-bias cache) is left as it was by
  every trace, so the next trace does not read a node of the previous graph.
"""
from __future__ import annotations

import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from edgekit.data import load_samples
from edgekit.spec import ModelSpec, TensorSpec, TextPreprocess
from photos import photo_array

SIZE = 32


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 24)


def _ptl_int8(model, example, data, out, **kwargs):
    torch.manual_seed(0)
    bundle = edgekit.export(model.eval(), example, targets=["ptl"], data=data, quant="int8", samples=8, out=out, **kwargs)
    return bundle.results["ptl"]


def _assert_verified(r, max_layer_steps=1.0):
    """Passed end to end, and every layer computes its quantized reference (no false alarm)."""
    assert r.status == "pass", (r.status, r.error, r.failures)
    rows = r.raw.get("per_layer") or []
    assert rows and not [row for row in rows if row["flagged"]], rows
    assert all(row["max_steps"] <= max_layer_steps for row in rows), rows
    assert r.raw["compression"][next(iter(r.raw["compression"]))]["sqnr_db"] > 8  # INT8, not noise
    return rows


def _ops_in_ptl(bundle_dir, r) -> str:
    """The TorchScript code stored in the .ptl (what the lite interpreter runs)."""
    with zipfile.ZipFile(bundle_dir / r.file) as z:
        return "\n".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".py"))


class TimmLinear(nn.Linear):
    """timm.layers.Linear: an nn.Linear whose forward calls F.linear (FX traces through it)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class TimmSigmoid(nn.Module):
    """timm.layers.activations.Sigmoid: a tensor method call, not torch.sigmoid."""

    def forward(self, x):
        return x.sigmoid()


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.se = nn.Conv2d(16, 16, 1)
        self.gate = TimmSigmoid()
        self.fc = TimmLinear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x * self.gate(self.se(x.mean((2, 3), keepdim=True)))
        return self.fc(x.mean((2, 3)))


def test_functional_linear_and_sigmoid_method_quantize(photos, tmp_path):
    r = _ptl_int8(GatedNet(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b")
    rows = _assert_verified(r)
    by_op = {row["op"]: row for row in rows}
    assert by_op["quantized::linear"]["module"] == "fc"  # the functional linear runs the int8 kernel
    assert "aten::sigmoid" in by_op and "quantized::mul" in by_op  # the gate on quantized tensors
    assert not any("kept in float automatically" in n for n in r.notes), r.notes


class Attention(nn.Module):
    """timm's Attention (fused path): qkv linear, SDPA called with keyword arguments."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.qkv, self.proj, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads

    def forward(self, x, attn_mask=None):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        q = q * (c // self.heads) ** -0.5  # a scale computed from a shape: a Python number, not a tensor
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class TinyViT(nn.Module):
    """timm's VisionTransformer.forward(x, attn_mask=None, is_causal=False)."""

    def __init__(self, dim=32):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.fc1, self.fc2, self.head = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, 10)

    def forward(self, x, attn_mask=None, is_causal: bool = False):
        x = self.patch(x).flatten(2).transpose(1, 2)
        if attn_mask is not None or is_causal:
            x = x + self.attn(self.norm1(x), attn_mask=attn_mask)
        else:
            x = x + self.attn(self.norm1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


def test_vit_block_with_optional_mask_and_sdpa_keywords(photos, tmp_path):
    r = _ptl_int8(TinyViT(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b")
    rows = _assert_verified(r)
    ops = [row["op"] for row in rows]
    assert ops.count("quantized::layer_norm") == 2 and ops.count("quantized::linear") == 5, ops


def test_keep_float_layernorm_runs_in_float(photos, tmp_path):
    """convert_fx lowers dequantize -> LayerNorm -> quantize to the quantized module whatever the
    qconfig: a LayerNorm the recipe keeps float must not be quantized in the file."""
    r = _ptl_int8(TinyViT(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", keep_float=["norm1", "norm2"])
    rows = _assert_verified(r)
    assert "quantized::layer_norm" not in {row["op"] for row in rows}
    assert "quantized.layer_norm" not in _ops_in_ptl(tmp_path / "b", r)
    assert "quantized.linear" in _ops_in_ptl(tmp_path / "b", r)


class EluNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3, 2, 1), nn.Linear(16, 10)

    def forward(self, x):
        y = F.elu(self.conv(x))
        return self.fc((y + y.tanh()).mean((2, 3)))


def test_function_without_simulation_is_kept_float_automatically(photos, tmp_path):
    r = _ptl_int8(EluNet(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b")
    _assert_verified(r)
    assert any(n.startswith("quantization: elu kept in float automatically") for n in r.notes), r.notes
    code = _ops_in_ptl(tmp_path / "b", r)
    assert "quantized.elu" not in code and "elu(" in code and "quantized.conv2d" in code


class TextEncoder(nn.Module):
    def __init__(self, vocab=30522, dim=32, length=32):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(length, dim)
        self.register_buffer("positions", torch.arange(length)[None])
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 64), nn.Linear(64, dim)

    def forward(self, input_ids, attention_mask):
        x = self.norm(self.tok(input_ids) + self.pos(self.positions))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        mask = attention_mask.unsqueeze(-1).float()
        return (x * mask).sum(1) / mask.sum(1)


def test_text_encoder_with_int64_inputs(calib_root, tmp_path):
    from edgekit.models.minilm import model_dir

    spec = ModelSpec("sentences", (TensorSpec("input_ids", (1, 32), "int64"), TensorSpec("attention_mask", (1, 32), "int64")),
                     (TensorSpec("out", (1,)),), TextPreprocess(str(model_dir()), 32), "embedding")
    samples = [tuple(s) for s in load_samples(calib_root / "text", spec, limit=24).samples]
    r = _ptl_int8(TextEncoder(), tuple(torch.from_numpy(a) for a in samples[0]), samples, tmp_path / "b", task="embedding")
    rows = _assert_verified(r)
    assert [row["op"] for row in rows].count("quantized::linear") == 2
    code = _ops_in_ptl(tmp_path / "b", r)
    assert "embedding(" in code and "quantized.layer_norm" in code  # embeddings float, the rest INT8


class SlicesABuffer(nn.Module):
    """HF BERT's embeddings (a buffer sliced by a traced size) and timm MobileViT's ``if new_h != H``
    (a branch on a shape): torch.fx alone cannot follow either; traced with the example's shapes fixed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("offsets", torch.linspace(0, 1, 64))
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.shape[-1] != x.shape[-2]:
            x = F.interpolate(x, size=(x.shape[-2], x.shape[-2]))
        return F.relu(self.conv(x + self.offsets[: x.size(-1)]))


def test_model_reading_shapes_quantizes_with_its_shapes_fixed(photos, tmp_path):
    r = _ptl_int8(SlicesABuffer(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", task="regression")
    _assert_verified(r)
    assert any("shapes fixed" in n for n in r.raw["notes"]), r.raw["notes"]


class BranchesOnValues(nn.Module):
    """A decision on tensor values: no one graph is right for every input, so no tracer may fix it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:
            y = -y
        return y


def test_model_branching_on_values_is_unsupported_naming_its_line(photos):
    """torch.export refuses this model before any target (the pipeline's capture), so the ptl step is
    called directly: with or without fixed shapes, the tracer must stop at the user's line."""
    from edgekit.converters.ptl.fx import check_traceable, with_fixed_shapes
    from edgekit.errors import UnsupportedOpError

    model, shaped = with_fixed_shapes(BranchesOnValues().eval(), (torch.from_numpy(photos[:1]),))
    assert not shaped
    with pytest.raises(UnsupportedOpError) as err:
        check_traceable(model)
    assert err.value.code == "E-OP-UNSUPPORTED" and "torch.fx symbolic tracing" in err.value.op
    assert "test_ptl_int8_reach.py" in err.value.what and "if y.mean() > 0:" in err.value.what
    assert "--quant dynamic" in err.value.fix


class DictOutputs(GatedNet):
    """A model returning a dict (as transformers models do): edgekit wraps it in FlatOutputs, whose
    forward(*args) torch.fx cannot unpack; ptl INT8 gives the wrapper a fixed number of arguments."""

    def forward(self, x):
        feat = F.relu(self.conv(x)).mean((2, 3))
        return {"logits": self.fc(feat), "features": feat}


def test_model_returning_a_dict_quantizes(photos, tmp_path):
    r = _ptl_int8(DictOutputs(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", task="regression")
    assert r.status == "pass", (r.status, r.error, r.failures)
    rows = r.raw.get("per_layer") or []
    assert rows and all(row["max_steps"] <= 1.0 and not row["flagged"] for row in rows), rows
    assert {row["op"] for row in rows} >= {"quantized::conv2d_relu", "quantized::linear"}


class ConvPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, image):
        return self.head(self.body(image).mean((2, 3)))


def test_recipe_levers_are_applied_or_refused_never_ignored(photos, tmp_path):
    """--equalize is applied on ptl (said in the notes, the file verified); --bias-correction, which
    the ptl path does not implement, is a coded error instead of a silent no-op."""
    example = (torch.from_numpy(photos[:1]),)
    r = _ptl_int8(ConvPair(), example, photos, tmp_path / "cle", equalize=True)
    assert r.status == "pass", (r.status, r.error, r.failures)
    assert any("cross-layer equalization on 1 conv pairs" in n for n in r.raw["notes"]), r.raw["notes"]
    r = _ptl_int8(ConvPair(), example, photos, tmp_path / "bc", bias_correction=True)
    assert r.status == "error" and r.error["code"] == "E-TARGET-PRECISION" and "bias correction" in r.error["message"]


class BiasedAttention(nn.Module):
    """LeViT's attention in small: a learned bias table gathered by a fixed index buffer
    (``attention_biases[:, attention_bias_idxs]``, parameters alone) added to the scores, and the
    queries scaled by a Python float (``q * scale``: quantized.mul with a scalar)."""

    def __init__(self, dim: int = 16, tokens: int = 16, heads: int = 2):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, 7) * 0.1)
        idx = torch.arange(tokens)
        self.register_buffer("attention_bias_idxs", (idx[:, None] - idx[None, :]).abs().clamp(max=6), persistent=False)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1) + self.attention_biases[:, self.attention_bias_idxs]
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class BiasedAttentionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 8, 8)  # 32x32 photo -> 4x4 = 16 tokens of 16 channels
        self.attn, self.head = BiasedAttention(), nn.Linear(16, 5)

    def forward(self, image):
        x = self.stem(image).flatten(2).transpose(1, 2)
        return self.head(self.attn(x).mean(1) + 0.5)  # quantized.add with a scalar (edgenext's ``+ eps``)


def test_attention_bias_gather_and_scalar_mul_are_quantized_and_verified(photos, tmp_path):
    """timm levit_128s and efficientformerv2_s0 failed with ``KeyError: 'getitem_6'`` inside PyTorch's
    prepare_fx (the bias gather, a node of parameters alone, lost by its fuse pass); after that,
    ``quantized.mul(qx, 0.25)`` and (edgenext_xx_small) ``quantized.add(qx, 1e-6)`` had no simulation.
    The gather is evaluated once into a constant (said in the notes), the scalar multiply and add are
    simulated as the kernels compute them, and every layer is within one step."""
    torch.manual_seed(0)
    r = _ptl_int8(BiasedAttentionNet(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b")
    _assert_verified(r)
    assert any("expression(s) of parameters alone" in n for n in r.raw["notes"]), r.raw["notes"]


class CachedBiasAttention(BiasedAttention):
    """timm LeViT's and EfficientFormerV2's ``get_attention_biases``: in eval mode the gathered bias
    is cached per device on the module (cleared by train()); under torch.fx the cache keeps a Proxy."""

    def __init__(self):
        super().__init__()
        self.attention_bias_cache = {}

    def train(self, mode=True):
        super().train(mode)
        if self.attention_bias_cache:
            self.attention_bias_cache = {}
        return self

    def get_attention_biases(self, device):
        if torch.jit.is_tracing() or self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        if str(device) not in self.attention_bias_cache:
            self.attention_bias_cache[str(device)] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[str(device)]

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q * self.scale) @ k.transpose(-2, -1) + self.get_attention_biases(x.device)
        return self.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class CachedBiasAttentionNet(BiasedAttentionNet):
    def __init__(self):
        super().__init__()
        self.attn = CachedBiasAttention()


def test_module_caching_in_forward_is_traced_afresh_each_time(photos, tmp_path):
    """timm efficientformerv2_s0 (and levit_128s) crashed with E-EXPORT-FAILED ``Argument 'getitem_4' of
    Node 'add_8' does not belong to this Graph``: ptl INT8 traces the model several times (fusion sites,
    the shape check, the folding of parameter expressions, prepare_fx), and the eval-mode bias cache
    handed the second trace the first trace's node (this small model: ``KeyError: 'getitem_6'`` in
    prepare_fx). Every trace leaves the model as it was: the export verifies, and the model (here
    traced with its shapes fixed, as ncnn does) still runs eagerly, not returning a Proxy."""
    from edgekit.quant.shape_trace import trace_with_shapes

    example = (torch.from_numpy(photos[:1]),)
    r = _ptl_int8(CachedBiasAttentionNet(), example, photos, tmp_path / "b")
    _assert_verified(r)
    assert any("expression(s) of parameters alone" in n for n in r.raw["notes"]), r.raw["notes"]
    model = CachedBiasAttentionNet().eval()
    gm = trace_with_shapes(model, example)
    assert model.attn.attention_bias_cache == {}
    with torch.no_grad():
        torch.testing.assert_close(model(*example), gm(*example))


class WeightDeviceNet(nn.Module):
    """timm EdgeNeXt's PositionalEncodingFourier: ``device = self.token_projection.weight.device`` (and
    ``.dtype``) in forward, used on a tensor made from the input's shape; after convert_fx the conv's
    ``weight`` is a method, so the converted module failed and its simulation could not be generated
    ("SyntaxError: invalid syntax", edgenext_xx_small)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.proj = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        device, dtype = self.proj.weight.device, self.proj.weight.dtype
        offset = torch.ones((x.shape[0], 8, 1, 1)).to(device=device, dtype=dtype)
        x = self.proj(x + offset)
        return self.fc(x.mean((2, 3)))


def test_weight_device_and_dtype_read_in_forward(photos):
    """Quantized and simulated in process: the .ptl itself then holds ``torch.device("cpu")`` (TorchScript
    records the device of every tensor factory, as in the fp32 .ptl), which edgekit.safe_load's
    TorchScript screen does not accept yet."""
    from edgekit.converters.ptl.quant import qnnpack_engine, quantize
    from edgekit.quant.recipe import QuantRecipe

    x = torch.from_numpy(photos[:4])
    q = quantize(WeightDeviceNet().eval(), (x[:1],), [(p[None],) for p in photos[:8]], QuantRecipe(scheme="int8"))
    assert any("expression(s) of parameters alone" in n for n in q.notes), q.notes
    with qnnpack_engine(), torch.no_grad():
        got, want = q.module(x), q.simulation(x)
    assert isinstance(q.module.proj, torch.ao.nn.quantized.Conv2d) and not q.kept_float  # the conv runs INT8
    assert torch.allclose(got, want, atol=2 * q.output_scales[0]), (got - want).abs().max()


class TokensToImage(nn.Module):
    """SegFormer's decoder: tokens from a linear, permuted and reshaped to an image (a channels_last
    view with batch stride C, not C*H*W), then a bilinear resize, on which qnnpack's quantized
    kernel computed wrong values (85 steps off) until edgekit gave the resize fresh strides."""

    def __init__(self):
        super().__init__()
        self.patch, self.mlp, self.head = nn.Conv2d(3, 16, 8, 8), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        t = self.patch(x)
        b, c, h, w = t.shape
        tokens = self.mlp(t.flatten(2).transpose(1, 2))  # (1, h*w, 16)
        image = tokens.permute(0, 2, 1).reshape(b, c, h, w)
        return self.head(F.interpolate(image, size=(2 * h, 2 * w), mode="bilinear", align_corners=False))


def test_bilinear_resize_of_a_permuted_view_computes_its_reference(photos, tmp_path):
    r = _ptl_int8(TokensToImage(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", task="regression")
    _assert_verified(r)
    assert any("bilinear resize input(s) copied with fresh channels_last strides" in n for n in r.raw["notes"]), r.raw["notes"]


class SharedLayers(nn.Module):
    """ALBERT's pattern: one layer (LayerNorm, linears, HF's tanh GELU written ``0.5 * x * ...``,
    eval-mode ``F.dropout``) applied several times with shared weights to tokens."""

    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        for _ in range(4):
            h = self.fc1(t)
            h = 0.5 * h * (1.0 + torch.tanh(0.7978845608 * (h + 0.044715 * torch.pow(h, 3.0))))
            t = self.norm(t + F.dropout(self.fc2(h), p=0.1, training=self.training))
        return t.mean(1)


def test_layers_shared_across_calls_quantize_and_verify(photos, tmp_path):
    r = _ptl_int8(SharedLayers(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", task="embedding")
    _assert_verified(r, max_layer_steps=2.0)


class SharedNormAfterFloatOp(SharedLayers):
    """The shared LayerNorm's last call reads F.elu's output, which stays float (no simulation):
    convert_fx quantizes the module for every call, so that call would hand a float tensor to
    quantized::layer_norm and crash in the runtime; edgekit keeps the LayerNorm float instead."""

    def forward(self, x):
        t = self.norm(self.patch(x).flatten(2).transpose(1, 2))
        t = self.norm(t + self.fc2(F.relu(self.fc1(t))))
        return self.norm(F.elu(self.fc2(F.relu(self.fc1(t))))).mean(1)


def test_shared_module_with_a_float_call_is_kept_float(photos, tmp_path):
    r = _ptl_int8(SharedNormAfterFloatOp(), (torch.from_numpy(photos[:1]),), photos, tmp_path / "b", task="embedding")
    _assert_verified(r)
    assert any("LayerNorm kept in float automatically" in n and "called on a float input" in n for n in r.raw["notes"]), \
        r.raw["notes"]
