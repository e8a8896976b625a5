"""End to end on the small models: every target exported with its real toolchain, run in its real
runtime on the real shipped photos and sentences, then verified, perturbed and verified again."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from artifact_edit import perturb_tensor, rehash
from edgekit import bundle as B
from edgekit.cli import main
from edgekit.converters import get, target_names

ALL = target_names()
RUNNABLE = [n for n in ALL if not get(n).info.not_runnable]  # ptl-nnapi runs only on Android
REPORT_KEYS = {"status", "precision", "file", "size_bytes", "latency_ms", "metrics", "error"}
METRIC_KEYS = {"max_abs", "mean_abs", "cosine_min", "sqnr_db", "top1_agreement"}


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "tiny_cnn"
    assert main(["export", "tiny_cnn", "--targets", "all", "--out", str(out), "--samples", "12", "--quiet"]) == 0
    return out


def test_every_target_passes_on_real_photos(cnn_bundle):
    report = json.loads((cnn_bundle / "report.json").read_text())
    assert list(report["targets"]) == ALL
    assert report["data"]["kind"] == "image" and report["data"]["count"] == 12
    assert report["summary"]["not_runnable"] == len(ALL) - len(RUNNABLE)
    nnapi = report["targets"]["ptl-nnapi"]
    assert nnapi["status"] == "not runnable on host" and "Android" in nnapi["notes"][0] and nnapi["size_bytes"] > 1000
    for name in RUNNABLE:
        t = report["targets"][name]
        assert REPORT_KEYS <= set(t) and METRIC_KEYS <= set(t["metrics"]), name
        assert t["status"] == "pass", (name, t["failures"], t["error"])
        assert t["size_bytes"] > 1000 and t["latency_ms"] > 0
        assert t["metrics"]["max_abs_rel"] <= 1e-4 and t["metrics"]["top1_agreement"] == 1.0
    assert report["targets"]["ptl"]["notes"] and "ExecuTorch" in report["targets"]["ptl"]["notes"][0]
    md = (cnn_bundle / "report.md").read_text()
    assert "| tflite | fp32 | pass |" in md and "deprecated" in md
    # delegate coverage is a section of every report: XNNPACK measured, NNAPI per API level
    xnn = report["targets"]["tflite"]["coverage"]["result"]["xnnpack"]
    assert xnn["measured"] and xnn["delegated_ops"] == xnn["total_ops"]
    assert "## Delegate coverage" in md and "NNAPI, API 27" in md and "`tiny_cnn-fp32.pte` (executorch)" in md
    assert "coverage" not in report["targets"]["onnx"]  # nothing to inspect there


def test_manifest_describes_inputs_files_and_versions(cnn_bundle):
    m = B.read_manifest(cnn_bundle)
    spec = m["model"]["spec"]
    assert spec["inputs"][0] == {"name": "image", "shape": [1, 3, 32, 32], "dtype": "float32", "layout": "NCHW"}
    assert spec["preprocess"]["kind"] == "image" and spec["preprocess"]["crop"] == 32
    assert {a["target"] for a in m["artifacts"]} == set(ALL)
    for a in m["artifacts"]:
        for f in a["files"]:
            assert B.sha256_file(cnn_bundle / f["path"]) == f["sha256"]
    assert m["versions"]["torch"].startswith("2.13") and "ncnn" in m["versions"] and "onnxruntime" in m["versions"]
    assert not [p for p in cnn_bundle.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".edgekit-lock")]  # no staging left over


def test_verify_passes_and_works_on_other_data(cnn_bundle, tmp_path, image_dir, capsys):
    copy = tmp_path / "copied"
    shutil.copytree(cnn_bundle, copy)  # a bundle copied elsewhere verifies on its own
    assert main(["verify", str(copy), "--quiet", "--json", str(tmp_path / "v.json")]) == 0
    assert main(["verify", str(copy), "--data", str(image_dir), "--quiet"]) == 0
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["kind"] == "verify" and v["summary"]["passed"] == len(RUNNABLE)


@pytest.mark.parametrize("target", RUNNABLE)
def test_perturbed_weight_fails_verify_for_that_target_only(cnn_bundle, tmp_path, target):
    from edgekit.models import BUILTIN

    copy = tmp_path / "b"
    shutil.copytree(cnn_bundle, copy)
    art = next(a for a in B.read_manifest(copy)["artifacts"] if a["target"] == target)
    bias = BUILTIN["tiny_cnn"]().module.classifier.bias.detach().numpy()
    perturb_tensor([copy / f["path"] for f in art["files"]], bias, index=3, delta=0.5)
    assert main(["verify", str(copy), "--quiet", "--json", str(tmp_path / "v.json")]) == 1
    v = json.loads((tmp_path / "v.json").read_text())
    failed = {n for n, t in v["targets"].items() if t["status"] in ("fail", "error")}
    assert failed == {target}
    t = v["targets"][target]
    assert t["status"] == "fail" and any("max abs error" in f for f in t["failures"])  # run, and its numbers judged


def test_truncated_artifact_is_a_coded_error_and_others_still_run(cnn_bundle, tmp_path):
    """Two verify runs, each with half the runnable artifacts truncated: every truncated file is a
    coded error and every intact one still passes in the same run (one run per file took 77 s)."""
    copy = tmp_path / "b"
    shutil.copytree(cnn_bundle, copy)
    runnable = [a for a in B.read_manifest(copy)["artifacts"] if a["target"] in RUNNABLE]
    for half in (runnable[0::2], runnable[1::2]):
        for a in half:
            p = copy / a["path"]
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
            rehash(p)  # as a broken exporter would record it: the runtime itself must refuse the file
        assert main(["verify", str(copy), "--quiet", "--json", str(tmp_path / "v.json")]) == 1
        v = json.loads((tmp_path / "v.json").read_text())
        broken = {a["target"] for a in half}
        for name, t in v["targets"].items():
            if name in broken:
                assert t["status"] == "error" and t["error"]["code"] in ("E-ARTIFACT-CORRUPT", "E-RUNTIME-CRASH"), t
        assert v["summary"]["passed"] == len(RUNNABLE) - len(broken)
        for a in half:
            shutil.copy2(cnn_bundle / a["path"], copy / a["path"])
            rehash(copy / a["path"])


def test_text_model_passes_on_real_sentences(tmp_path):
    out = tmp_path / "tt"
    code = main(["export", "tiny_transformer", "--targets", ",".join(RUNNABLE), "--out", str(out), "--samples", "12", "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["kind"] == "text"
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    bad = {n: (t["failures"], t["error"]) for n, t in report["targets"].items() if t["status"] != "pass"}
    assert code == 0 and not bad, bad
    assert main(["verify", str(out), "--quiet"]) == 0


def test_cli_entry_point_exit_codes(tmp_path):
    run = lambda *a: subprocess.run(["edgekit", *a], capture_output=True, text=True)
    r = run("export", "tiny_cnn", "--targets", "tflite,nosuchtarget", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "E-TARGET-UNKNOWN" in r.stderr and "nosuchtarget" in r.stderr and "ncnn" in r.stderr
    r = run("verify", str(tmp_path))
    assert r.returncode == 2 and "E-BUNDLE-INVALID" in r.stderr
    r = run("export")
    assert r.returncode == 2 and "E-ARGS" in r.stderr
    r = run("targets")
    assert r.returncode == 0 and all(n in r.stdout for n in ALL) and "DEPRECATED" in r.stdout
    assert not (tmp_path / "x").exists()


def test_unwritable_output_and_foreign_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from edgekit.errors import UserError
    from edgekit.job import ExportJob
    from edgekit.pipeline import export_bundle

    with pytest.raises(UserError) as e:
        export_bundle(ExportJob("tiny_cnn", "onnx", out=str(blocker / "sub")))
    assert e.value.code == "E-OUT-UNWRITABLE"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError) as e:
        export_bundle(ExportJob("tiny_cnn", "onnx", out=str(foreign)))
    assert e.value.code == "E-OUT-EXISTS" and (foreign / "notes.txt").read_text() == "keep me"


def test_failed_run_leaves_previous_bundle_intact(cnn_bundle, tmp_path):
    from edgekit.errors import UserError
    from edgekit.job import ExportJob
    from edgekit.pipeline import export_bundle

    copy = tmp_path / "b"
    shutil.copytree(cnn_bundle, copy)
    before = sorted(p.name for p in copy.iterdir())
    with pytest.raises(UserError) as e:
        export_bundle(ExportJob("tiny_cnn", "onnx", data=str(tmp_path / "empty_does_not_exist"), out=str(copy)))
    assert e.value.code == "E-DATA-UNREADABLE"
    assert sorted(p.name for p in copy.iterdir()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".edgekit-lock")]


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    from edgekit.errors import UserError
    from edgekit.job import ExportJob
    from edgekit.pipeline import export_bundle

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what find_spec sees when it is not installed
    with pytest.raises(UserError) as e:
        export_bundle(ExportJob("tiny_cnn", "onnx", out=str(tmp_path / "o")))
    assert e.value.code == "E-DEP-MISSING" and "edgekit[onnx]" in str(e.value)


def test_wrong_input_shape_in_data(tmp_path):
    from edgekit.errors import UserError
    from edgekit.job import ExportJob
    from edgekit.pipeline import export_bundle

    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(UserError) as e:
        export_bundle(ExportJob("tiny_cnn", "onnx", data=str(tmp_path), out=str(tmp_path / "o")))
    assert e.value.code == "E-DATA-SHAPE" and "(1, 3, 32, 32)" in str(e.value)
    assert not (tmp_path / "o").exists()
