import json

import pytest

from edgekit import bundle as B
from edgekit.cli import main


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("d") / "b"
    assert main(["export", "tiny_cnn", "--targets", "tflite,onnx", "--out", str(out), "--samples", "2", "--quiet"]) == 0
    return out


def test_android_copy_takes_manifest_and_tflite_only_and_keeps_other_files(small_bundle, tmp_path, capsys):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "sample.jpg").write_bytes(b"app's own")
    assert main(["bundle", str(small_bundle), "--android", str(assets)]) == 0
    names = sorted(p.name for p in assets.iterdir())
    assert names == ["manifest.json", "sample.jpg", "tiny_cnn-fp32.tflite"]
    assert (assets / "sample.jpg").read_bytes() == b"app's own"
    assert json.loads((assets / "manifest.json").read_text()) == B.read_manifest(small_bundle)


def test_modified_artifact_is_refused(small_bundle, tmp_path, capsys):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(small_bundle, copy)
    with open(copy / "tiny_cnn-fp32.tflite", "ab") as f:
        f.write(b"\0")
    assert main(["bundle", str(copy), "--android", str(tmp_path / "a")]) == 2
    assert "E-ARTIFACT-CORRUPT" in capsys.readouterr().err and not (tmp_path / "a" / "tiny_cnn-fp32.tflite").exists()


def test_bundle_without_app_artifact(tmp_path, capsys):
    out = tmp_path / "onnx_only"
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--out", str(out), "--samples", "2", "--quiet"]) == 0
    assert main(["bundle", str(out), "--ios", str(tmp_path / "ios")]) == 2
    assert "E-BUNDLE-INVALID" in capsys.readouterr().err
