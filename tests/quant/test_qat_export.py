"""Quantization-aware training (--qat-steps): the learned weights and input ranges reach every target.

On tiny_cnn and the shipped photos: the training lowers the student's error, the recipe carries the
learned ranges, each calibration family (PT2E, ptl's FX observers, ncnn's blobs) takes them for the
inputs of those layers (and only for tensors that are nothing but a layer's input), and the CLI, the
API and the plan refuse what does not combine with it."""
from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

from edgekit.cli import main
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe
from edgekit.quant.adaround import fold_batchnorm
from edgekit.quant.calibrators import TensorStatsCollector, calibrate_ranges
from edgekit.quant.qat import QATSettings, train_quantized


@pytest.fixture(scope="module")
def tiny():
    lm = BUILTIN["tiny_cnn"]()
    return lm, list(load_samples(lm.default_data, lm.spec).samples)


@pytest.fixture(scope="module")
def trained(tiny):
    lm, samples = tiny
    return train_quantized(lm.module, samples[:32], QuantRecipe(), QATSettings(steps=40))


def test_training_lowers_the_fake_quant_error_and_folds_batchnorm(trained, tiny):
    lm, _ = tiny
    r = trained.report
    assert r["steps"] == 40 and r["samples"] == 24 and r["held_out"] == 8 and r["batchnorm_folded"] > 0
    assert r["loss_last"] < 0.9 * r["loss_first"]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.model.modules())
    folded = copy.deepcopy(lm.module).eval()
    fold_batchnorm(folded)
    before = dict(folded.named_parameters())
    moved = [n for n, p in trained.model.named_parameters() if (p - before[n]).abs().max() > 0]
    assert len(moved) >= 6  # the weights were trained, not only the ranges
    # the better of learned and recalibrated ranges on the held-out samples ships (which one depends on
    # the host's float arithmetic: qat.keeps_learned); the learned ranges are reported either way
    held = r["held_out_loss"]
    assert r["ranges"] == ("learned" if held["learned"] <= held["recalibrated"] else "recalibrated")
    assert r["layers"] == 6 and len(trained.ranges) == (6 if r["ranges"] == "learned" else 0)
    for name, (lo, hi) in trained.ranges.items():
        assert isinstance(trained.model.get_submodule(name), (torch.nn.Conv2d, torch.nn.Linear))
        assert lo <= 0.0 < hi
    carried = trained.recipe(QuantRecipe())  # what every target's calibration takes
    assert dict((n, (lo, hi)) for n, lo, hi in carried.learned_ranges) == trained.ranges


def test_learned_ranges_replace_the_calibrated_range_of_the_layers_inputs():
    rng = np.random.default_rng(0)
    col = TensorStatsCollector(256)
    recipe = QuantRecipe(learned_ranges=(("conv_a", -1.0, 3.0), ("conv_b", -2.0, 1.0)))

    def feed():
        for _ in range(4):
            for site in ("x", "y", "out"):
                col.observe(site, torch.from_numpy(rng.standard_normal(64).astype(np.float32)))

    got = calibrate_ranges(col, feed, recipe, ["x", "y", "out"], exact={"out"},
                           reads={"x": {"conv_a"}, "y": {"conv_a", "conv_b"}, "out": {"conv_a"}})
    assert got["x"] == (-1.0, 3.0)
    assert got["y"] == (-2.0, 3.0)  # two readers: the union
    assert got["out"] != (-1.0, 3.0)  # a model output ranged by min/max is never replaced


def test_recipe_round_trips_and_refuses_malformed_ranges():
    r = QuantRecipe(learned_ranges=(("features.0", -1.5, 2.0),))
    assert QuantRecipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert "QAT ranges of 1 layer inputs" in r.describe()
    for bad in ((("a", 0.5, 2.0),), (("a", -1.0, float("nan")),), (("", -1.0, 1.0),), (("a", -1.0),)):
        with pytest.raises(UserError) as e:
            QuantRecipe(learned_ranges=bad)
        assert e.value.code == "E-ARGS"
    with pytest.raises(UserError):
        QuantRecipe(scheme="dynamic", learned_ranges=(("a", -1.0, 1.0),))


@pytest.mark.parametrize("argv, says", [
    (["--qat-steps", "10"], "--quant int8"),
    (["--quant", "int8", "--qat-steps", "10", "--rounding", "adaround"], "--rounding adaround"),
    (["--quant", "int8", "--qat-steps", "10", "--equalize"], "--equalize"),
    (["--quant", "int8", "--qat-steps", "-3"], "--qat-steps"),
])
def test_what_does_not_combine_is_refused_before_any_work(argv, says, tmp_path, capsys):
    assert main(["export", "tiny_cnn", "--targets", "tflite", "--out", str(tmp_path / "b"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert "E-ARGS" in err and says in err and not (tmp_path / "b").exists()


def test_every_calibration_family_exports_the_learned_ranges(tmp_path, monkeypatch):
    """The learned ranges, once kept, reach tflite and ptl; ncnn, whose symmetric grid the student does not
    simulate, exports the model before training and says so. Kept by decision here: whether they beat
    recalibration on tiny_cnn depends on the host's float arithmetic (qat.keeps_learned)."""
    from edgekit.quant import qat as qat_module

    monkeypatch.setattr(qat_module, "keeps_learned", lambda held: True)
    out = tmp_path / "b"
    assert main(["export", "tiny_cnn", "--targets", "tflite,ptl,ncnn", "--quant", "int8", "--qat-steps", "40",
                 "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    qat = report["quantization_aware_training"]
    assert qat["steps"] == 40 and "quantization-aware training: 40 steps" in " ".join(report["notes"])
    learned = manifest["quantization"]["recipe"]["learned_ranges"]
    assert qat["ranges"] == "learned" and len(learned) == qat["layers"] == 6
    ncnn = report["targets"]["ncnn:int8"]
    assert ncnn["status"] == "pass" and not any("learned input ranges" in n for n in ncnn["notes"])
    assert any(n.startswith("exported from the model before quantization-aware training") for n in ncnn["notes"])
    for key in ("tflite:int8", "ptl:int8"):
        t = report["targets"][key]
        assert t["status"] == "pass", (key, t.get("error"))
        found = re.search(r"the learned input ranges of (\d+) of 6 layers set their quantized inputs", " ".join(t["notes"]))
        # every conv input takes its learned range; the classifier's input is also the pooling's output in
        # the PT2E and ptl graphs (one shared range), so it is calibrated there
        assert found and int(found.group(1)) >= 5, (key, t["notes"])


def test_a_rerun_with_the_same_model_data_and_recipe_trains_nothing(tiny, tmp_path, monkeypatch, caplog):
    """Cached by content hash (edgekit.quant.state_cache): the same weights and ranges come back without
    a training step; other data trains again; a damaged file is relearned and rewritten."""
    import edgekit.quant.qat as qat

    lm, samples = tiny
    first = train_quantized(lm.module, samples[:16], QuantRecipe(), QATSettings(steps=4), cache_dir=tmp_path)
    files = list(tmp_path.glob("qat-*.npz"))
    assert not first.report["cached"] and len(files) == 1

    def no_training(*a, **k):
        raise AssertionError("trained again")

    with monkeypatch.context() as m:
        m.setattr(qat, "_train", no_training)
        again = train_quantized(lm.module, samples[:16], QuantRecipe(), QATSettings(steps=4), cache_dir=tmp_path)
    assert again.report["cached"] and "from the cache" in again.describe()
    assert again.ranges == first.ranges
    got, want = again.model.state_dict(), first.model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)

    other = train_quantized(lm.module, samples[16:32], QuantRecipe(), QATSettings(steps=4), cache_dir=tmp_path)
    assert not other.report["cached"] and len(list(tmp_path.glob("qat-*.npz"))) == 2
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    redo = train_quantized(lm.module, samples[:16], QuantRecipe(), QATSettings(steps=4), cache_dir=tmp_path)
    assert not redo.report["cached"] and "unusable" in caplog.text
    assert all(torch.equal(redo.model.state_dict()[k], want[k]) for k in want)  # seeded: the same weights
