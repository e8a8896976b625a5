"""PyTorch Mobile converter: trace/script + freeze + lite-interpreter file, run in the lite
interpreter (in process and isolated), compared with the torch module; errors are coded."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from edgekit.converters.ptl import CONVERTER
from edgekit.data import load_samples
from edgekit.errors import UserError
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN

from converter_checks import assert_close, make_inputs, stack, torch_outputs  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec

N_SAMPLES = 4


@torch.library.custom_op("edgekit_ptl_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    """An op registered only in this test process: a fresh runtime process does not have it."""
    return x * 2.0 + 1.0


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_transformer"])
def exported(request, tiny_export):
    """(loaded model, artifact, bundle folder) for one tiny built-in model (shared, exported once)."""
    return tiny_export(CONVERTER.info.name, request.param)


def test_export_writes_one_file(exported):
    loaded, artifact, out = exported
    assert artifact.target == "ptl" and artifact.precision == "fp32"
    assert artifact.path == f"{loaded.spec.name}-fp32.ptl" and artifact.files == (artifact.path,)
    assert sorted(p.name for p in out.iterdir()) == [artifact.path]  # no partial file left
    assert json.loads(json.dumps(artifact.meta)) == artifact.meta
    assert artifact.meta["inputs"] == loaded.spec.input_names
    assert artifact.meta["capture"] == "trace"  # both tiny models trace faithfully


class _ValueDependent(torch.nn.Module):
    """Python control flow on tensor values: a trace would freeze one branch and one scale."""

    def forward(self, x):
        scale = float(x.abs().max())
        if scale > 1.0:
            return x / scale
        return x * 3.0


def test_value_dependent_model_is_scripted(tmp_path):
    spec = ModelSpec("vd", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    module = _ValueDependent().eval()
    # With this example a trace would keep only "x * 3" (max |x| <= 1).
    artifact = CONVERTER.export(module, spec, None, tmp_path, (torch.full((1, 4), 0.5),))
    assert artifact.meta["capture"] == "script"
    run = CONVERTER.runner(artifact, tmp_path)
    rng = np.random.default_rng(0)
    for scale in (5.0, 0.1):  # both branches, several maxima
        x = (scale * rng.standard_normal((1, 4))).astype(np.float32)
        np.testing.assert_allclose(run([x])[0], torch_outputs(module, [[x]])[0], rtol=1e-6)


def test_deprecation_is_said_once_by_edgekit(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        artifact = CONVERTER.export(loaded.module, loaded.spec, None, tmp_path, loaded.example_inputs)
        CONVERTER.runner(artifact, tmp_path)
    messages = [str(w.message) for w in caught]
    assert [m for m in messages if "ExecuTorch" in m] == [CONVERTER.info.deprecated]
    assert not [m for m in messages if "deprecated" in m and m != CONVERTER.info.deprecated], messages


def test_quantization_recipe_is_refused(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(loaded.module, loaded.spec, object(), tmp_path, loaded.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"
    assert list(tmp_path.iterdir()) == []


class _Mystery(torch.nn.Module):
    def forward(self, x):
        return torch.ops.edgekit_ptl_test.mystery(x).relu()


def test_op_missing_from_the_runtime_is_named(tmp_path):
    spec = ModelSpec("mystery", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    artifact = CONVERTER.export(_Mystery().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_allclose(CONVERTER.runner(artifact, tmp_path)([x])[0], np.maximum(2 * x + 1, 0), rtol=1e-6)
    res = run_artifact("ptl", artifact.to_dict(), tmp_path, [x[None]])  # a process without the op
    assert res.outputs is None and res.error["code"] == "E-OP-UNSUPPORTED"
    assert "edgekit_ptl_test::mystery" in res.error["message"]


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing"])
def test_corrupt_artifact_is_reported(exported, tmp_path, damage):
    loaded, artifact, out = exported
    data = (out / artifact.path).read_bytes()
    if damage == "truncate":
        (tmp_path / artifact.path).write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        (tmp_path / artifact.path).write_bytes(b"")
    with pytest.raises(UserError) as err:
        CONVERTER.runner(artifact, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    res = run_artifact("ptl", artifact.to_dict(), tmp_path, stack(make_inputs(loaded.spec, 1)))
    assert res.outputs is None and res.error["code"] == "E-ARTIFACT-CORRUPT"


def test_capability_row():
    info = CONVERTER.info
    assert (info.name, info.suffix, info.extra, info.precisions, info.delegates, info.modules, info.packages) == \
        ("ptl", ".ptl", "ptl", ("fp32", "int8", "dynamic"), ("cpu",), (), ("torch",))
    assert set(info.tolerances) == set(info.precisions)
    assert info.deprecated and "ExecuTorch" in info.deprecated
    CONVERTER.check_available()


# ---- slow: the real models, on the shipped photos and sentences ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_model_parity(name, tmp_path):
    loaded = BUILTIN[name]()
    # Exported from the spec's example (for minilm: no padding at all); checked on real samples,
    # whose padded attention masks a trace that froze the mask away would get wrong.
    artifact = CONVERTER.export(loaded.module, loaded.spec, None, tmp_path, loaded.example_inputs)
    assert artifact.meta["capture"] == "trace"
    samples = [list(s) for s in load_samples(loaded.default_data, loaded.spec, limit=N_SAMPLES).samples]
    assert len(samples) == N_SAMPLES
    res = run_artifact("ptl", artifact.to_dict(), tmp_path, stack(samples))
    assert res.error is None, res.error
    assert_close(res.outputs[0], torch_outputs(loaded.module, samples))
