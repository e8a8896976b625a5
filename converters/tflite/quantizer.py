"""The tflite target's PT2E quantizer: litert-torch's ``PT2EQuantizer``, plus the concat annotation it
means to make and, under torch 2.13's ``torch.export``, does not.

litert-torch 0.10 annotates ``torch.cat`` (``pt2e_quantizer_utils._annotate_cat``: every input and the
output share the first input's quantization) through ``get_source_partitions(graph, [torch.cat])``,
which reads the ``source_fn_stack`` node metadata; torch 2.13's export no longer records it, so no cat
partition is found and every cat stays unannotated (measured: a 1x1 conv + depthwise conv + cat model,
``get_source_partitions`` -> {}, the cat node's annotation None). The quantized reference then
concatenates in float, each input on its producer's own grid, while TFLite's CONCATENATION takes one
grid for all its inputs and the converter writes each producer straight onto the first input's grid:
another rounding grid and, where the first input's range is narrower, clipping the reference does not
have. Measured on the coverage bench (random weights, 16 held-out photos): GhostNet-100's ghost modules
(the depthwise output, range 9.50 in the reference, clipped at 8.57: 12 steps at that conv), MixNet-S,
ReXNet-100, and EdgeNeXt-XXS, whose SDTA blocks concatenate a conv output with the untouched half of a
``torch.chunk``: that half was put on the conv output's grid (range +-0.05 instead of +-0.6), end to end
140 output steps and cosine 0.51 vs the reference.

``annotate_cats`` makes the annotation litert-torch intends (first input's spec, the other inputs and
the output shared with it), for every cat the inner quantizer left unannotated: the shared observer sees
every input, so the grid holds all of them, and the reference computes exactly what the file does.
"""
from __future__ import annotations


def annotate_cats(gm, spec) -> int:
    """Annotate each ``aten.cat`` of ``gm`` the inner quantizer left unannotated as litert-torch's
    ``_annotate_cat`` does (``spec`` on the first input; the other inputs and the output shared with
    it); -> how many. Cats of non-float values (index math) are left alone."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    n = 0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target != torch.ops.aten.cat.default:
            continue
        if node.meta.get("quantization_annotation") is not None:
            continue
        inputs, val = node.args[0], node.meta.get("val")
        if not inputs or not all(isinstance(a, torch.fx.Node) for a in inputs) or not isinstance(val, torch.Tensor) \
                or not val.is_floating_point():
            continue
        shared = SharedQuantizationSpec((inputs[0], node))
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={inputs[0]: spec, **{a: shared for a in inputs[1:]}}, output_qspec=shared, _annotated=True)
        n += 1
    return n


_CLASS = None


def _quantizer_class():
    """litert-torch's PT2EQuantizer with ``annotate_cats`` after its own annotation (a subclass: litert's
    QuantConfig and edgekit's PT2E glue take it as the quantizer it is)."""
    global _CLASS
    if _CLASS is None:
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

        class TFLiteQuantizer(PT2EQuantizer):
            def annotate(self, model):
                model = super().annotate(model)
                annotate_cats(model, self.global_config.input_activation)
                return model

        _CLASS = TFLiteQuantizer
    return _CLASS


def tflite_quantizer():
    """The tflite target's static INT8 quantizer (the export and the budget search alike)."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    return _quantizer_class()().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
