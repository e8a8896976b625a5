import json

from edgekit.cli import main


def test_inspect_in_a_bundle_uses_the_manifest_and_measures_xnnpack(tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["export", "tiny_cnn", "--targets", "tflite,executorch", "--out", str(out), "--samples", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out / "tiny_cnn-fp32.tflite"), "--json", str(tmp_path / "i.json")]) == 0
    text = capsys.readouterr().out
    assert "XNNPACK" in text and "measured" in text and "NNAPI, API 27" in text and "deprecated" in text.lower()
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["xnnpack"]["measured"] and result["xnnpack"]["delegated_ops"] == result["xnnpack"]["total_ops"] > 5
    assert main(["inspect", str(out / "tiny_cnn-fp32.pte")]) == 0  # delegation record from the manifest
    import re

    m = re.search(r"(\d+) of (\d+) ops delegated to XNNPACK", capsys.readouterr().out)
    assert m and m.group(1) == m.group(2)  # tiny_cnn: nothing left on the slow portable kernels


def test_inspect_unknown_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "model.bin"
    f.write_bytes(b"xx")
    assert main(["inspect", str(f)]) == 2
