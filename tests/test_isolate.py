"""The subprocess isolation itself: a runtime process that dies by a signal, or hangs, becomes a
coded error result in the parent instead of killing or blocking the pipeline."""
import sys

import numpy as np

from edgekit.isolate import run_artifact

ARTIFACT = {"target": "onnx", "precision": "fp32", "path": "x.onnx", "files": ["x.onnx"], "meta": {}}
INPUTS = [np.zeros((1, 1, 3), np.float32)]


def _launcher(code: str) -> list[str]:
    # `python -c CODE` ignores the "-m edgekit.isolate DIR" arguments appended after it
    return [sys.executable, "-c", code]


def test_segfaulting_runtime_is_a_coded_error(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS,
                       launcher=_launcher("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"))
    assert out.outputs is None and out.error["code"] == "E-RUNTIME-CRASH"
    assert "SIGSEGV" in out.error["message"]


def test_hanging_runtime_is_stopped_at_the_timeout(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS, timeout_s=2, launcher=_launcher("import time; time.sleep(60)"))
    assert out.error["code"] == "E-RUNTIME-CRASH" and "timed out after 2 s" in out.error["message"]
    assert out.runtime_s < 20


def test_missing_artifact_is_reported_not_raised(tmp_path):
    out = run_artifact("onnx", ARTIFACT, tmp_path, INPUTS)
    assert out.error["code"] == "E-ARTIFACT-CORRUPT" and "x.onnx" in out.error["message"]
