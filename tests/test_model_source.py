import textwrap

import pytest
import torch

from edgekit.errors import UserError
from edgekit.model_source import load_model


def _write(tmp_path, body):
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent(body))
    return f


def test_factory_without_spec_gets_a_derived_spec(tmp_path):
    f = _write(tmp_path, """
        import torch
        def make():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)), (torch.randn(1, 3, 2, 2),)
    """)
    m = load_model(f"{f}:make")
    assert m.spec.input_names == ["input"] and m.spec.inputs[0].shape == (1, 3, 2, 2)
    assert m.spec.outputs[0].shape == (1, 5) and m.spec.task == "classification"


@pytest.mark.parametrize("body, code", [
    ("def make():\n    raise RuntimeError('boom')\n", "E-MODEL-FACTORY"),
    ("def make():\n    return 3\n", "E-MODEL-FACTORY"),
    ("raise ImportError('no such lib')\n", "E-MODEL-FACTORY"),
    ("x = 1\n", "E-MODEL-UNKNOWN"),
])
def test_bad_factories_are_coded(tmp_path, body, code):
    f = _write(tmp_path, body)
    with pytest.raises(UserError) as e:
        load_model(f"{f}:make")
    assert e.value.code == code


def test_unknown_model_name_lists_the_builtins():
    with pytest.raises(UserError) as e:
        load_model("resnet9000")
    assert e.value.code == "E-MODEL-UNKNOWN" and "mobilenet_v2" in str(e.value)


def test_pt2_round_trip_keeps_example_inputs(tmp_path):
    model = torch.nn.Linear(4, 3).eval()
    ep = torch.export.export(model, (torch.randn(1, 4),))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    m = load_model(str(tmp_path / "m.pt2"))
    assert m.spec.outputs[0].shape == (1, 3)
    torch.testing.assert_close(m.module(*m.example_inputs), model(*m.example_inputs))
