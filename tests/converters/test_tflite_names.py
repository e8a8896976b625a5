"""Shorter tensor names in INT8 .tflite files: same numbers, fewer bytes, readable names."""
from __future__ import annotations

import numpy as np
import pytest

from edgekit.converters.tflite.names import compact_tensor_names, short_name

pytest.importorskip("ai_edge_litert")


def test_short_name_keeps_the_module_structure():
    long = ("edgekit.models.mobilenet_v2.MobileNetV2/torch.nn.modules.container.Sequential_features/"
            "torch.nn.modules.container.Sequential_0/torch.nn.modules.conv.Conv2d_0;1")
    assert short_name(long) == "Sequential_features/Sequential_0/Conv2d_0;1"
    assert short_name("serving_default_args_0") == "serving_default_args_0"


def _run(path, x):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).copy(), [d["name"] for d in it.get_tensor_details()]


def test_rewritten_file_computes_the_same_with_shorter_names(tiny_export, tmp_path):
    loaded, art, out = tiny_export("tflite", "tiny_cnn")
    src, dst = out / art.path, tmp_path / "short.tflite"
    sizes = compact_tensor_names(src, dst)
    assert sizes["bytes_after"] < sizes["bytes_before"]
    x = np.random.default_rng(0).standard_normal(loaded.spec.inputs[0].shape).astype(np.float32)
    (a, long_names), (b, short_names) = _run(src, x), _run(dst, x)
    assert np.array_equal(a, b)
    assert len(short_names) == len(long_names)
    assert sum(map(len, short_names)) < 0.6 * sum(map(len, long_names))
    assert not any(n.startswith("edgekit.models") for n in short_names)
