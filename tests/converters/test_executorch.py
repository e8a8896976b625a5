"""ExecuTorch converter: FP32 parity in process and in a subprocess, the delegation summary, coded errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir")

from edgekit.converters.executorch import CONVERTER  # noqa: E402
from edgekit.errors import UnsupportedOpError, UserError  # noqa: E402
from edgekit.isolate import run_artifact  # noqa: E402
from edgekit.models import BUILTIN  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec  # noqa: E402

TARGET = CONVERTER.info.name


def samples(spec: ModelSpec, n: int, seed: int = 0) -> list[np.ndarray]:
    """n inputs stacked as (n, *shape): seeded images, or token ids with end-padded masks."""
    rng = np.random.default_rng(seed)
    first = spec.inputs[0]
    if first.dtype == "float32":
        return [rng.standard_normal((n, *t.shape)).astype(np.float32) for t in spec.inputs]
    length = first.shape[1]
    ids = rng.integers(1000, 30000, (n, 1, length)).astype(np.int64)
    mask = np.ones((n, 1, length), np.int64)
    for i in range(n):
        keep = int(rng.integers(2, length)) if i else length  # sample 0 unpadded, the rest padded at the end
        mask[i, 0, keep:] = 0
        ids[i, 0, keep:] = 0
    return [ids, mask]


def reference(model: nn.Module, stacked: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return np.stack([model(*(torch.from_numpy(a[i]) for a in stacked)).numpy() for i in range(len(stacked[0]))])


def assert_parity(out: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> None:
    assert out.shape == ref.shape and out.dtype == np.float32
    err, scale = float(np.abs(out - ref).max()), float(np.abs(ref).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} * {scale:.3g}"
    assert (out.argmax(-1) == ref.argmax(-1)).all()


@pytest.fixture(scope="module")
def exported(tiny_export):
    """name -> (LoadedModel, Artifact, bundle folder), each tiny model exported once (shared)."""
    return lambda name: tiny_export(TARGET, name)


@pytest.mark.parametrize("name", ["tiny_cnn", "tiny_transformer"])
def test_artifact_files_and_meta(exported, name):
    lm, art, root = exported(name)
    assert art.path == f"{name}-fp32.pte" and art.files == (art.path,) and art.precision == "fp32"
    assert sorted(p.name for p in root.iterdir()) == [art.path]  # no temp or scratch file left
    assert (root / art.path).read_bytes()[4:8] == b"ET12"
    meta = json.loads(json.dumps(art.meta))  # JSON-serialisable, survives the round trip
    assert [t["name"] for t in meta["inputs"]] == lm.spec.input_names
    assert [t["dtype"] for t in meta["inputs"]] == [t.dtype for t in lm.spec.inputs]
    d = meta["delegation"]
    assert d["backends"] == {"XnnpackBackend": d["subgraphs"]} and d["subgraphs"] >= 1
    assert d["delegated_nodes"] == sum(d["delegated_ops"].values()) > 0
    assert d["portable_nodes"] == sum(d["portable_ops"].values())
    assert "aten.convolution.default" not in d["portable_ops"] and "getitem" not in d["portable_ops"]


def test_delegation_counts_what_stays_portable(exported):
    cnn = exported("tiny_cnn")[1].meta["delegation"]
    assert cnn["subgraphs"] == 1 and cnn["portable_nodes"] == 0  # every op of the CNN runs in XNNPACK
    assert cnn["delegated_ops"]["aten.convolution.default"] == 5
    tf = exported("tiny_transformer")[1].meta["delegation"]
    # XNNPACK (executorch 1.5) takes no LayerNorm or embedding: 2 layers x 2 norms stay portable
    assert tf["portable_ops"].get("aten.native_layer_norm.default") == 4
    assert tf["portable_ops"].get("aten.embedding.default") == 1
    assert tf["delegated_ops"]["aten.linear.default"] >= 9


def test_runner_sets_threads_and_checks_inputs(exported):
    from executorch.extension.pybindings import portable_lib

    lm, art, root = exported("tiny_cnn")
    x = samples(lm.spec, 1)[0][0]
    try:
        run2 = CONVERTER.runner(art, root, threads=2)
        assert portable_lib._threadpool_get_thread_count() == 2
        out2 = run2([x])[0]
        out1 = CONVERTER.runner(art, root, threads=1)([x])[0]
        assert portable_lib._threadpool_get_thread_count() == 1
    finally:
        portable_lib._unsafe_reset_threadpool(1)
    np.testing.assert_allclose(out2, out1, rtol=0, atol=1e-5)
    with pytest.raises(UserError) as err:
        run2([x[:, :, :16]])
    assert err.value.code == "E-DATA-SHAPE"
    with pytest.raises(UserError) as err:
        run2([x.astype(np.int64)])
    assert err.value.code == "E-DATA-SHAPE"
    with pytest.raises(UserError) as err:
        CONVERTER.runner(art, root, threads=0)
    assert err.value.code == "E-ARGS"


@pytest.mark.parametrize("damage", ["truncate", "garbage", "text", "missing"])
def test_corrupt_artifact_is_a_coded_error(exported, tmp_path, damage):
    lm, art, root = exported("tiny_transformer")
    data = (root / art.path).read_bytes()
    bad = tmp_path / art.path
    if damage == "truncate":
        bad.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":  # random bytes used to abort the runtime process (see the module doc)
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "text":
        bad.write_bytes(b"not an ExecuTorch program\n" * 50)
    with pytest.raises(UserError) as err:
        CONVERTER.runner(art, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    outcome = run_artifact(TARGET, art.to_dict(), tmp_path, samples(lm.spec, 1))
    assert outcome.outputs is None and outcome.error["code"] == "E-ARTIFACT-CORRUPT"


def test_a_delegate_that_refuses_the_program_is_not_called_corrupt(exported, tmp_path):
    """The program parses but XNNPACK's init rejects its payload (as it rejected an int8 max-pool
    with differing input/output scales): E-RUNTIME-FAILED, not 'the file is truncated'."""
    lm, art, root = exported("tiny_cnn")
    data = bytearray((root / art.path).read_bytes())
    at = data.find(b"XN01")  # the XNNPACK payload's flatbuffer identifier
    assert at > 0
    data[at:at + 4] = b"ZZ99"
    (tmp_path / art.path).write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        CONVERTER.runner(art, tmp_path)
    assert err.value.code == "E-RUNTIME-FAILED" and "prepare its method" in err.value.what


def test_an_object_that_is_not_a_quant_recipe_is_refused(tmp_path):
    lm = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(lm.module, lm.spec, object(), tmp_path, lm.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"
    assert list(tmp_path.iterdir()) == []


@torch.library.custom_op("edgekit_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x):
    return torch.empty_like(x)


class _CustomOp(nn.Module):
    def forward(self, x):
        return _twice(x) + 1


class _Inverse(nn.Module):
    def forward(self, x):
        return torch.linalg.inv(x)


class _LayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x)


def _spec(shape) -> ModelSpec:
    return ModelSpec("probe", (TensorSpec("x", shape),), (TensorSpec("y", shape),))


@pytest.mark.parametrize("model, shape, op", [
    (_CustomOp(), (1, 2, 3), "edgekit_test::twice"),  # no out-variant kernel
    (_Inverse(), (1, 3, 3), "aten.linalg_inv_ex.default"),  # not in core ATen
])
def test_unsupported_op_is_named(tmp_path, model, shape, op):
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(model.eval(), _spec(shape), None, tmp_path, (torch.randn(shape),))
    assert err.value.code == "E-OP-UNSUPPORTED" and err.value.op == op and err.value.target == TARGET
    assert list(tmp_path.iterdir()) == []  # a failed export leaves nothing behind


def test_example_inputs_with_zero_strides(tmp_path):
    """numpy gives a size-1 batch dim stride 0 (token arrays from a tokenizer do); ExecuTorch's
    emitter rejects '0 in strides' unless the converter makes the example inputs standard."""
    x = torch.from_numpy(np.lib.stride_tricks.as_strided(np.arange(32, dtype=np.float32), (1, 4, 8), (0, 32, 4)))
    assert x.stride()[0] == 0
    model = _LayerNorm().eval()
    art = CONVERTER.export(model, _spec((1, 4, 8)), None, tmp_path, (x,))
    out = CONVERTER.runner(art, tmp_path)([x.numpy()])[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=0, atol=1e-5)


class _TalkingHead(nn.Module):
    """EfficientFormerV2's attention pattern: a 1x1 conv over the heads, then softmax over the keys."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.mix(x).softmax(dim=-1)


def test_softmax_after_conv_runs_over_the_right_axis(tmp_path):
    """ExecuTorch 1.5.1's XNNPACK layout pass left the conv output channels-last, so the softmax ran
    over the channels (max error 0.56 on this block); the converter makes the pass convert back."""
    torch.manual_seed(0)
    model, x = _TalkingHead().eval(), torch.randn(1, 8, 49, 49)
    art = CONVERTER.export(model, _spec((1, 8, 49, 49)), None, tmp_path, (x,))
    assert art.meta["delegation"]["subgraphs"] >= 1  # softmax still runs in XNNPACK, in NCHW
    out = CONVERTER.runner(art, tmp_path)([x.numpy()])[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=0, atol=1e-5)


class _DataDependent(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x - 1


def test_model_torch_export_cannot_capture(tmp_path):
    with pytest.raises(UserError) as err:
        CONVERTER.export(_DataDependent().eval(), _spec((1, 4)), None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-EXPORT-FAILED" and "torch.export" in err.value.what
    assert list(tmp_path.iterdir()) == []


def test_op_without_host_kernel_is_named(tmp_path, monkeypatch):
    import executorch.runtime as rt

    names = rt.Runtime.get().operator_registry.operator_names
    monkeypatch.setattr(rt.OperatorRegistry, "operator_names",
                        property(lambda self: names - {"aten::native_layer_norm.out"}))
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_LayerNorm().eval(), _spec((1, 4, 8)), None, tmp_path, (torch.randn(1, 4, 8),))
    assert err.value.op == "aten::native_layer_norm.out" and err.value.node
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_model_fp32_parity(tmp_path, name):
    from edgekit.data import load_samples

    lm = BUILTIN[name]()
    art = CONVERTER.export(lm.module, lm.spec, None, tmp_path, lm.example_inputs)
    stacked = load_samples(lm.default_data, lm.spec, limit=4).stacked()  # real photos / sentences
    ref = reference(lm.module, stacked)
    outcome = run_artifact(TARGET, art.to_dict(), tmp_path, stacked)
    assert outcome.error is None, outcome.error
    assert_parity(outcome.outputs[0], ref)
    assert art.meta["delegation"]["subgraphs"] >= 1
