"""The budget search (edgekit.quant.search) on tiny_cnn and the shipped photos: it keeps the layer that
loses most float when the all-INT8 simulation misses the budget, picks the cheapest assignment that
meets it, says what the best reached when none does, and the exported file meets it for real."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekit.budget import Budget
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.quant.recipe import QuantRecipe
from edgekit.quant.search import search
from edgekit.reference import run_reference

PHOTOS = Path(__file__).resolve().parents[2] / "calibration_data" / "images"


@pytest.fixture(scope="module")
def setup():
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(PHOTOS, lm.spec)
    cal, held = data.head(32), data.slice(32)
    example = tuple(torch.from_numpy(a) for a in cal.samples[0])
    return lm, cal, held, example, run_reference(lm.module, held.samples)


def _search(setup, budget: str):
    from edgekit.converters import get

    lm, cal, held, example, fp32 = setup
    return search(lm.module, example, cal, held, fp32, QuantRecipe(), Budget.parse(budget), lm.spec,
                  get("onnx").pt2e_quantizer)


@pytest.fixture(scope="module")
def all_int8(setup):
    """The search with a budget plain INT8 meets: one trial, its SQNR the base of the other tests."""
    return _search(setup, "sqnr>=20")


def test_a_budget_int8_already_meets_is_one_trial(all_int8):
    recipe, trials = all_int8
    assert len(trials) == 1 and trials[0].met and recipe.keep_float == () and trials[0].metrics["sqnr"] > 20


def test_the_search_keeps_the_fewest_sensitive_layers_float(setup, all_int8):
    base = all_int8[1][0].metrics["sqnr"]
    recipe, trials = _search(setup, f"sqnr>={base + 4:.1f}")
    assert not trials[0].met
    chosen = next(t for t in trials if t.keep_float == recipe.keep_float)
    assert chosen.met and chosen.metrics["sqnr"] >= base + 4
    assert all(len(t.keep_float) >= len(chosen.keep_float) for t in trials if t.met)
    assert chosen.size_bytes > trials[0].size_bytes  # float weights cost bytes: the size estimate says so
    assert set(recipe.keep_float) <= {n for n, _ in setup[0].module.named_modules()}


def test_an_unreachable_budget_names_the_best_trial(setup):
    with pytest.raises(UserError) as e:
        _search(setup, "sqnr>=80")
    assert e.value.code == "E-BUDGET-UNMET" and "reached" in e.value.what and "sqnr" in e.value.what


@pytest.mark.slow
def test_an_export_with_a_budget_ships_a_file_that_meets_it(all_int8, tmp_path):
    from edgekit.cli import main

    want = all_int8[1][0].metrics["sqnr"] + 4
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--quant", "int8", "--budget", f"sqnr>={want:.1f}",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    found = report["budget_search"]
    assert found["chosen"] and found["trials"][0]["met"] is False
    onnx = report["targets"]["onnx:int8"]
    assert onnx["budget"]["met"] and onnx["budget"]["measured"]["sqnr"] >= want
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"]["recipe"]["keep_float"] == found["chosen"]
    assert "Budget search" in (tmp_path / "b" / "report.md").read_text()
    assert "budget search trials" in (tmp_path / "b" / "report.html").read_text()


def test_when_every_layer_float_misses_whole_blocks_are_kept_float():
    """tiny_transformer on its text samples: with all 9 layers float it stays at ~13 dB (its softmax,
    attention matmuls, residual adds and LayerNorms are quantized between the layers); one encoder layer
    kept float as a block reaches ~32 dB. A budget of 25 dB is met by one block on top of every layer,
    and the chosen point names the block, not its layers again."""
    from edgekit.converters import get
    from edgekit.quant.search import _blocks
    from edgekit.quant.search import kept_float_count

    lm = BUILTIN["tiny_transformer"]()
    data = load_samples(lm.default_data, lm.spec)
    cal, held = data.head(32), data.slice(32)
    example = tuple(torch.from_numpy(a) for a in cal.samples[0])
    fp32 = run_reference(lm.module, held.samples)
    recipe, trials = search(lm.module, example, cal, held, fp32, QuantRecipe(), Budget.parse("sqnr>=25"), lm.spec,
                            get("onnx").pt2e_quantizer)
    layers = [n for n, m in lm.module.named_modules() if isinstance(m, torch.nn.Linear)]
    every_layer = [t for t in trials if set(t.keep_float) == set(layers)]
    assert every_layer and not every_layer[0].met and every_layer[0].metrics["sqnr"] < 20
    chosen = next(t for t in trials if t.keep_float == recipe.keep_float)
    assert chosen.met and chosen.metrics["sqnr"] >= 25
    blocks = [k for k in recipe.keep_float if k in _blocks(lm.module, layers)]
    assert blocks == ["layers.1"] or blocks == ["layers.0"]
    assert not any(k.startswith(blocks[0] + ".") for k in recipe.keep_float)
    assert chosen.size_bytes == every_layer[0].size_bytes  # blocks cost latency, not weight bytes
    assert chosen.blocks == 1 and kept_float_count(chosen.to_dict()) == "1 block(s) + 5 layer(s)"  # the other encoder layer's 4 + classifier


def test_with_two_placements_each_trial_simulates_both_and_keeps_the_worst(setup):
    """tflite's litert-torch quantizer and XNNPACK's (executorch, onnx) place q/dq pairs differently
    (XNNPACK quantizes residual adds litert-torch leaves float): every trial runs both simulations, and
    meets the budget only if both do (measured on MobileNetV2: agreement 0.996 with every layer float
    in tflite's simulation, 0.898 in XNNPACK's)."""
    from edgekit.converters import get
    from edgekit.quant.search import _worst

    lm, cal, held, example, fp32 = setup
    calls = {"tflite": 0, "onnx": 0}

    def counted(name):
        def make():
            calls[name] += 1
            return get(name).pt2e_quantizer()
        return make

    with pytest.raises(UserError) as e:
        search(lm.module, example, cal, held, fp32, QuantRecipe(), Budget.parse("sqnr>=80"), lm.spec,
               [counted("tflite"), counted("onnx")], max_trials=2)
    assert e.value.code == "E-BUDGET-UNMET" and "of the 2 tried" in e.value.what
    assert calls == {"tflite": 2, "onnx": 2}
    worst = _worst([{"agreement": 0.996, "sqnr": 49.9, "accuracy_drop": None},
                    {"agreement": 0.898, "sqnr": 23.4, "accuracy_drop": None}])
    assert worst == {"agreement": 0.898, "sqnr": 23.4, "accuracy_drop": None}
    assert _worst([{"agreement": None, "sqnr": 20.0, "accuracy_drop": 0.5},
                   {"agreement": None, "sqnr": 21.0, "accuracy_drop": 1.5}]) == {"agreement": None, "sqnr": 20.0,
                                                                               "accuracy_drop": 1.5}


def test_int16x8_searches_with_tflites_16x8_placement(setup):
    """int16x8 (tflite only): one simulation, the 16x8 quantizer's; int8 jobs keep their two placements.
    On tiny_cnn all-int16x8 measures ~31 dB and its two layers float ~46 dB, so a budget between them
    keeps layers float."""
    import functools

    from edgekit.converters import get
    from edgekit.pipeline import _pt2e_quantizers

    convs = [get("tflite"), get("executorch"), get("onnx")]
    assert [names for names, _ in _pt2e_quantizers(convs, "int16x8").values()] == [["tflite"]]
    assert sorted(names for names, _ in _pt2e_quantizers(convs, "int8").values()) == [["executorch", "onnx"], ["tflite"]]
    lm, cal, held, example, fp32 = setup
    quantizer = functools.partial(get("tflite").pt2e_quantizer, "int16x8")
    recipe, trials = search(lm.module, example, cal, held, fp32, QuantRecipe(scheme="int16x8"),
                            Budget.parse("sqnr>=20"), lm.spec, quantizer)
    base = trials[0].metrics["sqnr"]
    assert len(trials) == 1 and 25 < base < 40
    recipe, trials = search(lm.module, example, cal, held, fp32, QuantRecipe(scheme="int16x8"),
                            Budget.parse(f"sqnr>={base + 8:.1f}"), lm.spec, quantizer)
    chosen = next(t for t in trials if t.keep_float == recipe.keep_float)
    assert recipe.scheme == "int16x8" and recipe.keep_float and chosen.met and chosen.metrics["sqnr"] >= base + 8


@pytest.mark.slow
def test_an_int16x8_export_with_a_budget_ships_a_tflite_that_meets_it(tmp_path):
    from edgekit.cli import main

    assert main(["export", "tiny_cnn", "--targets", "tflite", "--quant", "int16x8", "--budget", "sqnr>=40",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["budget_search"]["chosen"] and report["budget_search"]["trials"][0]["met"] is False
    art = report["targets"]["tflite:int16x8"]
    assert art["budget"]["met"] and art["budget"]["measured"]["sqnr"] >= 40
