"""ptl-nnapi: a real NNAPI-converted lite-interpreter file; it loads on the host, cannot run there,
and says so with a coded error, never a pass."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.converters.ptl_nnapi import CONVERTER, HOST_RUNNABLE, NOT_RUNNABLE_REASON, load
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.inspect import inspect_artifact
from edgekit.models import BUILTIN
from edgekit.spec import ModelSpec, TensorSpec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    loaded = BUILTIN["tiny_cnn"]()
    out = tmp_path_factory.mktemp("nnapi")
    return loaded, CONVERTER.export(loaded.module, loaded.spec, None, out, loaded.example_inputs), out


def test_export_loads_and_describes_inputs(exported):
    loaded, art, out = exported
    assert art.target == "ptl-nnapi" and art.files == (art.path,) and art.path.endswith(".ptl")
    assert sorted(p.name for p in out.iterdir()) == [art.path]
    assert art.meta["inputs"] == [{"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32",
                                   "memory_format": "channels_last"}]
    assert art.meta["host_runnable"] is False and art.meta["not_runnable_reason"] == NOT_RUNNABLE_REASON
    module = load(out / art.path)
    x = loaded.example_inputs[0].contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="libneuralnetworks"):  # the reason is real: NNAPI is missing here
        module(x)


def test_runner_refuses_with_reason(exported):
    _, art, out = exported
    assert HOST_RUNNABLE is False
    with pytest.raises(UserError) as err:
        CONVERTER.runner(art, out)
    assert "not runnable on host" in str(err.value)


def test_inspect_marks_not_runnable(exported):
    _, art, out = exported
    res = inspect_artifact(out / art.path, {"target": "ptl-nnapi", **art.meta})
    assert res.kind == "ptl-nnapi"
    assert any("not runnable on host" in n for n in res.notes) and any("Android 15" in n for n in res.notes)


class _Cumsum(torch.nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 1)


def test_unsupported_op_is_named(tmp_path):
    spec = ModelSpec("c", (TensorSpec("x", (1, 3, 4, 4)),), (TensorSpec("y", (1, 3, 4, 4)),), task="embedding")
    with pytest.raises(UserError) as err:
        CONVERTER.export(_Cumsum(), spec, None, tmp_path, (torch.randn(1, 3, 4, 4),))
    assert err.value.code == "E-OP-UNSUPPORTED" and "aten::cumsum" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_recipe_refused(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(loaded.module, loaded.spec, object(), tmp_path, loaded.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, groups=2)  # neither full nor depthwise

    def forward(self, x):
        return self.conv(x).mean((2, 3))


def test_a_form_the_serializer_refuses_is_unsupported_at_the_users_line(tmp_path):
    """RegNet's grouped convs: the serializer raises a bare "Group convolution not supported yet.";
    it is the node it was adding, named with the line that made it, not an unexplained error."""
    spec = ModelSpec("g", (TensorSpec("x", (1, 8, 8, 8)),), (TensorSpec("y", (1, 8)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_Grouped().eval(), spec, None, tmp_path, (torch.randn(1, 8, 8, 8),))
    assert err.value.op == "aten::_convolution (Group convolution not supported yet)"
    assert err.value.source.endswith("in forward: return self.conv(x).mean((2, 3))"), err.value.source
    assert "test_ptl_nnapi.py" in err.value.source
    assert list(tmp_path.iterdir()) == []


def test_integer_inputs_are_unsupported():
    spec = ModelSpec("t", (TensorSpec("ids", (1, 4), "int64"),), (TensorSpec("y", (1, 4, 2)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(nn.Embedding(10, 2).eval(), spec, None, Path("."), (torch.zeros(1, 4, dtype=torch.int64),))
    assert err.value.op == "int64 input 'ids'"
