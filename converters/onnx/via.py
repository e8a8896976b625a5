"""For targets that convert edgekit's ONNX file (mnn, openvino, a plug-in's NPU compiler): the onnx
target's export, with its refusals re-issued in the calling target's name (an unsupported operator
stays unsupported, with its node and source line)."""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import UnsupportedOpError, UserError


def export_via_onnx(target: str, model, spec, recipe, folder: Path, example_inputs: tuple, calibration=None,
                    weight_observer=None):
    """The onnx target's Artifact written into ``folder`` (QDQ with its quantized reference for an
    int8 recipe; ``weight_observer``: the calling target's weight grid, None: min/max per channel);
    raises UnsupportedOpError / UserError naming ``target``."""
    import copy

    from edgekit.converters import get

    extra = {"calibration": calibration} if recipe is not None else {}
    onnx = copy.copy(get("onnx"))
    onnx.u8_weights = False  # onnxruntime's re-encoding: the converters read the weights as torch.onnx writes them
    onnx.weight_observer = weight_observer
    try:
        return onnx.export(model, spec, recipe, folder, tuple(example_inputs), **extra)
    except UnsupportedOpError as exc:
        raise UnsupportedOpError(target, exc.op, exc.node, f"{target} converts edgekit's ONNX file, and torch.onnx.export "
                                 f"cannot translate {exc.op}: {exc.fix}", source=exc.source) from exc
    except UserError as exc:
        if exc.code == "E-DEP-MISSING":
            raise
        raise UserError(exc.code, f"{target} exports through edgekit's ONNX file, which failed: {exc.what}", exc.fix) from exc
