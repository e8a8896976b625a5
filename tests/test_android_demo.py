"""android_demo/: the JVM tests of the app's pure logic (preprocessing against the shared test
vector, manifest parsing) and the signed debug APK built here with Debian's Android tools."""
from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from edgekit.cli import main

DEMO = Path(__file__).resolve().parents[1] / "android_demo"
pytestmark = pytest.mark.slow


def test_check_script_builds_a_signed_apk_with_the_model_stored(tmp_path):
    bundle, apk = tmp_path / "bundle", tmp_path / "demo.apk"
    assert main(["export", "tiny_cnn", "--targets", "tflite", "--out", str(bundle), "--samples", "4", "--quiet"]) == 0
    proc = subprocess.run(["bash", str(DEMO / "check.sh"), str(bundle), str(apk)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "passed, 0 failed" in proc.stdout
    with zipfile.ZipFile(apk) as z:
        model = z.getinfo("assets/tiny_cnn-fp32.tflite")
        assert model.compress_type == zipfile.ZIP_STORED  # memory-mappable by the TFLite runtime
        assert z.read("assets/tiny_cnn-fp32.tflite") == (bundle / "tiny_cnn-fp32.tflite").read_bytes()
        assert "assets/manifest.json" in z.namelist() and "classes.dex" in z.namelist()
