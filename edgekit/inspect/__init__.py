"""Delegate coverage of an exported artifact (``edgekit inspect ARTIFACT`` and a report section).

For a .tflite: every operator (builtin name, version, tensor types, quantization), XNNPACK coverage
measured in the real interpreter, GPU delegate and NNAPI (API 27..34) coverage from edgekit's rule
files, with the partitions the graph splits into. For ncnn: the layer list and int8 completeness.
For ExecuTorch: delegated subgraphs and ops left on portable kernels. For the ptl-nnapi target:
why it cannot run on a host. Imports no runtime until an artifact of that kind is inspected.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError

from .report import InspectResult

__all__ = ["INSPECTABLE", "InspectResult", "inspect_artifact"]

NNAPI_TARGET = "ptl-nnapi"


def _nnapi_note() -> str:
    from . import nnapi

    dep = nnapi.deprecation()
    return f"{dep['text']} Use instead: {'; '.join(dep['alternatives'])}."


def _inspect_tflite(path: Path) -> InspectResult:
    from . import gpu, nnapi, xnnpack
    from .partitions import Coverage
    from .tflite_model import read_tflite

    model = read_tflite(path)
    res = InspectResult(str(path), "tflite")
    for sg in model.subgraphs:
        res.subgraphs.append({"index": sg.index, "name": sg.name, "ops": len(sg.ops),
                              "inputs": [sg.tensors[i].label() for i in sg.inputs],
                              "outputs": [sg.tensors[i].label() for i in sg.outputs]})
        for op in sg.ops:
            res.ops.append({"subgraph": sg.index, "index": op.index, "op": op.builtin, "version": op.version,
                            "inputs": [t.label() for t in sg.op_inputs(op)],
                            "outputs": [t.label() for t in sg.op_outputs(op)]})
    main = model.main
    names = [op.builtin for op in main.ops]
    measured = xnnpack.measure(path)
    if list(measured.node_names) != names:
        from edgekit.errors import InternalError

        raise InternalError("the interpreter's nodes differ from the file's operators")
    taken = measured.delegated
    # the partitions are the interpreter's own (read from its delegate nodes), not an estimate
    res.xnnpack = Coverage("xnnpack", len(names), measured.partitions,
                           tuple((i, n, "XNNPACK did not take it (measured)") for i, n in enumerate(names) if i not in taken),
                           measured=True)
    res.gpu = gpu.analyse(main)
    res.nnapi = nnapi.analyse(main)
    if len(model.subgraphs) > 1:
        res.notes.append(f"{len(model.subgraphs) - 1} further subgraph(s) (control flow bodies) are listed but not "
                         "analysed for delegation: delegates see the primary subgraph")
    res.notes.append("XNNPACK coverage is measured by loading the file in the LiteRT interpreter on this host "
                     "with and without the delegate; GPU and NNAPI coverage is predicted from edgekit's rule files "
                     "(edgekit/inspect/data, one source note per rule), since neither runs here.")
    res.notes.append(_nnapi_note())
    return res


INSPECTABLE = (".tflite", ".param", ".pte", ".ptl")  # the artifact kinds inspect_artifact analyses


def inspect_artifact(path: Path, meta: dict | None = None) -> InspectResult:
    """Inspect one artifact file; ``meta`` is its Artifact.meta from the manifest when known."""
    path = Path(path)
    meta = meta or {}
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "pass the path of an exported artifact")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return _inspect_tflite(path)
    if suffix == ".param":
        from . import ncnn

        details = ncnn.analyse(path, meta.get("precision"))
        res = InspectResult(str(path), "ncnn", details=details)
        res.details["summary"] = (f"{details['layers']} layers, {details['weighted_layers']} weighted "
                                  f"({details['int8_layers']} int8)")
        if details.get("fully_int8") is False:
            res.warnings.append(f"int8 was requested but {len(details['float_layers'])} weighted layer(s) stay float: "
                                + ", ".join(details["float_layers"][:10]))
        return res
    if suffix == ".pte":
        from . import executorch

        details = executorch.analyse(meta)
        return InspectResult(str(path), "executorch", details=details, warnings=list(details["warnings"]))
    if suffix == ".ptl":
        if meta.get("target") == NNAPI_TARGET or meta.get("nnapi"):
            res = InspectResult(str(path), NNAPI_TARGET, details={"summary": "PyTorch Mobile model converted for NNAPI: "
                                "every op runs through NNAPI on the device."})
            res.notes.append("not runnable on host: the NNAPI runtime (libneuralnetworks.so) exists only on Android")
            res.notes.append(_nnapi_note())
            return res
        return InspectResult(str(path), "ptl", notes=["PyTorch Mobile runs on its CPU kernels: no delegate to inspect."])
    raise UserError("E-ARGS", f"cannot inspect {path.name}: unknown artifact type {suffix or '(no suffix)'}",
                    "pass a .tflite, ncnn .param, ExecuTorch .pte or .ptl file")
