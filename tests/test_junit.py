"""JUnit XML and the CI Markdown summary, from real reports of a good, a perturbed and a truncated
tiny_cnn bundle."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import pytest

from edgekit.junit import junit_xml, write_junit
from edgekit.summary import summary_markdown, write_summary
from artifact_edit import rehash
from tiny_bundle import checked_reports, tiny_bundle


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    return checked_reports(tmp_path_factory)


def _cases(xml: str) -> dict[tuple[str, str], ET.Element]:
    root = ET.fromstring(xml)
    assert root.tag == "testsuites" and len(root) == 1
    return {(c.get("classname"), c.get("name")): c for c in root.iter("testcase")}


def test_good_bundle_one_passing_testcase_per_target_and_check(checked):
    report = checked["good"][0]
    xml = junit_xml(report)
    cases = _cases(xml)
    checks = ["runs", "logits.max_abs", "logits.cosine", "logits.top1", "outputs"]
    assert sorted(cases) == sorted((f"edgekit.tiny_cnn.{t}", c) for t in ("tflite", "onnx") for c in checks)
    assert all(len(c) == 0 for c in cases.values())  # no <failure>/<error> children
    suite = ET.fromstring(xml)[0]
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("10", "0", "0")
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["torch"].startswith("2.13") and "onnxruntime" in props


def test_perturbed_artifact_fails_exactly_its_checks(checked):
    cases = _cases(junit_xml(checked["bad"][0]))
    failed = {k for k, c in cases.items() if c.find("failure") is not None}
    assert failed == {("edgekit.tiny_cnn.onnx", "logits.max_abs"), ("edgekit.tiny_cnn.onnx", "logits.cosine"),
                      ("edgekit.tiny_cnn.onnx", "logits.top1")}
    msg = cases[("edgekit.tiny_cnn.onnx", "logits.max_abs")].find("failure").get("message")
    assert msg.startswith("logits: max abs error 0.5")


def test_truncated_artifact_is_one_error_testcase(tmp_path_factory, tmp_path):
    from edgekit import bundle as B
    from edgekit.pytest_plugin import check_parity

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle(tmp_path_factory), copy)
    art = next(a for a in B.read_manifest(copy)["artifacts"] if a["target"] == "onnx")
    (copy / art["path"]).write_bytes((copy / art["path"]).read_bytes()[:500])
    rehash(copy / art["path"])  # past the sha256 check: the runtime itself refuses the file
    report, _ = check_parity("tiny_cnn", copy, targets="onnx")
    out = write_junit(tmp_path / "deep" / "junit.xml", report)  # parent folders are created
    cases = _cases(out.read_text())
    assert list(cases) == [("edgekit.tiny_cnn.onnx", "runs")]
    err = cases[("edgekit.tiny_cnn.onnx", "runs")].find("error")
    assert err is not None and err.get("message").startswith(("E-ARTIFACT-CORRUPT", "E-RUNTIME-CRASH"))
    assert "fix:" in err.text


def test_summary_markdown_for_a_job_summary_page(checked, tmp_path):
    good, bad = summary_markdown(checked["good"][0]), summary_markdown(checked["bad"][0])
    assert good.startswith("### ✅ edgekit verify `tiny_cnn`: all targets match") and "What diverged" not in good
    assert bad.startswith("### ❌") and "| onnx | ❌ fail |" in bad and "| tflite | ✅ pass |" in bad
    assert "**onnx**: logits: top-1 agreement 37.50% is below 100%" in bad
    path = tmp_path / "step_summary.md"
    path.write_text("earlier step\n")
    write_summary(path, checked["bad"][0])  # appends, as $GITHUB_STEP_SUMMARY expects
    text = path.read_text()
    assert text.startswith("earlier step\n### ❌") and text.count("| target |") == 1
