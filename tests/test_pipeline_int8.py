"""`edgekit export --quant int8` end to end on tiny_cnn: calibrated on real photos, judged on
held-out ones, fidelity against the quantized reference and compression cost against FP32 apart."""
from __future__ import annotations

import json
import shutil

import pytest

from artifact_edit import rehash
from edgekit import bundle as B
from edgekit.cli import main


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "b"
    assert main(["export", "tiny_cnn", "--targets", "tflite,ncnn", "--quant", "int8", "--calibrator", "percentile",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_fidelity_in_steps_and_cost_against_fp32_are_apart(int8_bundle):
    report = json.loads((int8_bundle / "report.json").read_text())
    t = report["targets"]["tflite:int8"]
    assert t["status"] == "pass" and t["precision"] == "int8"
    assert report["targets"]["ncnn:int8"]["status"] == "pass" and report["targets"]["ncnn:int8"]["per_layer"]
    assert t["metrics"]["max_steps"] <= 2.0  # the file computes its quantization (within rounding)
    cost = t["compression"]["logits"]
    assert 10 < cost["sqnr_db"] < t["metrics"]["sqnr_db"]  # int8 vs FP32 is far worse than file vs its reference
    assert report["data"]["count"] == 16 and "calibrated on 32 samples" in report["notes"][0]
    md = (int8_bundle / "report.md").read_text()
    assert "## Compression cost" in md and "## Conversion fidelity" in md and "calibrator percentile" in md
    n = len(report["targets"]["ncnn:int8"]["per_layer"])
    assert "## Conversion fidelity per layer" in md and f"**ncnn:int8**: {n} layers" in md and "0 flagged." in md


def test_report_localises_the_precision_loss_per_layer(int8_bundle):
    report = json.loads((int8_bundle / "report.json").read_text())
    loc = report["targets"]["tflite:int8"]["localisation"]
    modules = {r["module"] for r in loc["rows"]}
    assert {"stem.0", "block.0", "head.0", "classifier"} <= modules
    assert all(r["sqnr_db"] > 10 for r in loc["rows"])
    assert "## Where precision is lost" in (int8_bundle / "report.md").read_text()


@pytest.mark.slow
def test_all_targets_means_every_target_that_exports_the_precision(tmp_path):
    out = tmp_path / "b"
    assert main(["export", "tiny_cnn", "--targets", "all", "--quant", "int8", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    from edgekit.converters import all_converters

    with_int8 = sorted(f"{c.info.name}:int8" for c in all_converters() if "int8" in c.info.precisions)
    assert sorted(report["targets"]) == with_int8 and len(with_int8) >= 7  # tflite ptl ncnn executorch onnx mnn openvino
    assert all(v["status"] == "pass" for v in report["targets"].values())
    assert any("--targets all with int8" in n and "ptl-nnapi" in n for n in report["notes"])


def test_manifest_records_recipe_and_quantized_reference(int8_bundle):
    m = B.read_manifest(int8_bundle)
    assert m["quantization"]["recipe"]["calibrator"] == "percentile" and m["quantization"]["calibration"]["count"] == 32
    art = m["artifacts"][0]
    assert art["meta"]["reference"] in [f["path"] for f in art["files"]] and art["meta"]["output_scales"][0] > 0
    # each target quantizes its own way: one reference per artifact, never a shared (overwritten) file
    refs = [a["meta"]["reference"] for a in m["artifacts"]]
    assert len(refs) == 2 and len(set(refs)) == 2


def test_verify_recomputes_the_quantized_reference(int8_bundle, tmp_path):
    assert main(["verify", str(int8_bundle), "--quiet", "--json", str(tmp_path / "v.json")]) == 0
    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    ref = B.read_manifest(copy)["artifacts"][0]["meta"]["reference"]
    (copy / ref).write_bytes(b"not a program")
    rehash(copy / ref)  # past the sha256 check: the loader itself refuses the file
    assert main(["verify", str(copy), "--quiet", "--json", str(tmp_path / "v.json")]) == 1
    t = json.loads((tmp_path / "v.json").read_text())["targets"]["tflite:int8"]
    assert t["status"] == "error" and t["error"]["code"] == "E-BUNDLE-INVALID" and ref in t["error"]["message"]


@pytest.mark.parametrize("args, code", [
    (["--targets", "ptl-nnapi", "--quant", "int8"], "E-TARGET-PRECISION"),
    (["--targets", "tflite", "--calibrator", "mse"], "E-ARGS"),
    (["--targets", "tflite", "--equalize"], "E-ARGS"),
    (["--targets", "tflite", "--rounding", "adaround"], "E-ARGS"),
    (["--targets", "tflite", "--quant", "fp16", "--no-minmax-output"], "E-ARGS"),
    (["--targets", "tflite", "--quant", "int8", "--keep-float", "nonexistent_layer"], "E-ARGS"),
    (["--targets", "tflite", "--float-share", "0.01"], "E-ARGS"),
    (["--targets", "tflite", "--quant", "int8", "--float-share", "0.5"], "E-ARGS"),
    (["--targets", "tflite", "--quant", "dynamic", "--float-share", "0.01"], "E-ARGS"),
])
def test_bad_quantization_arguments_are_coded(tmp_path, capsys, args, code):
    rc = main(["export", "tiny_cnn", *args, "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and code in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_models_measured_int8_settings_fill_only_what_the_user_left_unset():
    """MobileNetV2's measured settings (learned rounding, min/max logits) apply unless the user set them."""
    from types import SimpleNamespace

    from edgekit.job import ExportJob
    from edgekit.plan import model_defaults as _model_defaults
    from edgekit.plan import quant_recipe as _recipe

    loaded = SimpleNamespace(quant_defaults={"int8": {"rounding": "adaround", "minmax_output": True, "float_share": 0.005},
                                             "int16x8": {"bias_correction": True}},
                             spec=SimpleNamespace(name="mobilenet_v2"))
    job = ExportJob("mobilenet_v2", quant="int8")
    recipe, notes = _model_defaults(job, _recipe(job), loaded)
    assert (recipe.rounding, recipe.minmax_output, recipe.float_share) == ("adaround", True, 0.005)
    assert "rounding=adaround" in notes[0] and "float_share=0.005" in notes[0]
    job = ExportJob("mobilenet_v2", quant="int8", rounding="nearest", minmax_output=False, float_share=0)
    recipe, notes = _model_defaults(job, _recipe(job), loaded)
    assert (recipe.rounding, recipe.minmax_output, recipe.float_share, notes) == ("nearest", False, 0, [])
    # each scheme has its own: int16x8's bias correction, unless the user turned it off
    job = ExportJob("mobilenet_v2", quant="int16x8")
    recipe, notes = _model_defaults(job, _recipe(job), loaded)
    assert recipe.bias_correction and not recipe.minmax_output and "int16x8 settings" in notes[0]
    job = ExportJob("mobilenet_v2", quant="int16x8", bias_correction=False)
    assert _model_defaults(job, _recipe(job), loaded) == (_recipe(job), [])


def test_a_models_measured_qat_steps_apply_unless_the_user_set_them_or_a_clashing_lever():
    """MobileNetV2 trains 24 QAT steps by default for int8 (said in the notes); --qat-steps 0 turns it off, and
    a lever that would change the learned weights or ranges afterwards (or a budget search) turns the default
    off instead of being refused; --qat-steps with only targets that do not take it is refused."""
    from types import SimpleNamespace

    from edgekit.errors import UserError
    from edgekit.job import ExportJob
    from edgekit.plan import model_defaults, plan, qat_steps, quant_recipe

    loaded = SimpleNamespace(quant_defaults={"int8": {"rounding": "adaround", "minmax_output": True}}, qat_steps=24,
                             spec=SimpleNamespace(name="mobilenet_v2"))
    job = ExportJob("mobilenet_v2", quant="int8")
    assert qat_steps(job, quant_recipe(job), loaded) == 24
    recipe, notes = model_defaults(job, quant_recipe(job), loaded)
    assert recipe.rounding == "nearest" and notes[0].endswith("minmax_output=True, qat_steps=24")  # no AdaRound on top
    for given in ({"qat_steps": 0}, {"equalize": True}, {"rounding": "adaround"}, {"budget": "sqnr>=30"}):
        job = ExportJob("mobilenet_v2", quant="int8", **given)
        assert qat_steps(job, quant_recipe(job), loaded) == 0, given
    assert qat_steps(ExportJob("mobilenet_v2", quant="int8", qat_steps=7), None, loaded) == 7
    for quant in ("fp32", "int16x8", "dynamic"):
        job = ExportJob("mobilenet_v2", quant=quant)
        assert qat_steps(job, quant_recipe(job), loaded) == 0
    with pytest.raises(UserError) as e:
        plan(ExportJob("tiny_cnn", targets="ncnn", quant="int8", qat_steps=10))
    assert e.value.code == "E-ARGS" and "tflite" in e.value.fix and "ncnn" not in e.value.fix
