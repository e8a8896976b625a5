"""INT8 .onnx activations stored as uint8 (u8_activations.py): the same values, and onnxruntime fuses
every int8 conv, where the int8 file it would otherwise get leaves the convs around a residual float."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from edgekit.data import CalibrationSet  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec  # noqa: E402
from photos import photo_array  # noqa: E402
from residual_stage import ResidualStage  # noqa: E402  (each residual sum read by a conv and an add)


def _signed_again(model):
    """The file as it was before the re-encoding: every uint8 activation zero point back to int8 - 128."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    outs = set()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.input[0] not in inits and len(node.input) > 2:
            zp = inits[node.input[2]]
            if zp.data_type == onnx.TensorProto.UINT8:
                signed = (numpy_helper.to_array(zp).astype(np.int16) - 128).astype(np.int8)
                zp.CopyFrom(numpy_helper.from_array(signed, zp.name))
                outs.update(node.output if node.op_type == "QuantizeLinear" else ())
    for info in model.graph.value_info:
        if info.name in outs:
            info.type.tensor_type.elem_type = onnx.TensorProto.INT8
    return model


def _session(model, tmp_path: Path, name: str, optimized: bool):
    import onnx
    import onnxruntime as ort

    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if optimized:
        so.optimized_model_filepath = str(tmp_path / f"{name}.optimized.onnx")
    else:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node) if optimized else None
    return sess, ops


def test_uint8_activations_compute_the_same_and_fuse_every_conv(calib_root, tmp_path):
    import onnx

    from edgekit.converters.onnx import CONVERTER

    photos = photo_array(calib_root, 16, 20)
    cal = tuple((p[None],) for p in photos[:16])
    spec = ModelSpec("stage", (TensorSpec("image", (1, 3, 16, 16), "float32", "NCHW"),), (TensorSpec("out", (1, 8, 16, 16)),))
    art = CONVERTER.export(ResidualStage().eval(), spec, QuantRecipe(), tmp_path / "b", (torch.from_numpy(cal[0][0]),),
                           calibration=CalibrationSet(cal, tuple(f"photo {k}" for k in range(16)), "image", str(calib_root)))
    assert any(n.startswith("activations stored as uint8") for n in art.meta["quant_notes"])
    shipped = onnx.load(str(tmp_path / "b" / art.path))
    before = _signed_again(onnx.load(str(tmp_path / "b" / art.path)))
    x = photos[16:17]
    exact = [s.run(None, {"image": x})[0] for s, _ in (_session(shipped, tmp_path, "u8", False),
                                                        _session(before, tmp_path, "s8", False))]
    assert np.array_equal(exact[0], exact[1])  # the same values, op by op in float
    _, fused = _session(shipped, tmp_path, "u8o", True)
    _, unfused = _session(before, tmp_path, "s8o", True)
    assert fused["Conv"] == 0 and fused["QLinearConv"] == 13, fused  # the stem and 2 convs per block
    assert unfused["Conv"] > 0, unfused  # onnxruntime left convs around the residual sums float (measured: 10)
