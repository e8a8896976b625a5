"""docs/ci.md: its GitHub Actions workflow is valid YAML, does what the doc says, and its edgekit
commands run here on tiny_cnn (exit codes, JUnit, job summary, report files)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
from edgekit.cli import EXIT_INTERNAL, EXIT_PARITY, EXIT_PASS, EXIT_USAGE

DOC = REPO / "docs" / "ci.md"


def workflow() -> dict:
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1)
    return yaml.safe_load(block)


def steps() -> list[dict]:
    return workflow()["jobs"]["parity"]["steps"]


def test_workflow_caches_pip_installs_with_constraints_and_uploads_always():
    wf = workflow()
    assert wf["env"]["MODEL"] == "tiny_cnn" and set(wf["env"]) >= {"TARGETS", "BUNDLE", "REPORTS"}
    setup = next(s for s in steps() if s.get("uses", "").startswith("actions/setup-python"))
    assert setup["with"]["cache"] == "pip" and setup["with"]["cache-dependency-path"] == "constraints.txt"
    install = next(s["run"] for s in steps() if "pip install" in s.get("run", ""))
    assert "-c constraints.txt" in install
    upload = next(s for s in steps() if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "env.BUNDLE" in upload["with"]["path"] and "env.REPORTS" in upload["with"]["path"]


def test_documented_exit_codes_are_the_clis():
    rows = dict(re.findall(r"^\| (\d) \| (.+?) \|$", DOC.read_text(), re.M))
    assert {int(k) for k in rows} == {EXIT_PASS, EXIT_PARITY, EXIT_USAGE, EXIT_INTERNAL} == {0, 1, 2, 3}
    assert "fail" in rows[str(EXIT_PARITY)] and "usage" in rows[str(EXIT_USAGE)] and "internal" in rows[str(EXIT_INTERNAL)]


def test_pytest_step_options_exist():
    run = next(s["run"] for s in steps() if "pytest" in s.get("run", ""))
    from test_pytest_plugin import _plugin_args

    helptext = subprocess.run([sys.executable, "-m", "pytest", *_plugin_args(), "--help"], capture_output=True,
                              text=True, cwd=REPO).stdout
    for opt in re.findall(r"(--[a-z-]+)", run):
        assert opt in helptext, opt
    markers = subprocess.run([sys.executable, "-m", "pytest", *_plugin_args(), "--markers"], capture_output=True,
                             text=True, cwd=REPO).stdout
    assert "@pytest.mark.edgekit:" in markers


@pytest.mark.slow
def test_workflow_edgekit_steps_run_on_tiny_cnn(tmp_path):
    env = {**os.environ, **{k: str(v) for k, v in workflow()["env"].items()},
           "BUNDLE": str(tmp_path / "bundles" / "model"), "REPORTS": str(tmp_path / "reports"),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    commands = [s["run"] for s in steps() if s.get("run", "").startswith("edgekit ")]
    assert [c.split()[1] for c in commands] == ["export", "verify"]
    for cmd in commands:
        r = subprocess.run(["bash", "-c", cmd], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    bundle = tmp_path / "bundles" / "model"
    for name in ("manifest.json", "report.json", "report.md", "report.html", "tiny_cnn-fp32.tflite", "tiny_cnn-fp32.onnx"):
        assert (bundle / name).is_file(), name
    suite = ET.parse(tmp_path / "reports" / "junit.xml").getroot()[0]
    assert suite.get("tests") == "10" and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert (tmp_path / "summary.md").read_text().startswith("### ✅ edgekit verify `tiny_cnn`")
    assert (tmp_path / "reports" / "verify.json").is_file()
