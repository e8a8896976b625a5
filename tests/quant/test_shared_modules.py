"""A module called more than once (ALBERT's shared layers, a block applied twice) is quantized at every
call (edgekit.quant.pt2e._untie_shared_params): the target quantizers annotate a shared weight once and
left the later calls float, which onnxruntime then quantized by itself and XNNPACK gave the first
call's bias scale."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch")

from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + torch.relu(self.block(x))
        x = x + torch.relu(self.block(x))  # the same conv again
        return self.head(x.mean((2, 3)))


def test_every_call_of_a_shared_module_reads_its_own_quantized_weight():
    from edgekit.converters.executorch import CONVERTER

    model = Twice().eval()
    rng = np.random.default_rng(0)
    samples = [(rng.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(4)]
    q = quantize(model, (torch.from_numpy(samples[0][0]),), samples, QuantRecipe(), CONVERTER.pt2e_quantizer(),
                 fold_quantize=True)
    convs = [n for n in q.module.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    assert len(convs) == 3
    for conv in convs:
        assert "dequantize_per_channel" in str(conv.args[1].target), (conv.name, conv.args[1])  # an int8 weight
        assert "dequantize_per_tensor" in str(conv.args[0].target), (conv.name, conv.args[0])  # an int8 input
    second, third = convs[1:]
    assert second.args[2].target != third.args[2].target  # each call its own bias tensor (XNNPACK quantizes it per call)
    assert torch.equal(_tensor(q.module, second.args[2].target), _tensor(q.module, third.args[2].target))  # same values
    assert "block" in model._modules and model.block.weight.requires_grad  # the caller's model is untouched


def _tensor(module, target: str) -> torch.Tensor:
    for part in target.split("."):
        module = getattr(module, part)
    return module
