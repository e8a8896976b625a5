"""The per-layer view of an INT8 .pte (converters/executorch/per_layer.py): each layer lowered as the
file was and replayed on the reference's own input. A correct file is clean layer by layer; a fault
of the lowering is named on its layer and channel; a file that is not its reference's lowering gets
no rows (the replay would not speak for it)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.data import load_samples
from edgekit.quant import QuantRecipe
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

pytest.importorskip("executorch")

import edgekit.converters.executorch as et  # noqa: E402
from edgekit.converters.executorch.per_layer import NotTheReferenceLowered, executorch_per_layer  # noqa: E402

pytestmark = pytest.mark.slow  # a PT2E quantization, three XNNPACK lowerings per view (~40 s)

SPEC = ModelSpec("gated", (TensorSpec("image", (1, 3, 64, 64), "float32", "NCHW"),), (TensorSpec("out", (1, 10)),),
                 ImagePreprocess(72, 64))


class Gated(nn.Module):
    """A stem conv (its weight shape unique in the model), a depthwise conv with hardswish, a
    squeeze-excitation gate (a broadcast mul), a pointwise conv, pooling and a linear head."""

    def __init__(self, c: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, c, 2, 2)
        self.dw = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.se = nn.Sequential(nn.Linear(c, 4), nn.ReLU(), nn.Linear(4, c))
        self.pw = nn.Conv2d(c, 2 * c, 1)
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = F.hardswish(self.dw(F.relu(self.stem(x))))
        x = x * torch.sigmoid(self.se(x.mean((2, 3))))[:, :, None, None]
        return self.head(F.relu(self.pw(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def data(calib_root):
    return load_samples(calib_root / "images", SPEC, limit=12)


def _export(data, out):
    return et.CONVERTER.export(Gated().eval(), SPEC, QuantRecipe(), out, (torch.from_numpy(data.samples[0][0]),),
                               calibration=data.head(8))


def _scaled_stem_channel(lowered):
    """A lowering fault: the stem conv's channel 0 dequantized with a 1.25x scale (in the program being
    lowered, not in the reference the caller holds)."""

    def faulty(ep, precision):
        for node in ep.graph.nodes:
            if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
                weight = node.args[0].meta.get("val")
                if weight is not None and tuple(weight.shape) == (16, 3, 2, 2):
                    spec = next(s for s in ep.graph_signature.input_specs if s.arg.name == node.args[1].name)
                    table = ep.constants if spec.target in ep.constants else ep.state_dict
                    scale = table[spec.target].clone()
                    scale[0] *= 1.25
                    table[spec.target] = scale
        return lowered(ep, precision)

    return faulty


def test_a_correct_file_is_clean_layer_by_layer(data, tmp_path):
    art = _export(data, tmp_path)
    rows = executorch_per_layer(art, tmp_path, data.samples[8:12])
    convs = [r for r in rows if r["op"] in ("conv2d", "linear")]
    assert sorted(r["module"] for r in convs) == ["dw", "head", "pw", "se.0", "se.2", "stem"], rows
    assert all(r["max_steps"] <= 1.0 for r in rows), [r for r in rows if r["max_steps"] > 1.0]
    assert any(r["op"] == "hardswish" for r in rows) and any(r["op"] == "mul" for r in rows)


def test_a_lowering_fault_is_named_on_its_layer_and_channel(data, tmp_path, monkeypatch):
    monkeypatch.setattr(et, "lowered", _scaled_stem_channel(et.lowered))
    art = _export(data, tmp_path)  # the file carries the fault, and the replay lowers with it too
    rows = executorch_per_layer(art, tmp_path, data.samples[8:10])
    flagged = [r for r in rows if r["flagged"]]
    assert [r["module"] for r in flagged] == ["stem"] and flagged[0]["worst_channel"] == 0, flagged
    assert flagged[0]["max_steps"] > 5


def test_a_file_that_is_not_its_reference_lowered_gets_no_rows(data, tmp_path, monkeypatch):
    art = _export(data, tmp_path)
    monkeypatch.setattr(et, "lowered", _scaled_stem_channel(et.lowered))  # the verifier's lowering differs
    with pytest.raises(NotTheReferenceLowered, match="not the XNNPACK lowering of its quantized reference"):
        executorch_per_layer(art, tmp_path, data.samples[8:10])
    pte = tmp_path / art.path
    monkeypatch.undo()
    raw = bytearray(pte.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of the file changed after export
    pte.write_bytes(bytes(raw))
    with pytest.raises(NotTheReferenceLowered):
        executorch_per_layer(art, tmp_path, data.samples[8:10])
