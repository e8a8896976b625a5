"""Delegate coverage of real .tflite files: the reader, XNNPACK measured in the LiteRT interpreter,
and the NNAPI / GPU rule files checked against small models built to hit their rules."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgekit.converters import get
from edgekit.errors import UserError
from edgekit.inspect import inspect_artifact
from edgekit.converters.tflite.coverage import gpu, nnapi, rules, xnnpack
from edgekit.converters.tflite.coverage.model import read_tflite
from edgekit.models import BUILTIN
from edgekit.spec import ModelSpec, TensorSpec

TINY_OPS = ["TRANSPOSE", "PAD", "CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD", "CONV_2D", "MEAN",
            "FULLY_CONNECTED"]


class _Mixed(nn.Module):
    """conv -> CUMSUM (no XNNPACK, NNAPI or GPU support) -> conv -> EXP, ABS (NNAPI only from API 29;
    ABS is not in the GPU delegate's list)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.cumsum(self.a(x).relu(), dim=1)
        return torch.exp(self.b(y)).abs()


class _Flipped(nn.Module):
    """conv -> flip (REVERSE_V2: no GPU delegate parser) -> conv -> EXP, ABS."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = torch.flip(self.a(x).relu(), dims=(1,))
        return torch.exp(self.b(y)).abs()


def _export_small(module, tmp_path_factory, name):
    torch.manual_seed(0)
    spec = ModelSpec(name, (TensorSpec("x", (1, 3, 8, 8), layout="NCHW"),), (TensorSpec("y", (1, 8, 8, 8)),),
                     task="embedding")
    out = tmp_path_factory.mktemp(name)
    art = get("tflite").export(module.eval(), spec, None, out, (torch.randn(1, 3, 8, 8),))
    return out / art.path


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    return _export_small(_Flipped(), tmp_path_factory, "flipped")


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory):
    """tiny_cnn as a real INT8 .tflite (int8 per-channel CONV_2D/DEPTHWISE_CONV_2D v3, QUANTIZE/DEQUANTIZE)."""
    from edgekit.data import load_samples
    from edgekit.quant import QuantRecipe

    loaded = BUILTIN["tiny_cnn"]()
    data = load_samples(loaded.default_data, loaded.spec).head(16)
    out = tmp_path_factory.mktemp("tiny_int8")
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    recipe = QuantRecipe(calibrator="minmax", equalize=False, bias_correction=False)
    art = get("tflite").export(loaded.module, loaded.spec, recipe, out, example, calibration=data)
    return out / art.path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    loaded = BUILTIN["tiny_cnn"]()
    out = tmp_path_factory.mktemp("tiny")
    art = get("tflite").export(loaded.module, loaded.spec, None, out, loaded.example_inputs)
    return out / art.path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    torch.manual_seed(0)
    spec = ModelSpec("mixed", (TensorSpec("x", (1, 3, 8, 8), layout="NCHW"),), (TensorSpec("y", (1, 8, 8, 8)),),
                     task="embedding")
    out = tmp_path_factory.mktemp("mixed")
    art = get("tflite").export(_Mixed().eval(), spec, None, out, (torch.randn(1, 3, 8, 8),))
    return out / art.path


def test_reader_lists_every_op(tiny):
    model = read_tflite(tiny)
    assert len(model.subgraphs) == 1
    sg = model.main
    assert [op.builtin for op in sg.ops] == TINY_OPS
    fc = sg.ops[-1]
    assert fc.version == 5 and all(op.version == 1 for op in sg.ops[:-1])
    conv = sg.ops[2]
    ins = sg.op_inputs(conv)
    assert [t.dtype for t in ins] == ["float32"] * 3 and [t.constant for t in ins] == [False, True, True]
    assert ins[1].shape == (16, 3, 3, 3) and ins[1].quantization == "none"
    assert sg.tensors[sg.inputs[0]].shape == (1, 3, 32, 32)


def test_xnnpack_is_measured_on_the_interpreter(tiny, mixed):
    m = xnnpack.measure(tiny)
    assert (m.nodes, m.delegate_nodes_without, m.partitions) == (10, 0, (tuple(range(10)),))
    m = xnnpack.measure(mixed)
    names = list(m.node_names)
    assert names[3] == "CUMSUM"
    assert m.partitions == ((0, 1, 2), (4, 5, 6, 7, 8))  # XNNPACK has no CUMSUM: the graph splits in two


def test_nnapi_levels(mixed):
    sg = read_tflite(mixed).main
    cov = nnapi.analyse(sg)
    assert sorted(cov) == list(range(27, 35))
    why = {lv: {i: r for i, _, r in c.cpu_ops} for lv, c in cov.items()}
    assert why[27][0] == "needs API 28"  # TRANSPOSE is NNAPI 1.1
    assert why[28][6] == "needs API 29" and why[28][7] == "needs API 29"  # EXP, ABS are NNAPI 1.2
    assert set(why[28]) == {3, 6, 7}
    for lv in range(29, 35):
        assert set(why[lv]) == {3} and cov[lv].delegated == 8 and len(cov[lv].partitions) == 2
    assert "these run on CPU: CUMSUM (op 3)" in cov[29].summary()


def test_gpu_rules_and_partition_limit(mixed, flipped, tiny):
    # the delegate source has parsers for CUMSUM (float input, constant axis), EXP, ABS and TRANSPOSE
    cov = gpu.analyse(read_tflite(mixed).main)
    assert cov.summary() == "9 of 9 ops delegated in 1 partition(s); none run on CPU"
    # REVERSE_V2 has no parser; one partition only (the default limit): the larger run after it wins
    sg = read_tflite(flipped).main
    assert [op.builtin for op in sg.ops][2] == "REVERSE_V2"
    cov = gpu.analyse(sg)
    why = {i: r for i, _, r in cov.cpu_ops}
    assert why[2] == "the delegate has no rule for this op"
    assert cov.partitions == ((3, 4, 5, 6),) and cov.dropped_partitions == 1
    assert "beyond the delegate's limit of 1" in why[0] and "beyond the delegate's limit of 1" in why[1]
    # tiny_cnn FP32: TRANSPOSE, PAD, CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN (constant axes), FULLY_CONNECTED v5
    cov = gpu.analyse(read_tflite(tiny).main)
    assert cov.summary() == "10 of 10 ops delegated in 1 partition(s); none run on CPU"


def test_gpu_takes_a_real_int8_file(tiny_int8):
    """Quantized ops are allowed by default: int8 tensors, per-channel conv/depthwise v3, QUANTIZE and
    DEQUANTIZE are accepted (the delegate then computes in float; the rule file says so)."""
    sg = read_tflite(tiny_int8).main
    versions = {(op.builtin, op.version) for op in sg.ops}
    assert ("DEPTHWISE_CONV_2D", 3) in versions and ("CONV_2D", 3) in versions
    assert sg.tensors[sg.inputs[0]].dtype == "int8"
    cov = gpu.analyse(sg)
    assert cov.delegated == cov.total == len(sg.ops) and not cov.cpu_ops
    assert "float" in gpu.quantized_note() and "QUANTIZE_AND_DEQUANTIZE" in gpu.quantized_note()


def test_gpu_version_type_and_constant_limits():
    """The per-op limits read from the delegate source, on the reader's own records."""
    from edgekit.converters.tflite.coverage.model import OpInfo, SubgraphInfo, TensorInfo

    table = rules.load("gpu")["ops"]

    def one(op, version, dtype="float32", const_axis=True, rank=4):
        shape = (1, 8, 8, 8)[:rank] if rank <= 4 else (1, 2, 8, 8, 8)
        tensors = (TensorInfo(0, "x", dtype, shape, False, 1, (0,), 0.1),
                   TensorInfo(1, "w", "int32" if op in ("MEAN", "CUMSUM") else dtype, (1,), const_axis, 1, (0,), 0.0),
                   TensorInfo(2, "y", dtype, shape, False, 1, (0,), 0.1))
        sg = SubgraphInfo(0, "main", (0,), (2,), (OpInfo(0, op, version, (0, 1), (2,)),), tensors)
        return rules.check(table.get(op), sg, sg.ops[0])

    assert one("DEPTHWISE_CONV_2D", 3, "int8") is None and one("DEPTHWISE_CONV_2D", 6) is None
    assert one("DEPTHWISE_CONV_2D", 7) == "op version 7 > 6"
    assert one("CONV_2D", 7) == "op version 7 > 6"
    assert one("FULLY_CONNECTED", 9) is None and one("FULLY_CONNECTED", 12, "int8") == "op version 12 > 9"
    assert one("TRANSPOSE", 4) is None and one("TRANSPOSE", 5) == "op version 5 > 4"
    assert one("MUL", 3) is None and one("ADD", 3) == "op version 3 > 2"
    assert one("MEAN", 2, "int8") is None and one("MEAN", 2, const_axis=False) == "input 1 must be a constant"
    assert "not accepted" in one("CUMSUM", 1, "int8") and one("CUMSUM", 1) is None
    assert "not accepted" in one("ADD", 1, "int16")
    assert one("ADD", 1, rank=5) == "rank 5 > 4"
    for op in ("QUANTIZE", "DEQUANTIZE", "TRANSPOSE", "MEAN", "FULLY_CONNECTED", "DEPTHWISE_CONV_2D"):
        assert "model_builder.cc" in table[op]["source"] and "google-ai-edge/LiteRT" in table[op]["source"]


def test_quantization_rules_on_int8_tensors():
    """int8 activations and per-channel weights: the rule engine on the reader's own records (a real
    INT8 .tflite is built elsewhere; this checks the API-level constraints themselves)."""
    from edgekit.converters.tflite.coverage.model import OpInfo, SubgraphInfo, TensorInfo

    def conv(dtype, scales):
        tensors = (TensorInfo(0, "x", dtype, (1, 8, 8, 3), False, 1, (0,), 0.1),
                   TensorInfo(1, "w", dtype, (8, 3, 3, 3), True, scales, (0,), 0.01),
                   TensorInfo(2, "b", "int32", (8,), True, scales, (0,), 0.001),
                   TensorInfo(3, "y", dtype, (1, 8, 8, 8), False, 1, (0,), 0.2))
        return SubgraphInfo(0, "main", (0,), (3,), (OpInfo(0, "CONV_2D", 3, (0, 1, 2), (3,)),), tensors)

    rule = rules.load("nnapi")["ops"]["CONV_2D"]
    sg = conv("int8", 8)
    assert rules.check(rule, sg, sg.ops[0], 28) == "int8 input needs API 29"
    assert rules.check(rule, sg, sg.ops[0], 29) is None
    sg = conv("uint8", 8)
    assert rules.check(rule, sg, sg.ops[0], 28) == "per-channel quantized weights need API 29"
    sg = conv("uint8", 1)
    assert rules.check(rule, sg, sg.ops[0], 27) is None
    sg = conv("int16", 1)
    assert "not accepted" in rules.check(rule, sg, sg.ops[0], 34)


def test_rule_files_have_sources():
    for name in ("nnapi", "gpu"):
        doc = rules.load(name)
        assert doc["ops"] and all(r["source"] for r in doc["ops"].values())
        assert doc["max_partitions_source"]
    dep = nnapi.deprecation()
    assert dep["since_api"] == 35 and any("GPU" in a for a in dep["alternatives"])
    assert any("NPU" in a for a in dep["alternatives"])


def test_inspect_artifact_result(tiny):
    res = inspect_artifact(tiny)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["kind"] == "tflite" and len(d["ops"]) == 10
    assert d["xnnpack"]["measured"] and d["xnnpack"]["summary"] == "10 of 10 ops delegated in 1 partition(s); none run on CPU"
    assert set(d["nnapi"]) == {str(lv) for lv in range(27, 35)}
    assert d["nnapi"]["27"]["cpu_ops"][0]["op"] == "TRANSPOSE"  # TRANSPOSE, PAD, MEAN need API 28
    md = res.markdown()
    assert "| XNNPACK (CPU) | measured" in md and "deprecated from Android 15" in md and "GPU delegate" in md


def test_bad_inputs(tmp_path):
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(UserError) as err:
        inspect_artifact(bad)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    other = tmp_path / "x.onnx"
    other.write_bytes(b"abc")
    with pytest.raises(UserError) as err:
        inspect_artifact(other)
    assert err.value.code == "E-ARGS"
