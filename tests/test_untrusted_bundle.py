"""A bundle is untrusted input: each attack of issue 11 on `edgekit verify` fails without side effect
(a coded exit 2, or the target fails), and a clean bundle still passes exactly as before.

Every case starts from one real tiny_cnn bundle (tflite + onnx, exported with the CLI) copied into the
test's own folder, then changed the way an attacker or a careless user would change it."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from edgekit.cli import main
from tiny_bundle import tiny_bundle as _shared


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _shared(tmp_path_factory)


@pytest.fixture
def bundle(clean, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(clean, dst)
    return dst


def _manifest(b):
    return json.loads((b / "manifest.json").read_text())


def _write(b, m):
    (b / "manifest.json").write_text(json.dumps(m))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify(b, capsys, *extra):
    rc = main(["verify", str(b), "--quiet", *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return rc, out.out, out.err


def _onnx(m):
    return next(a for a in m["artifacts"] if a["target"] == "onnx")


def test_clean_bundle_still_passes(bundle, capsys):
    rc, out, _ = _verify(bundle, capsys)
    assert rc == 0 and "2 passed, 0 failed, 0 errors" in out


@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../etc/passwd", "onnx/../../x.onnx", "~/x.onnx", ""])
def test_manifest_path_outside_the_bundle_is_refused_before_opening(bundle, capsys, path):
    m = _manifest(bundle)
    art = _onnx(m)
    art["path"] = art["files"][0]["path"] = path
    _write(bundle, m)
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and err.startswith("E-BUNDLE-INVALID") and "path" in err


def test_symlink_that_leaves_the_bundle_is_refused(bundle, capsys, tmp_path):
    m = _manifest(bundle)
    art = _onnx(m)
    outside = tmp_path / "outside.onnx"
    shutil.move(bundle / art["path"], outside)  # a good file outside; the bundle's own copy gone
    os.symlink(outside, bundle / art["path"])
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and "E-BUNDLE-INVALID" in err and "outside the bundle" in err


def test_artifact_path_to_a_good_file_outside_is_refused(bundle, capsys, tmp_path):
    m = _manifest(bundle)
    art = _onnx(m)
    outside = tmp_path / "good.onnx"
    shutil.move(bundle / art["path"], outside)
    art["path"] = art["files"][0]["path"] = os.path.relpath(outside, bundle)
    _write(bundle, m)
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and "E-BUNDLE-INVALID" in err and "leaves the bundle" in err


@pytest.mark.parametrize("how", ["appended", "wrong-sha"])
def test_changed_file_fails_its_target_without_running(bundle, capsys, tmp_path, how):
    m = _manifest(bundle)
    tfl = next(a for a in m["artifacts"] if a["target"] == "tflite")
    if how == "appended":
        with open(bundle / tfl["path"], "ab") as f:
            f.write(b"\0" * 4096)
    else:
        tfl["files"][0]["sha256"] = "0" * 64
        _write(bundle, m)
    rc, out, _ = _verify(bundle, capsys, "--json", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    t = report["targets"]["tflite"]
    assert rc == 1 and t["status"] == "fail" and t["error"]["code"] == "E-ARTIFACT-CHANGED"
    assert t["latency_ms"] is None  # never run
    assert report["targets"]["onnx"]["status"] == "pass"


def test_changed_reference_is_refused(bundle, capsys):
    with open(bundle / "reference.pt2", "ab") as f:
        f.write(b"x")
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and err.startswith("E-ARTIFACT-CHANGED") and "reference" in err


@pytest.mark.parametrize("edit", [
    lambda m: m.pop("artifacts"),
    lambda m: m.update(artifacts={"onnx": {}}),
    lambda m: _onnx(m).pop("files"),
    lambda m: _onnx(m).update(files="x.onnx"),
    lambda m: _onnx(m).update(meta={"output_scales": "big"}),
    lambda m: _onnx(m).update(meta={"reference": "../../etc/passwd"}),
    lambda m: m["model"]["spec"]["inputs"][0].update(shape=[1 << 20, 1 << 20, 1 << 20]),
    lambda m: m["model"]["spec"].update(inputs=5),
    lambda m: m.update(reference={"file": "reference.pt2"}),
    lambda m: m.update(model=None),
])
def test_malformed_manifest_is_a_coded_error(bundle, capsys, edit):
    m = _manifest(bundle)
    edit(m)
    _write(bundle, m)
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and err.startswith("E-BUNDLE-INVALID"), err


def test_verify_inputs_with_a_huge_declared_shape(bundle, capsys):
    """The stored inputs' header is checked against the spec before anything is allocated."""
    import numpy as np

    path = bundle / "verify_inputs.npz"
    name = _manifest(bundle)["model"]["spec"]["inputs"][0]["name"]
    with open(path, "wb") as f:  # an .npz whose member claims 12 TiB
        import zipfile

        with zipfile.ZipFile(f, "w") as z:
            header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 20, 1, 3, 1 << 20, 1 << 10)}
            with z.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(member, header)
    m = _manifest(bundle)
    m["verification_inputs"]["file_sha256"] = _sha(path)
    _write(bundle, m)
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and err.startswith("E-BUNDLE-INVALID") and "verify_inputs.npz" in err


@pytest.mark.parametrize("args", [["--timeout", "-5"], ["--timeout", "nan"], ["--samples", str(10**12)],
                                  ["--samples", "0"], ["--total-timeout", "0"]])
def test_out_of_range_options_are_usage_errors(bundle, capsys, args):
    rc, _, err = _verify(bundle, capsys, *args)
    assert rc == 2 and err.startswith("E-ARGS")


def test_overall_time_budget_is_reported_per_target(bundle, capsys, tmp_path):
    rc, _, _ = _verify(bundle, capsys, "--total-timeout", "0.001", "--json", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert rc == 1 and any("overall time budget" in (t["error"] or {}).get("message", "") for t in report["targets"].values())


def test_verify_never_writes_into_the_bundle(bundle, capsys):
    before = {p: p.stat().st_mtime_ns for p in bundle.rglob("*")}
    _verify(bundle, capsys)
    assert {p: p.stat().st_mtime_ns for p in bundle.rglob("*")} == before


def test_cli_process_gives_exit_2_not_a_traceback(bundle):
    """The real console script, as CI runs it, on a manifest that is not JSON."""
    (bundle / "manifest.json").write_bytes(b"\xff\xfe{not json")
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "verify", str(bundle), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "E-BUNDLE-INVALID" in proc.stderr and "Traceback" not in proc.stderr


def _rehash(bundle, m, rel):
    """Point the manifest's entry for ``rel`` at the file's current sha256 (as an attacker would)."""
    for entry in [m["reference"]] if rel == m["reference"]["file"] else []:
        entry["sha256"] = _sha(bundle / rel)
    for art in m["artifacts"]:
        for f in art["files"]:
            if f["path"] == rel:
                f["sha256"], f["size_bytes"] = _sha(bundle / rel), (bundle / rel).stat().st_size
    _write(bundle, m)


def test_reference_with_a_reduce_pickle_never_runs(bundle, capsys, tmp_path):
    from attacks import payload_pickle, rewrite_zip

    marker = tmp_path / "pwned"
    good = tmp_path / "good.pt2"
    shutil.copy(bundle / "reference.pt2", good)
    rewrite_zip(good, bundle / "reference.pt2", {"data/sample_inputs/model.pt": lambda _: payload_pickle(marker)})
    _rehash(bundle, _manifest(bundle), "reference.pt2")
    rc, _, err = _verify(bundle, capsys)
    assert rc == 2 and err.startswith("E-BUNDLE-UNSAFE") and "reference.pt2" in err
    assert not marker.exists()


def test_quantized_reference_named_by_meta_never_runs(bundle, capsys, tmp_path):
    """The same payload through an artifact's meta.reference (how quantized references are named)."""
    from attacks import payload_pickle, rewrite_zip

    marker = tmp_path / "pwned"
    rewrite_zip(bundle / "reference.pt2", bundle / "evil.reference.pt2",
                {"data/sample_inputs/model.pt": lambda _: payload_pickle(marker)})
    m = _manifest(bundle)
    art = _onnx(m)
    art["files"].append({"path": "evil.reference.pt2", "sha256": _sha(bundle / "evil.reference.pt2"), "size_bytes": 1})
    art["meta"]["reference"] = "evil.reference.pt2"
    _write(bundle, m)
    rc, _, _ = _verify(bundle, capsys, "--json", str(tmp_path / "r.json"))
    t = json.loads((tmp_path / "r.json").read_text())["targets"]["onnx"]
    assert rc == 1 and t["status"] == "error" and t["error"]["code"] == "E-BUNDLE-UNSAFE"
    assert not marker.exists()


def test_ptl_that_writes_a_file_is_refused_naming_the_operator(bundle, capsys, tmp_path):
    import warnings

    import torch

    from attacks import ReadsFile

    target = tmp_path / "written_by_model"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(ReadsFile(str(target)))._save_for_lite_interpreter(str(bundle / "evil.ptl"))
    m = _manifest(bundle)
    m["artifacts"].append({"target": "ptl", "precision": "fp32", "path": "evil.ptl", "meta": {"input_dtypes": ["float32"]},
                           "files": [{"path": "evil.ptl", "sha256": _sha(bundle / "evil.ptl"), "size_bytes": 1}]})
    _write(bundle, m)
    rc, _, _ = _verify(bundle, capsys, "--json", str(tmp_path / "r.json"))
    t = json.loads((tmp_path / "r.json").read_text())["targets"]["ptl"]
    assert rc == 1 and t["error"]["code"] == "E-BUNDLE-UNSAFE" and "aten::from_file" in t["error"]["message"]
    assert not target.exists()
