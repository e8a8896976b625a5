"""The real models of the issue, every target, real data. Slow: minutes on 2 cores."""
from __future__ import annotations

import json

import pytest

from edgekit.cli import main
from edgekit.converters import get, target_names

pytestmark = pytest.mark.slow


def test_mobilenet_v2_all_targets_pass_on_real_photos(tmp_path):
    out = tmp_path / "mnv2"
    assert main(["export", "mobilenet_v2", "--targets", "all", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["count"] == 48 and report["data"]["kind"] == "image"
    for name in target_names():
        t = report["targets"][name]
        if get(name).info.not_runnable:  # ptl-nnapi, coreml: exported and checked, never run here
            assert t["status"] == "not runnable on host", (name, t["error"])
            continue
        assert t["status"] == "pass", (name, t["failures"], t["error"])
        assert t["metrics"]["top1_agreement"] == 1.0 and t["metrics"]["max_abs_rel"] <= 1e-4
    labels = json.loads((out / "manifest.json").read_text())["model"]["spec"]["labels"]
    assert len(labels) == 1000 and labels[0] == "tench"
    assert main(["verify", str(out), "--quiet"]) == 0


def test_minilm_exports_or_names_the_op(tmp_path):
    out = tmp_path / "minilm"
    main(["export", "minilm", "--targets", "all", "--out", str(out), "--samples", "24", "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "text"
    for name in ("tflite", "ptl", "executorch", "onnx"):
        t = report["targets"][name]
        assert t["status"] == "pass", (name, t["failures"], t["error"])
        assert t["metrics"]["cosine_min"] > 0.9999
    ncnn = report["targets"]["ncnn"]
    assert ncnn["status"] == "pass" or (ncnn["status"] == "error" and ncnn["error"]["code"] == "E-OP-UNSUPPORTED"), ncnn
