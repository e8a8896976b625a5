"""coreml: a real .mlpackage written by coremltools; it cannot run on a host, says so with a coded
error (never a pass or a fail), and what a host can check is checked statically at export and verify."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("coremltools")

from edgekit.converters import get  # noqa: E402
from edgekit.converters.coreml import CONVERTER, HOST_RUNNABLE, NOT_RUNNABLE_REASON, package_of  # noqa: E402
from edgekit.converters.coreml.check import static_check  # noqa: E402
from edgekit.errors import UserError  # noqa: E402
from edgekit.models import BUILTIN  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    return BUILTIN["tiny_cnn"]()


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    """precision -> (Artifact, bundle-like folder): fp16 and dynamic (weight-only int8), once."""
    out = {}
    for precision in ("fp16", "dynamic"):
        folder = tmp_path_factory.mktemp(f"coreml-{precision}")
        art = CONVERTER.export(tiny.module, tiny.spec, QuantRecipe(scheme=precision), folder, tiny.example_inputs)
        out[precision] = (art, folder)
    return out


def _size(folder: Path, art) -> int:
    return sum((folder / f).stat().st_size for f in art.files)


def test_row():
    info = get("coreml").info
    assert (info.name, info.rank, info.title, info.suffix) == ("coreml", 90, "Core ML (iOS/macOS)", ".mlpackage")
    assert info.precisions == ("fp32", "fp16", "dynamic") and set(info.tolerances) == set(info.precisions)
    assert info.not_runnable == NOT_RUNNABLE_REASON and info.app_platforms == ("ios",) and info.deprecated is None
    assert (info.extra, info.modules, info.packages) == ("coreml", ("coremltools",), ("coremltools",))


@pytest.mark.parametrize("precision", ["fp16", "dynamic"])
def test_export_passes_static_check(exports, tiny, precision):
    art, folder = exports[precision]
    pkg = f"tiny_cnn-{precision}.mlpackage"
    assert art.precision == precision and art.path == f"{pkg}/Manifest.json" and package_of(art) == pkg
    assert art.meta["package"] == pkg and art.path in art.files
    assert all(f.startswith(pkg + "/") for f in art.files) and f"{pkg}/Data/com.apple.CoreML/model.mlmodel" in art.files
    assert sorted(p.name for p in folder.iterdir()) == [pkg]  # nothing half-written left beside it
    found = art.meta["static_check"]
    assert found["model_type"] == "mlProgram" and found["specification_version"] >= 7
    assert found["inputs"] == [{"name": "image", "shape": [1, 3, 32, 32], "dtype": "FLOAT32"}]
    assert found["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "FLOAT32"}]
    assert art.meta["host_runnable"] is False and art.meta["quant_notes"]
    again = static_check(folder, pkg, tiny.spec, precision, art.files)  # what verify runs (through screen)
    assert again["weights"] == found["weights"]


def test_int8_smaller_and_holds_int8_weights(exports):
    (fp16, f16), (int8, f8) = exports["fp16"], exports["dynamic"]
    w16, w8 = fp16.meta["static_check"]["weights"], int8.meta["static_check"]["weights"]
    assert w16["weight_tensors_by_dtype"] == {"FLOAT16": 6} and w16["int8_ops"] == 0
    assert w8["weight_tensors_by_dtype"] == {"INT8": 6} and w8["int8_ops"] == 6  # 5 conv + 1 linear
    assert w8["stored_elements_by_dtype"]["INT8"] > 0
    assert _size(f8, int8) < _size(f16, fp16)
    weights = "Data/com.apple.CoreML/weights/weight.bin"
    assert (f8 / package_of(int8) / weights).stat().st_size < 0.8 * (f16 / package_of(fp16) / weights).stat().st_size


def test_precision_mismatch_fails(exports, tiny):
    art, folder = exports["fp16"]
    with pytest.raises(UserError) as err:
        static_check(folder, package_of(art), tiny.spec, "dynamic", art.files)
    assert err.value.code == "E-ARTIFACT-CORRUPT" and "not INT8" in str(err.value)


def _copy(art, folder: Path, dest: Path) -> Path:
    shutil.copytree(folder / package_of(art), dest / package_of(art))
    return dest


def test_tampered_input_name_fails(exports, tiny, tmp_path):
    from coremltools.proto import Model_pb2

    art, folder = exports["dynamic"]
    root = _copy(art, folder, tmp_path)
    spec_file = root / package_of(art) / "Data/com.apple.CoreML/model.mlmodel"
    model = Model_pb2.Model()
    model.ParseFromString(spec_file.read_bytes())
    model.description.input[0].name = "pixels"
    spec_file.write_bytes(model.SerializeToString())
    with pytest.raises(UserError) as err:
        static_check(root, package_of(art), tiny.spec, "dynamic", art.files)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    assert "input names ['pixels'] differ from the ModelSpec's ['image']" in str(err.value)


def test_truncated_weights_and_extra_file_fail(exports, tiny, tmp_path):
    art, folder = exports["fp16"]
    root = _copy(art, folder, tmp_path)
    weights = root / package_of(art) / "Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(weights.read_bytes()[:-100])
    (root / package_of(art) / "extra.bin").write_bytes(b"x")
    with pytest.raises(UserError) as err:
        static_check(root, package_of(art), tiny.spec, "fp16", art.files)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    assert "outside the file" in str(err.value) and "files the manifest does not hash" in str(err.value)


def test_runner_refuses_with_reason(exports):
    art, folder = exports["fp16"]
    assert HOST_RUNNABLE is False
    with pytest.raises(UserError) as err:
        CONVERTER.runner(art, folder)
    assert err.value.code == "E-HOST-UNRUNNABLE" and "not runnable on host" in str(err.value)


def test_static_int8_and_keep_float_refused(tiny, tmp_path):
    with pytest.raises(UserError) as err:
        CONVERTER.export(tiny.module, tiny.spec, QuantRecipe(), tmp_path, tiny.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION" and "--quant dynamic" in str(err.value)
    with pytest.raises(UserError) as err:
        CONVERTER.export(tiny.module, tiny.spec, QuantRecipe(scheme="dynamic", keep_float=("classifier",)), tmp_path,
                         tiny.example_inputs)
    assert err.value.code == "E-ARGS"
    assert list(tmp_path.iterdir()) == []


class _Bucketize(torch.nn.Module):
    def forward(self, x):
        return torch.bucketize(x, torch.tensor([0.0, 1.0])).float()


def test_unsupported_op_is_named(tmp_path):
    spec = ModelSpec("b", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    with pytest.raises(UserError) as err:
        CONVERTER.export(_Bucketize(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-OP-UNSUPPORTED" and "aten::bucketize" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """`edgekit export tiny_cnn --targets coreml`, then `bundle --ios` and `verify` of that bundle."""
    tmp = tmp_path_factory.mktemp("coreml-cli")
    bundle, app = tmp / "bundle", tmp / "ios"
    export = _cli("export", "tiny_cnn", "--targets", "coreml", "--quiet", "--out", str(bundle))
    copy = _cli("bundle", str(bundle), "--ios", str(app)) if (bundle / "manifest.json").is_file() else None
    verify = _cli("verify", str(bundle), "--quiet", "--json", str(tmp / "verify.json")) if copy else None
    return bundle, app, tmp / "verify.json", export, copy, verify


def _out(proc) -> str:
    return proc.stdout[-2000:] + proc.stderr[-2000:]


def test_cli_export_bundle_verify(cli_runs):
    bundle, app, verify_json, export, copy, verify = cli_runs
    assert (bundle / "report.json").is_file(), _out(export)
    report = json.loads((bundle / "report.json").read_text())
    s = report["summary"]
    assert report["targets"]["coreml"]["status"] == "not runnable on host"  # never pass, never fail
    assert (s["not_runnable"], s["passed"], s["failed"], s["errors"]) == (1, 0, 0, 0)
    assert "not runnable on host" in export.stdout
    entry = json.loads((bundle / "manifest.json").read_text())["artifacts"][0]
    pkg = entry["meta"]["package"]
    assert entry["path"] == f"{pkg}/Manifest.json" and len(entry["files"]) == 3
    assert entry["meta"]["static_check"]["weights"]["weight_tensors_by_dtype"] == {"FLOAT32": 6}

    assert copy.returncode == 0, _out(copy)
    copied = sorted(p.relative_to(app).as_posix() for p in (app / pkg).rglob("*") if p.is_file())
    assert copied == sorted(f["path"] for f in entry["files"]) and (app / "manifest.json").is_file()

    checked = json.loads(verify_json.read_text())  # the static check ran (screen) and passed: not an error
    assert checked["targets"]["coreml"]["status"] == "not runnable on host", _out(verify)
    assert checked["summary"]["errors"] == 0


def test_cli_exit_codes_when_only_device_targets(cli_runs):
    *_, export, copy, verify = cli_runs
    assert export.returncode == 0, _out(export)
    assert verify.returncode == 0, _out(verify)


def test_verify_runs_the_static_check(cli_runs, tmp_path):
    """A package changed consistently with its manifest hashes (input renamed, sha256 updated) still
    fails verify: the static check (screen) finds what hashes cannot."""
    import edgekit
    from coremltools.proto import Model_pb2

    from edgekit import bundle as B

    bundle = tmp_path / "bundle"
    shutil.copytree(cli_runs[0], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["artifacts"][0]
    spec_rel = f"{entry['meta']['package']}/Data/com.apple.CoreML/model.mlmodel"
    model = Model_pb2.Model()
    model.ParseFromString((bundle / spec_rel).read_bytes())
    model.description.output[0].name = "scores"
    (bundle / spec_rel).write_bytes(model.SerializeToString())
    for f in entry["files"]:
        if f["path"] == spec_rel:
            f["sha256"], f["size_bytes"] = B.sha256_file(bundle / spec_rel), (bundle / spec_rel).stat().st_size
    B.write_json(bundle / "manifest.json", manifest)
    result = edgekit.verify(bundle).report["targets"]["coreml"]
    assert result["status"] == "error" and result["error"]["code"] == "E-ARTIFACT-CORRUPT"
    assert "output names ['scores'] differ" in result["error"]["message"]
