"""Malformed input is a coded error with exit 2, never a traceback (exit 3) or a silent rewrite:
run configs with values of the wrong type, out-of-range options, a factory that exits the process."""
from __future__ import annotations

import pytest

from edgekit.cli import main


@pytest.mark.parametrize("line, needle", [
    ('samples = "four"', "samples"),
    ('timeout_s = "soon"', "timeout_s"),
    ("targets = 5", "targets"),
    ("targets = [1, 2]", "targets"),
    ("samples = 1000000000000", "samples"),
    ("timeout_s = -5", "timeout"),
    ("equalize = 1", "equalize"),
    ("keep_float = [3]", "keep_float"),
    ("percentile = 500.0", "percentile"),
    ("data = {a = 1}", "data"),
])
def test_run_config_values_of_the_wrong_type_or_range(tmp_path, capsys, line, needle):
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'[export]\nmodel = "tiny_cnn"\nout = "{tmp_path / "b"}"\n{line}\n')
    assert main(["run", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("E-CONFIG") and needle in err and str(cfg) in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("text", ["export = 5", "[export]\nmodel = 5", "[[export]]\nmodel = 'x'"])
def test_run_config_tables_of_the_wrong_shape(tmp_path, capsys, text):
    cfg = tmp_path / "job.toml"
    cfg.write_text(text + "\n")
    assert main(["run", str(cfg), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("E-CONFIG")


@pytest.mark.parametrize("args, code", [
    (["--timeout", "-5"], "E-ARGS"),
    (["--timeout", "inf"], "E-ARGS"),
    (["--samples", str(10**12)], "E-ARGS"),
    (["--samples", "-1"], "E-ARGS"),
    (["--percentile", "120", "--quant", "int8"], "E-ARGS"),
])
def test_export_options_out_of_range(tmp_path, capsys, args, code):
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--out", str(tmp_path / "b"), "--quiet", *args]) == 2
    assert capsys.readouterr().err.startswith(code)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("body", [
    "import sys\nsys.exit(5)\n",
    "import sys\ndef make():\n    sys.exit(5)\n",
    "def make():\n    raise SystemExit('bye')\n",
])
def test_factory_that_exits_the_process_is_a_coded_error(tmp_path, capsys, body):
    f = tmp_path / "m.py"
    f.write_text(body)
    assert main(["export", f"{f}:make", "--targets", "onnx", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("E-MODEL-FACTORY") and "sys.exit" in err


def test_factory_with_an_unsupported_dtype_is_a_coded_error(tmp_path, capsys):
    f = tmp_path / "m.py"
    f.write_text("import torch\ndef make():\n    return torch.nn.Identity(), (torch.zeros(1, 3, dtype=torch.complex64),)\n")
    assert main(["export", f"{f}:make", "--targets", "onnx", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("E-MODEL-FACTORY")
