"""ONNX static INT8: a QDQ model (QuantizeLinear/DequantizeLinear around float ops) with edgekit's
calibrated ranges, which onnxruntime fuses into integer kernels (QLinearConv, QGemm, ...).

1. edgekit's recipe through PT2E (``edgekit.quant.pt2e.quantize``) with ExecuTorch's XNNPACK
   quantizer placing the q/dq pairs (the same int8 scheme as every other target: per-channel
   symmetric weights, per-tensor activations; weights folded to int8 constants, so the file stores
   1 byte per weight);
2. the ``convert_pt2e`` program goes through ``torch.onnx.export`` (dynamo), whose onnxscript library
   turns ``quantized_decomposed`` quantize/dequantize into QuantizeLinear/DequantizeLinear with the
   program's own scales and zero points;
3. that program is also the quantized reference saved next to the .onnx (conversion fidelity: the
   .onnx on onnxruntime's integer kernels vs the float simulation of the same numbers);
onnxruntime computes the reference's graph (its level-1 transforms only duplicate Q/DQ pairs with the
same parameters; ``DoubleQDQPairsRemover``, which would move a Q->DQ->Q->DQ chain onto a new grid,
finds no chain with two different parameter sets in these programs), but no runtime reproduces a
reference whose rounding decisions cascade: EfficientFormerV2 and MobileViTv2 (model-coverage bench)
miss the fixed bounds even with every op of the .onnx run in float (0.123 > 0.095, 0.056 > 0.039);
`edgekit verify` then judges them against the reference's own rounding noise (``edgekit.quant.noise``).
The model's inputs and outputs stay float: the file quantizes and dequantizes at its edges.

Per-layer view: exposing an intermediate QuantizeLinear output as a graph output stops onnxruntime's
QDQ fusion at that node (measured on tiny_cnn: 3 QLinearConv -> 0, the convs then run in float between
Q/DQ), so the shipped session's tensors cannot be read; ``per_layer.py`` cuts each layer out and
replays its fused kernel on the reference's input instead.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError


def quantize_for_onnx(model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration, weight_observer=None):
    """-> (the convert_pt2e program as an ExportedProgram, reference file name, artifact meta keys);
    ``weight_observer``: an observer constructor for the per-channel symmetric weights (-127..127), in
    place of the quantizer's min/max one (openvino's saturation-safe grid); None: min/max."""
    import torch

    from edgekit.quant.pt2e import quantize
    from edgekit.quant.reference import quant_meta, reference_name, save_quantized_reference

    q = quantize(model, tuple(example_inputs), calibration.samples, recipe, _quantizer(weight_observer), fold_quantize=True)
    ref = Path(out_dir) / reference_name(spec.name, "onnx")
    save_quantized_reference(q.module, tuple(example_inputs), ref)
    notes = list(q.notes)
    notes.append("model I/O is float: the .onnx quantizes its inputs and dequantizes its outputs itself "
                 f"(recipe io={recipe.io!r} does not apply to onnx)")
    meta = quant_meta(recipe, calibration, ref.name, q.output_scales, q.kept_float, notes)
    # An ExportedProgram, not the module: the exporter would capture the (train-mode flagged)
    # GraphModule again and warn about training mode.
    return torch.export.export(q.module, tuple(example_inputs)), ref.name, meta


def _quantizer(weight_observer=None):
    import dataclasses

    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", "onnx INT8 places its quantize/dequantize pairs with ExecuTorch's "
                        f"XNNPACK quantizer, which is not installed ({exc})",
                        "pip install 'edgekit[onnx]' (it lists executorch), or export onnx in fp32/dynamic") from exc
    config = get_symmetric_quantization_config(is_per_channel=True)
    if weight_observer is not None:
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, observer_or_fake_quant_ctr=weight_observer))
    quantizer = XNNPACKQuantizer().set_global(config)
    quantizer.float_add_chains = True  # an add read by another add stays float (edgekit.quant.add_chains)
    return quantizer
