"""ncnn converter: pnnx export to .param/.bin (fp16 off), legalised pnnx leftovers, run in the ncnn
bindings with strict FP32 (in process and isolated), compared with the torch module; errors are coded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.converters.base import Artifact
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN

from converter_checks import assert_close, make_inputs, stack, torch_outputs  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec

ncnn = pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from edgekit.converters.ncnn import CONVERTER  # noqa: E402

N_SAMPLES = 4


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_transformer"])
def exported(request, tiny_export):
    """(loaded model, artifact, bundle folder) for one tiny built-in model (shared, exported once)."""
    return tiny_export(CONVERTER.info.name, request.param)


def test_export_writes_param_and_bin_only(exported):
    loaded, artifact, out = exported
    stem = f"{loaded.spec.name}-fp32"
    assert (artifact.target, artifact.precision, artifact.path) == ("ncnn", "fp32", stem + ".param")
    assert artifact.files == (stem + ".param", stem + ".bin")
    assert sorted(p.name for p in out.iterdir()) == sorted(artifact.files)  # no pnnx scratch files
    assert json.loads(json.dumps(artifact.meta)) == artifact.meta
    meta = artifact.meta
    assert meta["inputs"] == ["in0", "in1"][:len(loaded.spec.inputs)] and meta["outputs"] == ["out0"]
    assert meta["output_shapes"] == [list(t.shape) for t in loaded.spec.outputs]
    # token ids feed the Embed layer (read as int32 by ncnn); the mask is float arithmetic
    expected = {"tiny_cnn": ["float32"], "tiny_transformer": ["int32", "float32"]}[loaded.spec.name]
    assert meta["input_feed"] == expected
    layers = [ln.split() for ln in (out / artifact.path).read_text().splitlines()[2:]]
    assert [ln[1] for ln in layers if ln[0] == "Input"] == meta["inputs"]
    assert all(ncnn.layer_to_index(ln[0]) >= 0 for ln in layers), "a layer type ncnn does not know was shipped"


def test_weights_are_stored_fp32(exported):
    """pnnx defaults to fp16 weights (biases stay fp32 either way): the classifier's weight matrix
    must be in the .bin as raw float32."""
    loaded, artifact, out = exported
    weight = loaded.module.classifier.weight.detach().numpy()
    stored = (out / artifact.files[1]).read_bytes()
    assert weight.astype("<f4").tobytes() in stored and weight.astype("<f2").tobytes() not in stored


def test_only_pnnx_leftovers_are_legalised(exported):
    loaded, artifact, _ = exported
    kinds = sorted({entry.split()[0] for entry in artifact.meta["legalised_layers"]})
    # the CNN converts as is; the transformer's mask cast and the unbind of its 5-D q/k/v tensor do not
    assert kinds == {"tiny_cnn": [], "tiny_transformer": ["Tensor.to", "torch.unbind"]}[loaded.spec.name]


def test_runner_is_strict_fp32_one_thread(exported):
    loaded, artifact, out = exported
    opt = CONVERTER.runner(artifact, out, threads=1).net.opt
    assert not (opt.use_vulkan_compute or opt.use_fp16_storage or opt.use_fp16_packed or opt.use_fp16_arithmetic)
    assert opt.num_threads == 1


class _MaskOps(nn.Module):
    """The ops transformers builds its padding mask from: int -> bool cast, `&` with a bool constant,
    where(bool, tensor, scalar), and an int -> float cast."""

    def __init__(self):
        super().__init__()
        self.register_buffer("allowed", torch.tensor([[True] * 6 + [False, True]]))

    def forward(self, x, mask):
        keep = mask.to(torch.bool) & self.allowed
        return torch.where(keep, x, -1e4) + mask.to(x.dtype)


def test_bool_mask_ops_are_rewritten_exactly(tmp_path):
    spec = ModelSpec("m", (TensorSpec("x", (1, 8)), TensorSpec("mask", (1, 8), "int64")), (TensorSpec("y", (1, 8)),))
    module = _MaskOps().eval()
    artifact = CONVERTER.export(module, spec, None, tmp_path, (torch.randn(1, 8), torch.ones(1, 8, dtype=torch.int64)))
    kinds = sorted(entry.split()[0] for entry in artifact.meta["legalised_layers"])
    assert kinds == ["MemoryData", "Tensor.to", "Tensor.to", "pnnx.Expression", "torch.where"]
    run = CONVERTER.runner(artifact, tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    for mask in ([[1, 0, 2, 1, 0, 1, 1, -3]], [[0] * 8], [[1] * 8]):  # any non-zero int is True
        mask = np.array(mask, dtype=np.int64)
        np.testing.assert_array_equal(run([x, mask])[0], torch_outputs(module, [[x, mask]])[0])


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x).mean(1)


def test_transformer_encoder_layer_fast_path_is_off_while_tracing(tmp_path):
    """Under no_grad nn.TransformerEncoderLayer takes its fused fast path, which pnnx cannot convert."""
    spec = ModelSpec("enc", (TensorSpec("x", (1, 16, 32)),), (TensorSpec("y", (1, 32)),), task="embedding")
    module = _Encoder().eval()
    x = torch.randn(1, 16, 32)
    with torch.no_grad():
        artifact = CONVERTER.export(module, spec, None, tmp_path, (x,))
    assert torch.backends.mha.get_fastpath_enabled()  # restored
    assert_close(CONVERTER.runner(artifact, tmp_path)([x.numpy()])[0], torch_outputs(module, [[x.numpy()]])[0])


class _Cumprod(nn.Module):
    def forward(self, x):
        return torch.cumprod(x, dim=-1).relu()


def test_op_ncnn_lacks_is_named_and_leaves_no_file(tmp_path):
    spec = ModelSpec("c", (TensorSpec("x", (1, 8)),), (TensorSpec("y", (1, 8)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_Cumprod().eval(), spec, None, tmp_path, (torch.randn(1, 8),))
    assert (err.value.code, err.value.target, err.value.op, err.value.node) == \
        ("E-OP-UNSUPPORTED", "ncnn", "torch.cumprod", "torch.cumprod_0")
    assert list(tmp_path.iterdir()) == []


class _Broken(nn.Module):
    def forward(self, x):
        return x @ torch.ones(3, 2)  # (1, 4) @ (3, 2): fails while tracing


def test_untraceable_model_is_export_failed(tmp_path):
    spec = ModelSpec("b", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 2)),), task="embedding")
    with pytest.raises(UserError) as err:
        CONVERTER.export(_Broken().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-EXPORT-FAILED" and "torch.jit.trace" in err.value.what
    assert list(tmp_path.iterdir()) == []


def test_quantization_recipe_is_refused(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(loaded.module, loaded.spec, object(), tmp_path, loaded.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["bin_truncated", "bin_extra_bytes", "bin_missing", "param_truncated",
                                    "param_empty", "param_garbage"])
def test_corrupt_artifact_is_reported(exported, tmp_path, damage):
    loaded, artifact, out = exported
    param, weights = ((out / f).read_bytes() for f in artifact.files)
    which, how = damage.split("_", 1)
    if which == "bin":
        param_new, bin_new = param, {"truncated": weights[: len(weights) // 2], "extra_bytes": weights + b"\0" * 64,
                                     "missing": None}[how]
    else:  # garbage keeps the size: only ncnn's own parser can notice
        bin_new, param_new = weights, {"truncated": param[: len(param) // 2], "empty": b"",
                                       "garbage": (b"\x00\xffnot a param\n" * len(param))[:len(param)]}[how]
    for name, data in zip(artifact.files, (param_new, bin_new)):
        if data is not None:
            (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError) as err:
        CONVERTER.runner(artifact, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    if damage != "bin_extra_bytes":  # without the recorded sizes, ncnn's load codes must catch it too
        unsized = Artifact.from_dict({**artifact.to_dict(), "meta": {k: v for k, v in artifact.meta.items()
                                                                     if k != "file_bytes"}})
        with pytest.raises(UserError) as err:
            CONVERTER.runner(unsized, tmp_path)
        assert err.value.code == "E-ARTIFACT-CORRUPT"
    if damage in ("bin_truncated", "param_garbage"):  # the isolated runner reports it instead of raising
        res = run_artifact("ncnn", artifact.to_dict(), tmp_path, stack(make_inputs(loaded.spec, 1, pad_step=4)))
        assert res.outputs is None and res.error["code"] == "E-ARTIFACT-CORRUPT"


def test_runner_rejects_a_batch(exported):
    loaded, artifact, out = exported
    run = CONVERTER.runner(artifact, out)
    batch = [np.concatenate([a, a]) for a in make_inputs(loaded.spec, 1, pad_step=4)[0]]
    with pytest.raises(UserError) as err:
        run(batch)
    assert err.value.code == "E-DATA-SHAPE"


def test_capability_row():
    info = CONVERTER.info
    assert (info.name, info.suffix, info.extra, info.precisions, info.delegates, info.deprecated) == \
        ("ncnn", ".param", "ncnn", ("fp32", "int8", "fp16"), ("cpu", "vulkan"), None)
    assert info.packages == ("pnnx", "ncnn") and set(info.tolerances) == set(info.precisions)
    CONVERTER.check_available()
    assert all(v != "not installed" for v in CONVERTER.versions().values())


def test_artifact_round_trips_through_dict(exported):
    _, artifact, out = exported
    again = Artifact.from_dict(json.loads(json.dumps(artifact.to_dict())))
    assert again == artifact and CONVERTER.runner(again, out) is not None


# ---- slow: the real models, on the shipped photos and sentences ------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_model_parity(name, tmp_path):
    from edgekit.data import load_samples

    loaded = BUILTIN[name]()
    artifact = CONVERTER.export(loaded.module, loaded.spec, None, tmp_path, loaded.example_inputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(artifact.files)
    samples = [list(s) for s in load_samples(loaded.default_data, loaded.spec, limit=N_SAMPLES).samples]
    assert len(samples) == N_SAMPLES
    if name == "minilm":  # the shipped sentences are short: the mask has padding, which must be honoured
        assert all(s[1].min() == 0 for s in samples)
    res = run_artifact("ncnn", artifact.to_dict(), tmp_path, stack(samples))
    assert res.error is None, (res.error, res.log)
    assert_close(res.outputs[0], torch_outputs(loaded.module, samples))
