"""Delegate coverage of a .tflite (``edgekit inspect`` and the report's coverage section): every
operator (builtin name, version, tensor types, quantization), XNNPACK coverage measured in the real
interpreter, and GPU delegate and NNAPI (API 27..34) coverage predicted from the rule files in
``data/`` (one source note per rule), with the partitions the graph splits into."""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import InternalError
from edgekit.inspect.partitions import Coverage
from edgekit.inspect.report import InspectResult


def inspect_tflite(path: Path) -> InspectResult:
    from . import gpu, nnapi, xnnpack
    from .model import read_tflite

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
    names = [op.builtin for op in model.main.ops]
    measured = xnnpack.measure(path)
    if list(measured.node_names) != names:
        raise InternalError("the interpreter's nodes differ from the file's operators")
    taken = measured.delegated
    # the partitions are the interpreter's own (read from its delegate nodes), not an estimate
    res.xnnpack = Coverage("xnnpack", len(names), measured.partitions,
                           tuple((i, n, "XNNPACK did not take it (measured)") for i, n in enumerate(names) if i not in taken),
                           measured=True)
    res.gpu = gpu.analyse(model.main)
    res.nnapi = nnapi.analyse(model.main)
    if len(model.subgraphs) > 1:
        res.notes.append(f"{len(model.subgraphs) - 1} further subgraph(s) (control flow bodies) are listed but not "
                         "analysed for delegation: delegates see the primary subgraph")
    res.notes.append("XNNPACK coverage is measured by loading the file in the LiteRT interpreter on this host "
                     "with and without the delegate; GPU and NNAPI coverage is predicted from edgekit's rule files "
                     "(edgekit/converters/tflite/coverage/data, one source note per rule), since neither runs here.")
    dep = nnapi.deprecation()
    res.notes.append(f"{dep['text']} Use instead: {'; '.join(dep['alternatives'])}.")
    return res
