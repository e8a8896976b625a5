"""TFLite converter: export with litert-torch, run in ai-edge-litert (in process and isolated),
compare with the torch module on several inputs; errors are coded; the runner never loads TF."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from edgekit.converters.base import Artifact
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN

from converter_checks import assert_close, make_inputs, stack, torch_outputs  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgekit.converters.tflite import CONVERTER  # noqa: E402

N_SAMPLES = 4


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_transformer"])
def exported(request, tiny_export):
    """(loaded model, artifact, bundle folder) for one tiny built-in model (shared, exported once)."""
    return tiny_export(CONVERTER.info.name, request.param)


def test_export_writes_one_file_and_records_io(exported):
    loaded, artifact, out = exported
    assert artifact.target == "tflite" and artifact.precision == "fp32"
    assert artifact.path == f"{loaded.spec.name}-fp32.tflite" and artifact.files == (artifact.path,)
    assert sorted(p.name for p in out.iterdir()) == [artifact.path]  # no scratch or partial files
    assert json.loads(json.dumps(artifact.meta)) == artifact.meta
    ins = artifact.meta["inputs"]
    assert [t["name"] for t in ins] == loaded.spec.input_names
    assert [t["runtime_name"] for t in ins] == [f"args_{k}" for k in range(len(ins))]
    for t, spec_t in zip(ins, loaded.spec.inputs):
        assert t["shape"] == list(spec_t.shape)
        assert t["dtype"] == ("int32" if spec_t.dtype == "int64" else spec_t.dtype)
    assert [t["name"] for t in artifact.meta["outputs"]] == loaded.spec.output_names


class _ThreeInputs(torch.nn.Module):
    """Inputs of different shapes and dtypes, used out of order: a wrong mapping cannot pass."""

    def forward(self, mask, x, ids):
        return torch.cat([x * 2.0, mask.float() * 10.0, (ids.float() / 7.0).sum(-1, keepdim=True)], dim=-1)


def test_inputs_are_mapped_by_name_not_position(tmp_path):
    spec = ModelSpec("three", (TensorSpec("mask", (1, 3), "int64"), TensorSpec("x", (1, 5)),
                               TensorSpec("ids", (1, 2), "int64")), (TensorSpec("y", (1, 9)),), task="embedding")
    module = _ThreeInputs().eval()
    example = (torch.ones(1, 3, dtype=torch.int64), torch.randn(1, 5), torch.ones(1, 2, dtype=torch.int64))
    artifact = CONVERTER.export(module, spec, None, tmp_path, example)
    assert [t["shape"] for t in artifact.meta["inputs"]] == [[1, 3], [1, 5], [1, 2]]
    rng = np.random.default_rng(0)
    sample = [rng.integers(0, 2, (1, 3)).astype(np.int64), rng.standard_normal((1, 5)).astype(np.float32),
              rng.integers(1000, 30000, (1, 2)).astype(np.int64)]
    got = CONVERTER.runner(artifact, tmp_path)(sample)[0]
    np.testing.assert_allclose(got, torch_outputs(module, [sample])[0], rtol=1e-6, atol=1e-4)


def test_runner_rejects_wrong_inputs(exported):
    loaded, artifact, out = exported
    run = CONVERTER.runner(artifact, out)
    sample = make_inputs(loaded.spec, 1)[0]
    with pytest.raises(UserError) as err:
        run([np.zeros((2, *a.shape[1:]), a.dtype) for a in sample])
    assert err.value.code == "E-DATA-SHAPE"
    if loaded.spec.inputs[0].dtype == "int64":  # ids that int32 cannot hold are not wrapped silently
        with pytest.raises(UserError) as err:
            run([np.full_like(sample[0], 2**40), sample[1]])
        assert err.value.code == "E-DATA-SHAPE"


def test_quantization_recipe_is_refused(tmp_path):
    loaded = BUILTIN["tiny_cnn"]()
    with pytest.raises(UserError) as err:
        CONVERTER.export(loaded.module, loaded.spec, object(), tmp_path, loaded.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION"
    assert list(tmp_path.iterdir()) == []


class _Cummax(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1).values


def test_unsupported_op_is_named_and_leaves_no_file(tmp_path):
    spec = ModelSpec("cm", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_Cummax().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-OP-UNSUPPORTED"
    assert err.value.op == "aten.cummax.default" and err.value.target == "tflite"
    assert err.value.node == "cummax"
    assert list(tmp_path.iterdir()) == []


class _DataDependentBranch(torch.nn.Module):
    def forward(self, x):
        return x * 2.0 if x.sum() > 0 else x - 1.0


def test_other_export_failure_is_coded(tmp_path):
    spec = ModelSpec("dd", (TensorSpec("x", (1, 4)),), (TensorSpec("y", (1, 4)),), task="embedding")
    with pytest.raises(UserError) as err:
        CONVERTER.export(_DataDependentBranch().eval(), spec, None, tmp_path, (torch.randn(1, 4),))
    assert err.value.code == "E-EXPORT-FAILED" and "dd" in err.value.what
    assert err.value.__cause__ is not None  # the toolchain's own error stays attached
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "empty", "missing"])
def test_corrupt_artifact_is_reported(exported, tmp_path, damage):
    loaded, artifact, out = exported
    data = (out / artifact.path).read_bytes()
    if damage == "truncate":
        (tmp_path / artifact.path).write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        (tmp_path / artifact.path).write_bytes(b"")
    with pytest.raises(UserError) as err:
        CONVERTER.runner(artifact, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    sample = make_inputs(loaded.spec, 1)[0]
    res = run_artifact("tflite", artifact.to_dict(), tmp_path, [a[None] for a in sample])
    assert res.outputs is None and res.error["code"] == "E-ARTIFACT-CORRUPT"
    assert artifact.path in res.error["message"]  # our diagnosis, not some other failure in the child


def test_meta_that_does_not_match_the_file_is_reported(exported):
    loaded, artifact, out = exported
    d = json.loads(json.dumps(artifact.to_dict()))  # a copy: to_dict shares the meta dict
    d["meta"]["inputs"][0]["runtime_name"] = "args_9"
    with pytest.raises(UserError) as err:
        CONVERTER.runner(Artifact.from_dict(d), out)
    assert err.value.code == "E-ARTIFACT-CORRUPT"


def test_runner_process_never_imports_tensorflow(exported):
    """Import the converter and build and call a runner in a fresh process: no TensorFlow (Flex ops
    would run on the host and hide a model that fails on a phone), no litert-torch (export only)."""
    loaded, artifact, out = exported
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import edgekit.converters.tflite as t
        light = [m for m in ("ai_edge_litert", "litert_torch", "tensorflow") if m in sys.modules]
        art = t.Artifact.from_dict(json.loads({json.dumps(json.dumps(artifact.to_dict()))}))
        run = t.CONVERTER.runner(art, {str(out)!r})
        run([np.zeros(s["shape"], s["spec_dtype"]) for s in art.meta["inputs"]])
        print(json.dumps({{"at_import": light, "tf": "tensorflow" in sys.modules,
                          "tf_any": [m for m in sys.modules if m.split(".")[0] == "tensorflow"],
                          "litert_torch": "litert_torch" in sys.modules}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"at_import": [], "tf": False, "tf_any": [], "litert_torch": False}


def test_capability_row():
    info = CONVERTER.info
    assert info.name == "tflite" and info.suffix == ".tflite" and info.extra == "tflite"
    assert info.precisions == ("fp32", "int8", "int16x8", "fp16", "dynamic")
    assert set(info.tolerances) == set(info.precisions)
    assert info.delegates == ("xnnpack", "nnapi", "gpu")
    assert info.packages == ("litert-torch", "ai-edge-litert", "torchao")
    CONVERTER.check_available()
    assert all(v != "not installed" for v in CONVERTER.versions().values())


# ---- slow: the real models -------------------------------------------------------------------

def _real_images(spec, n: int) -> list[list[np.ndarray]]:
    """The first n shipped photos through the spec's preprocessing (resize, center crop, mean/std)."""
    from PIL import Image

    from edgekit.models import calibration_root

    pre = spec.preprocess
    paths = sorted(p for p in (calibration_root() / "images").iterdir() if p.suffix.lower() in (".jpg", ".png"))[:n]
    samples = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        scale = pre.resize / min(w, h)
        im = im.resize((max(pre.resize, round(w * scale)), max(pre.resize, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - pre.crop) // 2, (h - pre.crop) // 2
        a = np.asarray(im.crop((left, top, left + pre.crop, top + pre.crop)), np.float32) / 255.0
        a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        samples.append([np.ascontiguousarray(a.transpose(2, 0, 1)[None])])
    return samples


def _real_sentences(spec, n: int) -> list[list[np.ndarray]]:
    """The first n shipped sentences through the model's own WordPiece tokenizer, padded."""
    from transformers import AutoTokenizer

    from edgekit.models import calibration_root

    tok = AutoTokenizer.from_pretrained(spec.preprocess.tokenizer)
    lines = (calibration_root() / "text" / "sentences.txt").read_text().splitlines()[:n]
    enc = tok(lines, padding="max_length", truncation=True, max_length=spec.preprocess.max_length, return_tensors="np")
    return [[enc["input_ids"][i:i + 1].astype(np.int64), enc["attention_mask"][i:i + 1].astype(np.int64)]
            for i in range(len(lines))]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "minilm"])
def test_real_model_parity(name, tmp_path):
    loaded = BUILTIN[name]()
    artifact = CONVERTER.export(loaded.module, loaded.spec, None, tmp_path, loaded.example_inputs)
    samples = (_real_images if name == "mobilenet_v2" else _real_sentences)(loaded.spec, 4)
    assert len(samples) == 4
    stacked = [np.stack([s[k] for s in samples]) for k in range(len(loaded.spec.inputs))]
    res = run_artifact("tflite", artifact.to_dict(), tmp_path, stacked)
    assert res.error is None, res.error
    assert "XNNPACK" in res.log  # the default delegate ran, as on a phone's CPU
    assert_close(res.outputs[0], torch_outputs(loaded.module, samples))


class _LinearAttention(torch.nn.Module):
    """MobileViTv2's linear self-attention with a maximum in place of its multiply: an expand_as
    feeding ``torch.maximum``, which the TFLite converter refuses ('tfl.maximum' op operands don't
    have broadcast-compatible shapes). edgekit drops such expands only before add/sub/mul/div
    (broadcast.py; MobileViTv2's own multiply converts), so this one stays a refusal."""

    def __init__(self, d=8):
        super().__init__()
        self.d, self.qkv, self.out = d, torch.nn.Conv2d(d, 1 + 2 * d, 1), torch.nn.Conv2d(d, d, 1)

    def forward(self, x):
        q, k, v = self.qkv(x).split([1, self.d, self.d], dim=1)
        ctx = (k * torch.softmax(q, dim=-1)).sum(dim=-1, keepdim=True)
        return self.out(torch.maximum(torch.relu(v), ctx.expand_as(v)))  # MAXIMUM


def test_a_converter_refusal_is_unsupported_at_the_models_line(tmp_path):
    import inspect

    from edgekit.errors import UnsupportedOpError
    from edgekit.spec import ModelSpec, TensorSpec

    spec = ModelSpec("lin", (TensorSpec("x", (1, 8, 4, 16)),), (TensorSpec("y", (1, 8, 4, 16)),))
    with pytest.raises(UnsupportedOpError) as err:
        CONVERTER.export(_LinearAttention().eval(), spec, None, tmp_path, (torch.randn(1, 8, 4, 16),))
    lines, first = inspect.getsourcelines(_LinearAttention.forward)
    line = first + next(i for i, text in enumerate(lines) if "# MAXIMUM" in text)
    assert err.value.op == "tfl.maximum" and err.value.source.endswith(f"test_tflite.py:{line}")
    assert "expand" in err.value.fix and list(tmp_path.iterdir()) == []
