"""INT8 on any model, target ptl (issue 13): qnnpack refuses, at run time, some quantized ops whose
calibrated qparams are outside its limits (timm levit_128s: a residual add whose branch calibrated to
zero, scale 2**-23, input/output scale ratio 2.5e-6 < 2**-14; efficientformerv2_s0: AvgPool2d(1, 2),
"1x1 pooling is meaningless"). The export finds them from the calibrated graph before anything runs,
keeps just those ops float (one add, not every add), says so in the notes, and the reference follows.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from photos import photo_array

SIZE = 32


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 16)


class RefusedOpsNet(nn.Module):
    """A residual add (+ ReLU) whose branch is always zero (its range calibrates to nothing: scale 2**-23,
    so the input/output scale ratio is ~1e-6), a normal residual add, and a 1x1 average pooling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 16, 3, padding=1)
        self.dead = nn.Conv2d(16, 16, 1)
        nn.init.zeros_(self.dead.weight)
        nn.init.zeros_(self.dead.bias)
        self.pool = nn.AvgPool2d(1, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.conv(x))
        x = x + self.body(x)  # fine for qnnpack: stays INT8
        x = F.relu(x + self.dead(x))  # refused by qnnpack's add (fused with the ReLU): kept float
        x = self.pool(x)  # refused by qnnpack's average pooling: kept float
        return self.fc(x.mean((2, 3)))


def test_ops_qnnpack_refuses_are_kept_float_and_named(photos, tmp_path):
    torch.manual_seed(0)
    bundle = edgekit.export(RefusedOpsNet().eval(), (torch.from_numpy(photos[:1]),), targets=["ptl"], data=photos,
                            quant="int8", samples=8, out=tmp_path / "b")
    r = bundle.results["ptl"]
    assert r.status == "pass", (r.status, r.error, r.failures)
    notes = r.raw["notes"]
    add_notes = [n for n in notes if "kept in float automatically: qnnpack add: input/output scale ratio" in n]
    assert len(add_notes) == 1 and "outside [2**-14, 2**8)" in add_notes[0], notes  # that add only
    assert any(n.startswith("quantization: pool kept in float automatically: qnnpack avg_pool2d: a 1x1 pooling")
               for n in notes), notes
    rows = r.raw.get("per_layer") or []
    assert not [row for row in rows if row["flagged"]], rows
    ops = {row["op"] for row in rows}
    assert "quantized::add" in ops and "quantized::conv2d" in ops  # the other add and the convs stay INT8


def test_refusals_read_from_the_calibrated_graph(photos):
    """The static check on its own: the zero branch's add and the 1x1 pool, nothing else."""
    from edgekit.converters.ptl.qnnpack_limits import qnnpack_refusals
    from edgekit.converters.ptl.quant import calibrate, prepare, qnnpack_engine
    from edgekit.quant.recipe import QuantRecipe

    recipe = QuantRecipe(scheme="int8")
    example = (torch.from_numpy(photos[:1]),)
    with qnnpack_engine():
        prepared, _, _ = prepare(RefusedOpsNet().eval(), example, recipe)
        calibrate(prepared, [(p[None],) for p in photos[:8]], recipe)
        found = qnnpack_refusals(prepared, example)
    assert [f.node for f in found] == ["add_1", "pool"], found
    assert "ratio" in found[0].reason and "1x1" in found[1].reason
