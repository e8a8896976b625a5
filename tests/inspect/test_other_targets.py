"""ncnn layer lists / int8 completeness, ExecuTorch portable-kernel warnings, partition limits."""
from __future__ import annotations

import pytest

from edgekit.errors import UserError
from edgekit.inspect import inspect_artifact
from edgekit.inspect.partitions import coverage, split

# A .param as pnnx/ncnn write it: tiny_cnn's first layers, one convolution with int8_scale_term (8=1).
PARAM = """7767517
5 5
Input                    in0                      0 1 in0
Convolution              conv_0                   1 1 in0 1 0=16 1=3 11=3 12=1 13=2 14=1 2=1 3=2 4=1 5=1 6=432 8=1 9=1
ConvolutionDepthWise     convdw_0                 1 1 1 2 0=16 1=3 11=3 12=1 13=1 14=1 2=1 3=1 4=1 5=1 6=144 7=16
Pooling                  gap_0                    1 1 2 3 0=1 4=1
InnerProduct             linear_0                 1 1 3 out0 0=10 1=1 2=160 8=1
"""


def test_ncnn_layers_and_int8(tmp_path):
    p = tmp_path / "m.param"
    p.write_text(PARAM)
    res = inspect_artifact(p, {"precision": "int8"})
    d = res.to_dict()["details"]
    assert d["layers"] == 5 and d["weighted_layers"] == 3 and d["int8_layers"] == 2
    assert d["fully_int8"] is False and d["float_layers"] == ["ConvolutionDepthWise convdw_0"]
    assert res.warnings and "convdw_0" in res.warnings[0]
    fp32 = inspect_artifact(p, {"precision": "fp32"})
    assert "fully_int8" not in fp32.details and not fp32.warnings


def test_ncnn_truncated(tmp_path):
    p = tmp_path / "m.param"
    p.write_text("\n".join(PARAM.splitlines()[:4]))
    with pytest.raises(UserError) as err:
        inspect_artifact(p)
    assert err.value.code == "E-ARTIFACT-CORRUPT"


def test_executorch_portable_ops_warn(tmp_path):
    p = tmp_path / "m.pte"
    p.write_bytes(b"\0\0\0\0ET12")
    meta = {"delegation": {"backends": {"XnnpackBackend": 2}, "subgraphs": 2, "delegated_nodes": 30,
                           "portable_nodes": 4, "delegated_ops": {"aten.linear.default": 30},
                           "portable_ops": {"aten.native_layer_norm.default": 2, "aten.view_copy.default": 2}}}
    res = inspect_artifact(p, meta)
    assert res.details["summary"] == "30 of 34 ops delegated to XNNPACK in 2 subgraph(s)"
    assert len(res.warnings) == 1 and "native_layer_norm" in res.warnings[0] and "100x" in res.warnings[0]
    assert "view_copy" not in res.warnings[0]
    with pytest.raises(UserError) as err:
        inspect_artifact(p, {})
    assert err.value.code == "E-BUNDLE-INVALID"


def test_partition_limit_keeps_the_largest():
    assert split([True, False, True, True, False, True]) == [(0,), (2, 3), (5,)]
    c = coverage("nnapi@30", list("abcdef"), [None, "x", None, None, "y", None], max_partitions=1)
    assert c.partitions == ((2, 3),) and c.dropped_partitions == 2 and c.delegated == 2
    assert [i for i, _, _ in c.cpu_ops] == [0, 1, 4, 5]
    assert c.summary().startswith("2 of 6 ops delegated in 1 partition(s); these run on CPU: a (op 0)")
