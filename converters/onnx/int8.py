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
4. the reference's own noise floor (``edgekit.quant.pt2e.reference_noise``: its output moved by one
   float32 rounding per op) is recorded as ``meta["reference_noise"]``, with a note when it is a quarter
   or more of the fidelity bound. onnxruntime computes the reference's graph (its level-1 transforms
   only duplicate Q/DQ pairs with the same parameters; ``DoubleQDQPairsRemover``, which would move a
   Q->DQ->Q->DQ chain onto a new grid, finds no chain with two different parameter sets in these
   programs), but no runtime reproduces a reference whose rounding decisions cascade: EfficientFormerV2
   and MobileViTv2 (model-coverage bench) miss their bounds even with every op of the .onnx run in
   float (0.123 > 0.095, 0.056 > 0.039), see the module doc of ``edgekit.quant.pt2e``.
The model's inputs and outputs stay float: the file quantizes and dequantizes at its edges.

No per-layer view: exposing an intermediate QuantizeLinear output as a graph output stops
onnxruntime's QDQ fusion at that node (measured on tiny_cnn: 3 QLinearConv -> 0, the convs then run
in float between Q/DQ), so the tensors read that way would not come from the kernels the file runs
on. Fidelity is judged end to end against the reference.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError


def quantize_for_onnx(model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration):
    """-> (the convert_pt2e program as an ExportedProgram, reference file name, artifact meta keys)."""
    import torch

    from edgekit.quant.pt2e import noise_meta, quantize
    from edgekit.quant.reference import quant_meta, reference_name, save_quantized_reference

    from . import INT8_TOLERANCE

    q = quantize(model, tuple(example_inputs), calibration.samples, recipe, _quantizer(), fold_quantize=True)
    ref = Path(out_dir) / reference_name(spec.name, "onnx")
    save_quantized_reference(q.module, tuple(example_inputs), ref)
    notes = list(q.notes)
    notes.append("model I/O is float: the .onnx quantizes its inputs and dequantizes its outputs itself "
                 f"(recipe io={recipe.io!r} does not apply to onnx)")
    noise, note = noise_meta(q.module, calibration.samples, INT8_TOLERANCE)  # 4. in the module doc
    if note:
        notes.append(note)
    meta = {**quant_meta(recipe, calibration, ref.name, q.output_scales, q.kept_float, notes), "reference_noise": noise}
    # An ExportedProgram, not the module: the exporter would capture the (train-mode flagged)
    # GraphModule again and warn about training mode.
    return torch.export.export(q.module, tuple(example_inputs)), ref.name, meta


def _quantizer():
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", "onnx INT8 places its quantize/dequantize pairs with ExecuTorch's "
                        f"XNNPACK quantizer, which is not installed ({exc})",
                        "pip install 'edgekit[onnx]' (it lists executorch), or export onnx in fp32/dynamic") from exc
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
