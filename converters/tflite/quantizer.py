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
Split pieces. A float tensor split by ``torch.split`` / ``chunk`` (``aten.split_with_sizes``,
``aten.chunk``) whose pieces are quantized where they are used (a conv reading each) got one quantize node
per piece in the reference, each observing its own piece's range; the converter quantizes the whole tensor
once, onto one piece's grid (the last's, measured), then requantizes and slices the others
(requant.py, item 2). Where that grid is narrower than another piece's range the file clips what the
reference keeps: MixNet-S's mixed convs, EdgeNeXt-XXS's SDTA chunks (coverage bench: per-layer flags of
4 to 24 steps), and tests/converters/test_tflite_split_and_sum.py's SplitRanges (a SiLU split 12 + 4
channels, the 12 with 8x the range: 921 steps at the SiLU, 44 output steps end to end, cosine 0.963 vs the
reference). ``annotate_splits`` puts the split's input on one grid (the input edge gets the activation spec,
or the producer's own output grid where it has one) and every piece's quantized use shares it: one
observer sees the whole tensor, the converter's single grid is the reference's, no requantize before
the slices (measured on SplitRanges: the file's SiLU tensor on the reference's (0.0595, -123), 0 output
steps end to end, no per-layer flag). A piece passed straight into a concat (EdgeNeXt's last chunk) would
keep the concat's grid and the file slice it from the split's grid onto another, a SLICE TFLite's
same-scale rule refuses where the split's input is also read in float (EdgeNeXt's residual:
E-OP-UNSUPPORTED "tfl.slice", measured on EdgeNeXt-XXS and a small SDTA block with its residual): the
concat's group then joins the split's, one grid for the split, its pieces, the concat's inputs and output.
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


_SPLITS = ("aten.split", "aten.chunk", "aten.tensor_split", "aten.unbind")


def annotate_splits(gm, spec) -> int:
    """Put the pieces of each float ``split`` / ``chunk`` / ``tensor_split`` / ``unbind`` of ``gm`` on
    one grid: the whole tensor's (see "Split pieces" in the module docstring); -> how many splits.

    Where the split's input already has an output annotation (its producer quantizes it), every
    piece's quantized input edge shares that grid; otherwise the split's input edge gets ``spec`` (one
    observer sees the whole tensor) and every piece's quantized input edge shares it. Only edges the
    inner quantizer gave a plain int8 spec like ``spec`` are moved (a shared spec already follows its
    root; a fixed-qparams or other-dtype spec is left alone)."""
    import operator

    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, SharedQuantizationSpec

    from edgekit.quant.pt2e import is_float_tensor

    def plain(qs) -> bool:
        return isinstance(qs, QuantizationSpec) and qs.dtype == spec.dtype and qs.qscheme == spec.qscheme \
            and not getattr(qs, "is_dynamic", False)

    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not any(k in str(node.target) for k in _SPLITS):
            continue
        x = node.args[0] if node.args else None
        if not hasattr(x, "op") or not is_float_tensor(x):
            continue
        pieces = [u for u in node.users if u.op == "call_function" and u.target is operator.getitem]
        edges = []
        for p in pieces:
            for c in p.users:
                ann = c.meta.get("quantization_annotation")
                if ann is not None and plain(ann.input_qspec_map.get(p)):
                    edges.append((p, c))
        if len(edges) < 2 and not (edges and len(pieces) > 1):
            continue
        xann = x.meta.get("quantization_annotation")
        if xann is not None and xann.output_qspec is not None:
            shared = SharedQuantizationSpec(x)
        else:
            ann = node.meta.get("quantization_annotation")
            if ann is None:
                ann = node.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            ann.input_qspec_map[x] = spec
            ann._annotated = True
            shared = SharedQuantizationSpec((x, node))
        for p, c in edges:
            c.meta["quantization_annotation"].input_qspec_map[p] = shared
        # a piece passed straight into a concat shares the concat's grid: the concat's group joins the
        # split's (else the file slices the piece from the split's grid onto another, which TFLite's
        # same-scale SLICE refuses where the split's input is also read in float: EdgeNeXt's residual)
        for p in pieces:
            for c in p.users:
                ann = c.meta.get("quantization_annotation")
                if ann is None or c.target != torch.ops.aten.cat.default or not isinstance(ann.input_qspec_map.get(p), SharedQuantizationSpec):
                    continue
                first = c.args[0][0]
                if plain(ann.input_qspec_map.get(first)):
                    ann.input_qspec_map[first] = shared
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
            # TFLite's STATIC QDQ conversion fuses dequantize -> float layer -> quantize into a quantized
            # op: edgekit.quant.pt2e.KeepFloat leaves such a layer quantized in the reference too
            requantizes_isolated_float = True

            def annotate(self, model):
                model = super().annotate(model)
                annotate_cats(model, self.global_config.input_activation)
                annotate_splits(model, self.global_config.input_activation)
                return model

        _CLASS = TFLiteQuantizer
    return _CLASS


def tflite_quantizer():
    """The tflite target's static INT8 quantizer (the export and the budget search alike)."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config

    return _quantizer_class()().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
