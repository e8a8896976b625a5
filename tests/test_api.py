"""The Python API (edgekit.export / verify / Bundle) on models defined here, the model forms it
takes (.pt2, ExportedProgram, dict outputs), honest `unsupported` statuses with the user's source
line, the exit-code policy of --targets all, and coded errors for wrong types."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from edgekit.cli import main
from edgekit.errors import UserError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, image):
        return self.fc(F.relu(self.conv(image)).mean((2, 3)))


class Hardswish(Net):
    def forward(self, image):
        x = F.hardswish(self.conv(image))  # ptl-nnapi has no mapping for hardswish
        return self.fc(x.mean((2, 3)))


class Detector(Net):
    def forward(self, image):
        h = F.relu(self.conv(image)).mean((2, 3))
        return {"scores": self.fc(h).softmax(-1), "boxes": torch.sigmoid(h[:, :4]), "aux": (h.sum(-1), h.max(-1).values)}


def _data(n=12, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


EXAMPLE = torch.randn(1, 3, 16, 16)


def test_export_a_module_check_run_and_verify(tmp_path):
    model = _model(Net)
    bundle = edgekit.export(model, EXAMPLE, targets=["tflite", "onnx"], data=_data(), out=tmp_path / "net")
    assert isinstance(bundle, edgekit.Bundle) and bundle.passed and bundle.exit_code == 0
    assert set(bundle.results) == {"tflite", "onnx"}
    for r in bundle.results.values():
        assert r.status == "pass" and r.metrics["max_abs"] < 1e-4 and r.metrics["cosine_min"] > 0.9999
    x = _data(3, seed=1)
    (got,) = bundle.run("onnx", x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 4) and np.abs(got - want).max() < 1e-5
    again = edgekit.verify(bundle.path, data=list(_data(5, seed=2)))
    assert again.passed and again.report["data"]["count"] == 5


def test_dict_and_nested_outputs_are_flattened_with_their_names(tmp_path):
    bundle = edgekit.export(_model(Detector), EXAMPLE, targets="onnx", data=_data(), out=tmp_path / "det")
    names = [o["name"] for o in bundle.manifest["model"]["spec"]["outputs"]]
    assert names == ["scores", "boxes", "aux_0", "aux_1"]
    assert bundle.passed and set(bundle.report["targets"]["onnx"]["outputs"]) == set(names)
    scores, boxes, aux0, aux1 = bundle.run("onnx", _data(2))
    assert scores.shape == (2, 4) and boxes.shape == (2, 4) and aux0.shape == (2,)


def test_data_from_a_dataloader_with_labels(tmp_path):
    ds = torch.utils.data.TensorDataset(torch.from_numpy(_data(10)), torch.arange(10))
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    bundle = edgekit.export(_model(Net), EXAMPLE, targets="onnx", data=loader, out=tmp_path / "dl", samples=10)
    assert bundle.passed and bundle.report["data"]["count"] == 10


@pytest.fixture(scope="module")
def pt2_and_factory(tmp_path_factory):
    """The same model as a .pt2 file and as a file.py:factory, exported to every target."""
    root = tmp_path_factory.mktemp("forms")
    model = _model(Net)
    torch.export.save(torch.export.export(model, (EXAMPLE,)), str(root / "net.pt2"))
    torch.save(model.state_dict(), root / "net.pth")
    (root / "net.py").write_text(
        "import torch\nfrom test_api import Net, EXAMPLE\n"
        f"def make():\n    m = Net()\n    m.load_state_dict(torch.load({str(root / 'net.pth')!r}, weights_only=True))\n"
        "    return m.eval(), (EXAMPLE,)\n")
    np.save(root / "x.npy", _data(1))
    data = root / "data"
    data.mkdir()
    for i, x in enumerate(_data(8)):
        np.save(data / f"{i}.npy", x[None])
    out = {}
    for form, model_arg in (("pt2", str(root / "net.pt2")), ("factory", f"{root / 'net.py'}:make")):
        rc = main(["export", model_arg, "--targets", "all", "--data", str(data), "--out", str(root / form), "--quiet"])
        out[form] = (rc, json.loads((root / form / "report.json").read_text()))
    return out


def test_pt2_input_works_wherever_the_factory_does(pt2_and_factory):
    (rc_pt2, pt2), (rc_fac, fac) = pt2_and_factory["pt2"], pt2_and_factory["factory"]
    assert rc_pt2 == rc_fac == 0
    assert {k: t["status"] for k, t in pt2["targets"].items()} == {k: t["status"] for k, t in fac["targets"].items()}
    for key, t in pt2["targets"].items():
        if t["status"] == "pass":
            assert t["metrics"]["max_abs"] < 1e-4, key


def test_exported_program_object(tmp_path):
    program = torch.export.export(_model(Net), (EXAMPLE,))
    bundle = edgekit.export(program, targets="executorch", data=_data(), out=tmp_path / "ep")
    assert bundle.passed


def test_unsupported_operator_names_the_op_and_the_users_line(tmp_path, capsys):
    out = tmp_path / "hs"
    bundle = edgekit.export(_model(Hardswish), EXAMPLE, targets="all", data=_data(), out=out)
    r = bundle.results["ptl-nnapi"]
    assert r.status == "unsupported" and r.error["op"] == "aten::hardswish"
    assert "test_api.py" in r.error["source"] and "F.hardswish(self.conv(image))" in r.error["source"]
    assert bundle.passed  # --targets all: an unsupported target it chose does not fail the run
    assert bundle.report["summary"]["unsupported"] == 1


def test_a_named_unsupported_target_fails_the_run(tmp_path):
    bundle = edgekit.export(_model(Hardswish), EXAMPLE, targets="ptl-nnapi,onnx", data=_data(), out=tmp_path / "hs")
    assert not bundle.passed and bundle.exit_code == 1 and bundle.results["onnx"].passed


@pytest.mark.parametrize("call, code", [
    (lambda: edgekit.export(42, targets="onnx"), "E-MODEL-UNKNOWN"),
    (lambda: edgekit.export(_model(Net), targets="onnx"), "E-ARGS"),  # a module needs example inputs
    (lambda: edgekit.export(_model(Net), "not a tensor", targets="onnx"), "E-ARGS"),
    (lambda: edgekit.export("tiny_cnn", EXAMPLE, targets="onnx"), "E-ARGS"),  # example inputs only for a module
    (lambda: edgekit.export(_model(Net), EXAMPLE, targets=5), "E-ARGS"),
    (lambda: edgekit.export(_model(Net), EXAMPLE, targets="onnx", data=5), "E-ARGS"),
    (lambda: edgekit.export(_model(Net), EXAMPLE, targets="onnx", data=_data().astype(np.float64)), "E-DATA-SHAPE"),
    (lambda: edgekit.export(_model(Net), EXAMPLE, targets="onnx", data=np.zeros((3, 3, 8, 8), np.float32)), "E-DATA-SHAPE"),
    (lambda: edgekit.export(_model(Net), EXAMPLE, targets="nope"), "E-TARGET-UNKNOWN"),
    (lambda: edgekit.verify(42), "E-BUNDLE-INVALID"),
])
def test_wrong_types_are_coded_errors(tmp_path, monkeypatch, call, code):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        call()
    assert info.value.code == code, str(info.value)


def test_version_and_lean_import():
    out = subprocess.run([sys.executable, "-m", "edgekit.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"edgekit {edgekit.__version__}"
    code = "import sys, edgekit; edgekit.export; print(sorted(m for m in ('tensorflow', 'litert_torch', 'executorch', 'ncnn') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_quiet_prints_only_the_summary(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "export", "tiny_cnn", "--targets", "all", "--samples", "4",
                           "--out", str(tmp_path / "b"), "--quiet"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # third-party logs went into the report
    lines = proc.stdout.strip().splitlines()
    assert all(line.startswith(("|", "== ", "PASS", "FAIL", "bundle:", "report:", "  ")) or not line for line in lines), lines
    from edgekit.converters import target_names

    assert len(lines) <= 7 + len(target_names()) and lines[0] == "== Conversion fidelity =="  # was 36 with 6 targets
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert any(t.get("export_log") for t in report["targets"].values())  # captured, not lost
