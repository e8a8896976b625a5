"""The pytest plugin as a user meets it: a throwaway project with its own test file, run with
`python -m pytest` in a subprocess against a bundle written by `edgekit export`."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from edgekit.errors import UserError
from edgekit.pytest_plugin import assert_parity, failure_table
from tiny_bundle import checked_reports, perturbed_copy, tiny_bundle

USER_TEST = '''
import os

import pytest

from edgekit.pytest_plugin import assert_parity

BUNDLE = os.environ["BUNDLE"]


@pytest.mark.edgekit
def test_bundle_matches_model(edgekit_parity):
    report = edgekit_parity("tiny_cnn", BUNDLE, targets="tflite,onnx")
    assert report["summary"]["passed"] == 2


@pytest.mark.edgekit
def test_tflite_file_alone():
    assert_parity("tiny_cnn", os.path.join(BUNDLE, "tiny_cnn-fp32.tflite"), samples=4)


def test_unrelated():
    pass
'''


def _plugin_args() -> list[str]:
    """Installed edgekit registers the plugin by entry point; until then load it by name."""
    eps = importlib.metadata.entry_points(group="pytest11")
    return [] if any(ep.value == "edgekit.pytest_plugin" for ep in eps) else ["-p", "edgekit.pytest_plugin"]


def test_plugin_is_registered_by_entry_point():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert eps.get("edgekit") == "edgekit.pytest_plugin", (
        "pyproject needs [project.entry-points.pytest11] edgekit = \"edgekit.pytest_plugin\" (then pip install -e .)")


def test_failure_table_lists_every_target_and_each_failure(tmp_path_factory):
    text = failure_table(checked_reports(tmp_path_factory)["bad"][0], "bundles/x")
    lines = text.splitlines()
    assert lines[0].startswith("edgekit parity: 1 of 2 target(s) diverged from the model tiny_cnn on 8 samples")
    head = next(i for i, l in enumerate(lines) if l.startswith("target"))
    assert lines[head].split() == ["target", "precision", "status", "max", "abs", "allowed", "cosine", "min", "SQNR", "dB", "top-1"]
    assert lines[head + 2].split()[:3] == ["tflite", "fp32", "pass"]
    assert lines[head + 3].split()[:4] == ["onnx", "fp32", "FAIL", "5.00e-01"]
    assert "onnx: logits: top-1 agreement 37.50% is below 100%" in lines


def test_bad_arguments_are_coded_errors(tmp_path_factory, tmp_path):
    bundle = tiny_bundle(tmp_path_factory)
    with pytest.raises(UserError) as e:
        assert_parity("tiny_cnn", bundle, targets="tflite,ncnn")
    assert e.value.code == "E-TARGET-UNKNOWN" and "onnx, tflite" in str(e.value)
    with pytest.raises(UserError) as e:
        assert_parity("tiny_cnn", tmp_path)
    assert e.value.code == "E-BUNDLE-INVALID"
    with pytest.raises(UserError) as e:
        assert_parity(lambda: "not a model", bundle)
    assert e.value.code == "E-MODEL-FACTORY"


def _run_user_project(project, bundle, reports):
    env = {**os.environ, "BUNDLE": str(bundle)}
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "edgekit", "-q", "-p", "no:cacheprovider",
                           *_plugin_args(), f"--junitxml={reports}/junit.xml", f"--edgekit-report-dir={reports}/html"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_users_project_passes_on_good_bundle_and_fails_readably_on_perturbed(tmp_path):
    project = tmp_path / "userproj"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "test_model.py").write_text(textwrap.dedent(USER_TEST))
    bundle = project / "bundles" / "tiny_cnn"
    r = subprocess.run(["edgekit", "export", "tiny_cnn", "--targets", "tflite,onnx", "--out", str(bundle),
                        "--samples", "8", "--quiet"], cwd=project, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    good = _run_user_project(project, bundle, tmp_path / "good")
    assert good.returncode == 0, good.stdout[-3000:]
    assert "2 passed, 1 deselected" in good.stdout
    assert (tmp_path / "good" / "html" / "tests_test_model.py__test_bundle_matches_model" / "report.html").is_file()

    bad_bundle = perturbed_copy(bundle, tmp_path / "bad" / "tiny_cnn", "onnx")
    bad = _run_user_project(project, bad_bundle, tmp_path / "badrun")
    out = bad.stdout
    assert bad.returncode == 1, out[-3000:]
    assert "1 failed, 1 passed, 1 deselected" in out  # the tflite-only test still passes
    assert "ParityAssertionError" in out and "1 of 2 target(s) diverged" in out
    table = [l.removeprefix("E").strip() for l in out.splitlines() if l.startswith("E ")]
    assert any(l.split()[:3] == ["onnx", "fp32", "FAIL"] for l in table), out[-3000:]
    assert any(l.split()[:3] == ["tflite", "fp32", "pass"] for l in table)
    assert any("onnx: logits: max abs error 0.5" in l for l in table)
    assert "edgekit/pytest_plugin.py" not in out  # the plugin's own frames are hidden from the traceback
    props = {p.get("name"): p.get("value") for p in ET.parse(tmp_path / "badrun" / "junit.xml").iter("property")}
    assert props == {"edgekit.tflite": "pass", "edgekit.onnx": "fail"}
