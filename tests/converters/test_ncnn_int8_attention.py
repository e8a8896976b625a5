"""ncnn INT8 of a small text encoder (nn.Embedding, nn.MultiheadAttention, nn.Linear on 3-D input):
ncnn's Embed, MultiHeadAttention and Gemm layers stay float (edgekit's INT8 writer sizes their .bin
records and copies them), the report's note names each kept type and why, and the file verifies
against its reference. Before, the writer refused Embed and MultiHeadAttention ("cannot size the
weights": E-OP-UNSUPPORTED on every BERT-like model), and a constant int tensor pnnx stores as int8
(MemoryData 21=3, e.g. BERT's token-type ids) was sized as float32."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import edgekit

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn.param import parse_layers  # noqa: E402

VOCAB, SEQ, DIM = 50, 12, 32


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
        self.ffn = nn.Linear(DIM, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, ids):
        x = self.embed(ids)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head(torch.relu(self.ffn(x))).mean(1)


def test_embed_and_attention_stay_float_and_the_linears_are_int8(tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    rng = np.random.default_rng(0)
    data = [(rng.integers(0, VOCAB, (1, SEQ)).astype(np.int64),) for _ in range(24)]
    example = (torch.from_numpy(data[0][0]),)
    bundle = edgekit.export(model, example, targets=["ncnn"], data=data, quant="int8", out=str(tmp_path / "b"))
    res = bundle.results["ncnn"]
    assert res.status == "pass", (res.status, res.error, res.failures)
    root = tmp_path / "b"
    types = {layer.type for layer in parse_layers(next(root.glob("*-int8.param")).read_text())}
    assert {"Embed", "MultiHeadAttention", "Gemm"} <= types, types
    assert res.metrics["max_steps"] <= 1.0, res.metrics
    # mixed precision is said, per layer type and why: pnnx writes a linear on a 3-D input as a Gemm,
    # which edgekit's INT8 writer leaves float like the lookup table and the fused attention
    art = next(a for a in json.loads((root / "manifest.json").read_text())["artifacts"] if a["target"] == "ncnn")
    note = next(n for n in art["meta"]["quant_notes"] if n.startswith("weighted layers left float"))
    for part in ("2 Gemm (a linear layer on a 3-D input", "1 Embed (a lookup table", "1 MultiHeadAttention (ncnn's fused"):
        assert part in note, note


def test_int8_memory_data_is_sized_one_byte_a_value():
    from edgekit.converters.ncnn.int8 import _record_bytes
    from edgekit.converters.ncnn.param import Layer

    def layer(params):
        return Layer("MemoryData", "m", [], ["m"], params)

    assert _record_bytes(layer(["0=1", "1=128", "11=1", "2=1", "21=3"])) == 128
    assert _record_bytes(layer(["0=4", "1=2"])) == 32
    assert _record_bytes(layer(["0=4", "21=2"])) == 8
