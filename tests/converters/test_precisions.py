"""Weight-only precisions (fp16, dynamic), generated from the capability table: every (target,
precision) a target lists exports the tiny models, passes conversion fidelity against its weight
simulation with the target's tolerance, and really stores the weights in that precision (the file
shrinks by what the stored weights save); a target that does not list a precision refuses it with
E-TARGET-PRECISION; calibration-only options with fp16/dynamic are E-ARGS.

Fast: tiny_cnn on every target but executorch (its lowering alone takes 20-40 s). The executorch
cases and tiny_transformer are marked slow."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.converters import all_converters, get
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.models import BUILTIN
from edgekit.job import ExportJob
from edgekit.pipeline import export_bundle
from edgekit.verification import verify_artifact
from edgekit.quant import QuantRecipe
from edgekit.reference import run_reference

WEIGHT_ONLY = ("fp16", "dynamic")
STORED_BYTES = {"fp16": 2, "dynamic": 1}
SLOW_TARGETS = {"executorch"}
N_SAMPLES = 8
CASES = [(c.info.name, p) for c in all_converters() for p in WEIGHT_ONLY
         if p in c.info.precisions and not c.info.not_runnable]
REFUSED = [(c.info.name, p) for c in all_converters() for p in WEIGHT_ONLY if p not in c.info.precisions]


# Once: the dynamic .ptl of tiny_transformer saved 4.8 kB where its 16,512 int8 weights should save
# ~49 kB: packed under fbgemm, the saver stored each quantized Linear twice (fixed: packed under qnnpack,
# 34.6 kB saved; the rest is per-channel float64 scales / int64 zero points and zip entries).
KNOWN_SHORT_SAVING: set = set()  # (target, precision, model) measured to save less than expected; none now


def _params(cases, model):
    def marks(t, p):
        out = [pytest.mark.slow] if t in SLOW_TARGETS or model != "tiny_cnn" else []
        if (t, p, model) in KNOWN_SHORT_SAVING:
            out.append(pytest.mark.xfail(strict=True, reason="dynamic .ptl saves less than its int8 weights should"))
        return out

    return [pytest.param(t, p, model, marks=marks(t, p), id=f"{t}-{p}-{model}") for t, p in cases]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache = {}

    def export(target, precision, model):
        if (target, precision, model) not in cache:
            loaded = BUILTIN[model]()
            out = tmp_path_factory.mktemp(f"{target}-{precision}-{model}")
            art = get(target).export(loaded.module, loaded.spec, QuantRecipe(scheme=precision), out, loaded.example_inputs)
            cache[target, precision, model] = (loaded, art, out)
        return cache[target, precision, model]

    return export


def test_table_lists_weight_only_precisions():
    """The precisions measured to export and run here (see each converter's tolerance comment)."""
    assert set(CASES) >= {("tflite", "fp16"), ("tflite", "dynamic"), ("executorch", "fp16"),
                          ("executorch", "dynamic"), ("ncnn", "fp16"), ("onnx", "dynamic"), ("ptl", "dynamic")}
    for target, precision in CASES:
        assert precision in get(target).info.tolerances


@pytest.mark.parametrize("target,precision,model", _params(CASES, "tiny_cnn") + _params(CASES, "tiny_transformer"))
def test_exports_and_passes_fidelity(exported, tiny_export, target, precision, model):
    loaded, art, out = exported(target, precision, model)
    assert art.precision == precision and art.path.startswith(f"{loaded.spec.name}-{precision}")
    assert art.meta["reference"] in art.files and (out / art.meta["reference"]).is_file()
    assert art.meta["weight_only_layers"] >= 1
    vset = load_samples(loaded.default_data, loaded.spec).head(N_SAMPLES)
    fp32 = run_reference(loaded.module, vset.samples)
    checked = verify_artifact(get(target), art, out, vset, fp32, loaded.spec, timeout_s=300)
    res = checked.result
    assert res.status == "pass", (res.failures, res.error, res.log[-2000:])
    worst = res.summary_metrics()
    tol = get(target).info.tolerances[precision]
    assert worst["max_abs_rel"] <= tol.max_abs_rel
    # the reference is the weight simulation, not the FP32 model: an FP16 file is far closer to it
    # than an int8-weight one, and both are closer to it than the tolerance
    assert worst["max_abs_rel"] <= (0.01 if precision == "fp16" else 0.1)
    assert "compression" in res.extra  # cost vs FP32 reported apart

    # stored weights: the file saves (4 - bytes) per converted weight, compared with the FP32 file
    _, fp32_art, fp32_out = tiny_export(target, model)
    size = sum((out / f).stat().st_size for f in art.files if f != art.meta["reference"])
    fp32_size = sum((fp32_out / f).stat().st_size for f in fp32_art.files)
    n = art.meta["weight_only_params"]
    expected_saving = n * (4 - STORED_BYTES[precision])
    # allowance for what a quantized layer adds besides its weights (scales, packed params, DEQUANTIZE
    # ops): ~1-3 kB on tiny_cnn; tiny_transformer's 977k-element embedding makes the check sharp there
    assert fp32_size - size >= 0.6 * expected_saving - 4096, (fp32_size, size, n)
    assert size >= n * STORED_BYTES[precision]  # the weights are in the file


@pytest.mark.parametrize("target,precision", REFUSED)
def test_unlisted_precision_is_refused(tmp_path, target, precision):
    with pytest.raises(UserError) as err:
        export_bundle(ExportJob("tiny_cnn", target, out=str(tmp_path / "b"), quant=precision))
    assert err.value.code == "E-TARGET-PRECISION" and target in err.value.what
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("precision", WEIGHT_ONLY)
@pytest.mark.parametrize("option", [{"calibrator": "minmax"}, {"percentile": 99.9}, {"equalize": True},
                                    {"bias_correction": True}])
def test_calibration_options_refused(tmp_path, precision, option):
    with pytest.raises(UserError) as err:
        export_bundle(ExportJob("tiny_cnn", "tflite", out=str(tmp_path / "b"), quant=precision, **option))
    assert err.value.code == "E-ARGS"
    flag = "--" + next(iter(option)).replace("_", "-")
    assert flag in err.value.what


def test_keep_float_refused_for_fp16_but_not_dynamic(tmp_path):
    with pytest.raises(UserError) as err:
        export_bundle(ExportJob("tiny_cnn", "tflite", out=str(tmp_path / "b"), quant="fp16", keep_float=("classifier",)))
    assert err.value.code == "E-ARGS" and "--keep-float" in err.value.what
    with pytest.raises(UserError) as err:
        QuantRecipe(scheme="dynamic", equalize=True).with_()
    assert err.value.code == "E-ARGS"


def test_dynamic_keep_float_keeps_that_layer(tmp_path):
    """ptl dynamic with keep_float: the kept Linear is not simulated as int8 (and not quantized)."""
    loaded = BUILTIN["tiny_cnn"]()
    recipe = QuantRecipe(scheme="dynamic", keep_float=("classifier",))
    from edgekit.quant.weight_only import simulate

    sim = simulate(loaded.module, "dynamic", loaded.example_inputs, recipe)
    full = simulate(loaded.module, "dynamic", loaded.example_inputs)
    assert sim.weight_only_layers == full.weight_only_layers - 1
    w = dict(loaded.module.named_parameters())["classifier.weight"]
    assert np.array_equal(dict(sim.named_parameters())["classifier.weight"].detach().numpy(), w.detach().numpy())
