"""ONNX converter: dynamo export to one .onnx file with the spec's names, run in onnxruntime
(in process and isolated), compared with the torch module; errors are coded."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.converters.base import Artifact
from edgekit.data import load_samples
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN

from converter_checks import assert_close, make_inputs, stack, torch_outputs  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from edgekit.converters.onnx import CONVERTER  # noqa: E402

N_SAMPLES = 4


@torch.library.custom_op("edgekit_onnx_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    """An op torch.export captures but that has no ONNX translation."""
    return x * 2.0 + 1.0


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_transformer"])
def exported(request, tiny_export):
    """(loaded model, artifact, bundle folder) for one tiny built-in model (shared, exported once)."""
    return tiny_export(CONVERTER.info.name, request.param)


def test_export_writes_one_self_contained_file(exported):
    loaded, artifact, out = exported
    assert artifact.target == "onnx" and artifact.precision == "fp32"
    assert artifact.path == f"{loaded.spec.name}-fp32.onnx" and artifact.files == (artifact.path,)
    assert sorted(p.name for p in out.iterdir()) == [artifact.path]  # no .data file, no scratch folder
    assert json.loads(json.dumps(artifact.meta)) == artifact.meta
    model = onnx.load(str(out / artifact.path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == loaded.spec.input_names
    assert [o.name for o in model.graph.output] == loaded.spec.output_names
    assert artifact.meta["opset"] == next(o.version for o in model.opset_import if o.domain == "")


def test_the_shipped_file_holds_no_stack_traces_or_build_paths(exported):
    """torch.onnx writes each node's Python stack (file paths of the build machine) into the file."""
    loaded, artifact, out = exported
    model = onnx.load(str(out / artifact.path))
    assert len(model.graph.node) > 5
    assert not any(n.metadata_props for n in model.graph.node)
    assert not model.graph.metadata_props
    raw = (out / artifact.path).read_bytes()
    for leak in (b"stack_trace", b"site-packages", str(Path(torch.__file__).parent).encode(),
                 str(Path(__file__).parents[2]).encode()):
        assert leak not in raw


class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(100, 8)

    def forward(self, ids):
        return self.emb(ids).mean(1)


def test_output_name_already_used_inside_the_graph(tmp_path):
    """torch names the embedding lookup's value "embedding" too (as in minilm): still a valid file."""
    spec = ModelSpec("e", (TensorSpec("ids", (1, 5), "int64"),), (TensorSpec("embedding", (1, 8)),), task="embedding")
    torch.manual_seed(0)
    module = _Embed().eval()
    artifact = CONVERTER.export(module, spec, None, tmp_path, (torch.ones(1, 5, dtype=torch.int64),))
    ids = np.array([[3, 1, 4, 1, 5]], dtype=np.int64)
    got, want = CONVERTER.runner(artifact, tmp_path)([ids])[0], torch_outputs(module, [[ids]])[0]
    # float32 sums in another order: a bound relative to the output's scale (an element-wise rtol of
    # 1e-6 failed on an element 100x smaller than the largest, 1.2e-6 off)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(np.abs(want).max()))


class _Mystery(torch.nn.Module):
    def forward(self, x):
        return torch.ops.edgekit_onnx_test.mystery(x).relu()


def test_op_without_onnx_translation_is_named_and_leaves_no_file(tmp_path):
    spec = ModelSpec("m", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_Mystery().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert (err.value.code, err.value.target, err.value.op, err.value.node) == \
        ("E-OP-UNSUPPORTED", "onnx", "edgekit_onnx_test.mystery.default", "mystery")
    assert list(tmp_path.iterdir()) == []


class _DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2.0 if x.sum() > 0 else x - 1.0


def test_model_torch_export_cannot_capture_is_export_failed(tmp_path):
    spec = ModelSpec("d", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    with pytest.raises(UserError) as err:
        CONVERTER.export(_DataDependent().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-EXPORT-FAILED" and "data-dependent" in err.value.what
    assert list(tmp_path.iterdir()) == []


def test_op_onnxruntime_lacks_is_named(tmp_path):
    """A valid file whose Relu takes int16, which onnxruntime's CPU provider does not implement."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu_int16")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT16, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT16, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(tmp_path / "r.onnx"))
    artifact = Artifact("onnx", "fp32", "r.onnx", ("r.onnx",), {"inputs": ["x"], "input_dtypes": ["int16"], "outputs": ["y"]})
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.runner(artifact, tmp_path)
    assert (err.value.op, err.value.node) == ("Relu (opset 14)", "relu_int16")


def test_quantization_recipe_is_refused(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(loaded.module, loaded.spec, object(), tmp_path, loaded.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"
    assert list(tmp_path.iterdir()) == []


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
    res = run_artifact("onnx", artifact.to_dict(), tmp_path, stack(make_inputs(loaded.spec, 1)))
    assert res.outputs is None and res.error["code"] == "E-ARTIFACT-CORRUPT"


def test_capability_row():
    info = CONVERTER.info
    assert (info.name, info.suffix, info.extra, info.precisions, info.delegates, info.deprecated) == \
        ("onnx", ".onnx", "onnx", ("fp32", "int8", "dynamic"), ("cpu",), None)
    assert info.packages == ("onnx", "onnxruntime", "onnxscript") and set(info.tolerances) == set(info.precisions)
    CONVERTER.check_available()
    assert all(v != "not installed" for v in CONVERTER.versions().values())


# ---- slow: the real models, on the shipped photos and sentences ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_model_parity(name, tmp_path):
    loaded = BUILTIN[name]()
    artifact = CONVERTER.export(loaded.module, loaded.spec, None, tmp_path, loaded.example_inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [artifact.path]
    samples = [list(s) for s in load_samples(loaded.default_data, loaded.spec, limit=N_SAMPLES).samples]
    assert len(samples) == N_SAMPLES
    res = run_artifact("onnx", artifact.to_dict(), tmp_path, stack(samples))
    assert res.error is None, res.error
    assert_close(res.outputs[0], torch_outputs(loaded.module, samples))
