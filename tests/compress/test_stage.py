"""Compression as a pipeline stage: steps run in order on a copy, each reported before/after."""
from __future__ import annotations

import pytest
import torch

from edgekit.compress.distill import KDConfig
from edgekit.compress.lowrank import LowRankConfig
from edgekit.compress.prune import PruneConfig
from edgekit.compress.qat import FakeQuantLayer, QATConfig
from edgekit.compress.stage import CompressConfig, StageData, compress, from_calibration
from edgekit.compress.train import TrainConfig
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.model_source import load_model

pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("tiny_cnn")
    return loaded, load_samples(loaded.default_data, loaded.spec)


def test_prune_then_lowrank_without_data(tiny):
    loaded, _ = tiny
    cfg = CompressConfig(steps=("prune", "lowrank"), prune=PruneConfig(ratio=0.5), lowrank=LowRankConfig(energy=None, param_ratio=0.3))
    model, report = compress(loaded.module, loaded.example_inputs, cfg)
    first, second = report.steps
    assert first.before.macs == 709_248 and first.after.macs < 0.5 * first.before.macs
    assert second.before == first.after and second.after.params < second.before.params
    assert "classifier" in second.details["layers"] and first.details["channels"]["block.0"] == [32, 16]
    assert first.accuracy_before is None and first.agreement_after is None  # no data: sizes only
    assert model(*loaded.example_inputs).shape == (1, 10)
    assert loaded.module.block[0].out_channels == 32  # the original is untouched
    d = report.to_dict()
    assert d["steps"][0]["step"] == "prune" and d["config"]["prune"]["ratio"] == 0.5 and d["mac_ratio"] < 0.5
    assert "| prune |" in report.markdown()


def test_prune_then_distill_on_calibration_data_reports_agreement(tiny):
    loaded, data = tiny
    cfg = CompressConfig(steps=("prune", "distill", "qat_distill"), prune=PruneConfig(ratio=0.5),
                         distill=KDConfig(temperature=2.0), qat=QATConfig(),
                         train=TrainConfig(epochs=4, batch_size=16, lr=3e-3, schedule="constant"))
    model, report = compress(loaded.module, loaded.example_inputs, cfg, from_calibration(data))
    prune, distill, qat = report.steps
    assert prune.agreement_before == 1.0 and prune.accuracy_before is None  # unlabelled: agreement with the original
    assert distill.details["steps"] == 12 and distill.details["loss_last"] < distill.details["loss_first"]
    assert distill.agreement_after > prune.agreement_after  # KD recovers what pruning lost
    assert distill.after == prune.after  # distillation trains, it does not resize
    assert qat.details["fake_quant_layers"] == 6 and not any(isinstance(m, FakeQuantLayer) for m in model.modules())


def test_labelled_data_gives_accuracy(tiny):
    loaded, data = tiny
    samples = [(torch.from_numpy(s[0][0]), torch.tensor(int(loaded.module(torch.from_numpy(s[0])).argmax()))) for s in data.samples]
    _, report = compress(loaded.module, loaded.example_inputs, CompressConfig(steps=("prune",), prune=PruneConfig(ratio=0.3)),
                         StageData(samples))
    assert report.steps[0].accuracy_before == 1.0 and report.steps[0].accuracy_after == report.steps[0].agreement_after


@pytest.mark.parametrize("kwargs, needle", [
    ({"steps": ()}, "at least one step"),
    ({"steps": ("prune", "shrink")}, "'shrink'"),
    ({"steps": ("prune",)}, "[prune]"),
    ({"steps": ("qat_distill",)}, "[qat]"),
])
def test_bad_stage_configs_are_coded(kwargs, needle):
    with pytest.raises(UserError) as e:
        CompressConfig(**kwargs)
    assert e.value.code == "E-COMPRESS-CONFIG" and needle in str(e.value)


def test_training_step_without_data_is_coded(tiny):
    loaded, _ = tiny
    with pytest.raises(UserError) as e:
        compress(loaded.module, loaded.example_inputs, CompressConfig(steps=("distill",)))
    assert e.value.code == "E-COMPRESS-CONFIG" and "distill" in str(e.value)


def test_head_pruning_then_distill_on_the_tiny_transformer():
    loaded = load_model("tiny_transformer")
    data = from_calibration(load_samples(loaded.default_data, loaded.spec), limit=32)
    from edgekit.compress.heads import HeadPruneConfig

    cfg = CompressConfig(steps=("heads", "distill"), heads=HeadPruneConfig(head_ratio=0.5, ffn_ratio=0.5),
                         train=TrainConfig(epochs=3, batch_size=16, lr=3e-3, schedule="constant"))
    model, report = compress(loaded.module, loaded.example_inputs, cfg, data)
    heads, distill = report.steps
    assert heads.after.macs < 0.55 * heads.before.macs and heads.details["layers"]["layers.0"]["heads"] == [4, 2]
    assert distill.details["loss_last"] < distill.details["loss_first"]
    assert distill.agreement_after >= heads.agreement_after
