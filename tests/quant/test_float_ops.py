"""The report names the ops a target's quantizer left float (edgekit/quant/float_ops.py): mixed
precision is normal, a silent one is not."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("executorch")

from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.float_ops import float_ops_note  # noqa: E402
from edgekit.quant.pt2e import quantize  # noqa: E402


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.gate, self.head = nn.Conv2d(3, 8, 3), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        x = F.hardswish(self.conv(x))
        g = torch.sigmoid(self.gate(x.mean((2, 3))))
        x = (x * g[:, :, None, None]).flatten(2).permute(0, 2, 1)  # layout ops: not compute
        return self.head(x.mean(1))


def test_the_note_names_the_float_ops_and_not_the_quantized_or_layout_ones():
    from edgekit.converters.executorch import CONVERTER

    samples = [(np.random.default_rng(i).normal(size=(1, 3, 12, 12)).astype(np.float32),) for i in range(3)]
    q = quantize(SE().eval(), (torch.from_numpy(samples[0][0]),), samples, QuantRecipe(), CONVERTER.pt2e_quantizer(),
                 fold_quantize=True)
    note = next(n for n in q.notes if n.startswith("float in the INT8 file"))
    listed = dict(item.rsplit(" x", 1) for item in note.rsplit("): ", 1)[1].split(", "))
    assert {"hardswish", "sigmoid"} <= set(listed), note  # XNNPACK's quantizer has no pattern for them
    assert not {"conv2d", "linear", "mul", "flatten", "permute"} & set(listed), note  # int8, or layout only


def test_no_float_ops_no_note():
    assert float_ops_note({}) is None
