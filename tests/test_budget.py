"""--budget: parsed strictly, recorded in the manifest, and a gate on every quantized file's cost vs
FP32, in export and in verify (where a manifest's budget is untrusted input)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit.budget import Budget, measured
from edgekit.cli import main
from edgekit.errors import UserError


@pytest.mark.parametrize("text, want", [
    ("agreement>=0.99", Budget(agreement=0.99)),
    (" agreement >= 99% , sqnr>=30 ", Budget(agreement=0.99, sqnr=30.0)),
    ("accuracy_drop<=0.5", Budget(accuracy_drop=0.5)),
    ("sqnr>=-3e1", Budget(sqnr=-30.0)),
])
def test_budget_strings_parse(text, want):
    assert Budget.parse(text) == want
    assert Budget.of(text) == want and Budget.of(want.to_dict()) == want


@pytest.mark.parametrize("text", ["", "agreement", "agreement<=0.9", "accuracy_drop>=1", "speed>=2", "sqnr>=30%",
                                  "agreement>=1.5", "sqnr>=nan", "sqnr>=inf", "sqnr>=30,sqnr>=31", "sqnr>=3 0",
                                  "agreement>=0.9;rm -rf /", "x" * 300])
def test_malformed_budgets_are_coded_errors(text):
    with pytest.raises(UserError) as e:
        Budget.parse(text)
    assert e.value.code == "E-ARGS"


@pytest.mark.parametrize("raw", [[], "sqnr>=30", {"sqnr": "30"}, {"sqnr": True}, {"speed": 1}, {}, {"agreement": 2}])
def test_a_manifest_budget_is_untrusted(raw):
    with pytest.raises(UserError) as e:
        Budget.from_manifest(raw)
    assert e.value.code == "E-BUNDLE-INVALID"
    assert Budget.from_manifest(None) is None


def test_missed_names_each_bound_and_what_was_not_measured():
    b = Budget(agreement=0.99, sqnr=30, accuracy_drop=1)
    cost = {"logits": {"top1_agreement": 0.98, "sqnr_db": 31.0}}
    got = measured(cost)
    assert got == {"agreement": 0.98, "sqnr": 31.0, "accuracy_drop": None}
    missed = b.missed(got)
    assert len(missed) == 2 and "0.98" in missed[0] and ">= 0.99" in missed[0] and "no labels" in missed[1]
    assert Budget(sqnr=30).missed(got) == [] and Budget(sqnr=31.5).missed(got)
    assert measured(cost, {"drop_points": 0.5})["accuracy_drop"] == 0.5


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).mean((2, 3)))


def _batches(n=24):
    """(x, y) batches as a DataLoader yields them: labels = the class the FP32 model predicts, except a few."""
    torch.manual_seed(0)
    model = Classifier().eval()
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((n, 3, 12, 12)).astype(np.float32))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::5] = (y[::5] + 1) % 4
    return model, [(x[i:i + 4], y[i:i + 4]) for i in range(0, n, 4)]


@pytest.fixture(scope="module")
def budget_bundle(tmp_path_factory):
    model, batches = _batches()
    out = tmp_path_factory.mktemp("budget") / "net"
    bundle = edgekit.export(model, torch.zeros(1, 3, 12, 12), targets="onnx", data=batches, quant="int8",
                            budget="agreement>=0.5, accuracy_drop<=50", out=out)
    return bundle


def test_export_records_the_budget_and_labels_and_judges_the_file(budget_bundle):
    b = budget_bundle
    assert b.passed, b.report["targets"]
    r = b.results["onnx"].raw
    m = b.manifest
    assert m["quantization"]["budget"] == {"agreement": 0.5, "accuracy_drop": 50.0}
    labels = m["verification_inputs"]["labels"]
    assert len(labels) == m["verification_inputs"]["count"] == r["accuracy"]["samples"] == 8
    # the FP32 accuracy is the model's own on the held-out third: every 5th label was moved off its prediction
    assert r["accuracy"]["fp32"] == pytest.approx(np.mean([i % 5 != 0 for i in range(16, 24)]))
    assert r["budget"]["met"] and r["budget"]["measured"]["sqnr"] == pytest.approx(min(
        c["sqnr_db"] for c in r["compression"].values()))
    assert "Accuracy and budget" in (b.path / "report.md").read_text()


def test_verify_fails_a_file_over_a_tighter_budget_and_passes_a_looser_one(budget_bundle, capsys):
    got = budget_bundle.results["onnx"].raw["budget"]["measured"]["sqnr"]
    tight = edgekit.verify(budget_bundle.path, budget=f"sqnr>={got + 0.5:.2f}")
    assert not tight.passed and tight.results["onnx"].status == "fail"
    assert any(f.startswith("budget: SQNR") for f in tight.results["onnx"].failures)
    assert edgekit.verify(budget_bundle.path, budget=f"sqnr>={got - 0.5:.2f}").passed
    assert edgekit.verify(budget_bundle.path).passed  # the manifest's own budget
    assert main(["verify", str(budget_bundle.path), "--budget", "agreement>=1.01", "--quiet"]) == 2


def test_a_tampered_manifest_budget_is_refused(budget_bundle, tmp_path, capsys):
    copy = shutil.copytree(budget_bundle.path, tmp_path / "copy")
    m = json.loads((copy / "manifest.json").read_text())
    m["quantization"]["budget"] = {"agreement": "__import__('os').system('id')"}
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(copy), "--quiet"]) == 2
    assert "E-BUNDLE-INVALID" in capsys.readouterr().err


def test_budgets_the_job_cannot_measure_are_refused_before_any_work(tmp_path):
    model, batches = _batches()
    unlabelled = [x for x, _ in batches]
    with pytest.raises(UserError) as e:
        edgekit.export(model, torch.zeros(1, 3, 12, 12), targets="onnx", data=unlabelled, quant="int8",
                       budget="accuracy_drop<=1", out=tmp_path / "a")
    assert e.value.code == "E-ARGS" and "labelled" in e.value.what
    with pytest.raises(UserError) as e:
        edgekit.export(model, torch.zeros(1, 3, 12, 12), targets="onnx", data=batches, budget="sqnr>=30", out=tmp_path / "b")
    assert e.value.code == "E-ARGS" and "fp32" in e.value.what
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
