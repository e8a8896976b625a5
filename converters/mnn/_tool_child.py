"""The child process that runs MNN's converter (started by ``tool.py``, never imported by edgekit).

Run as ``python -I _tool_child.py request.json`` with the scratch folder as working directory. It
imports ``_tools`` (MNN's compiled converter: ``_tools.mnnconvert(argv)`` is what the ``mnnconvert``
console script calls) and, for the op probe, ``MNN`` (the runtime). It never imports ``MNN.tools``:
that package's ``utils/log.py`` runs ``pip install`` through ``os.system`` and uploads usage logs
when imported. ``-I`` keeps the caller's folder, PYTHON* variables and the user site off sys.path.

request.json: {"steps": [argv, ...], "probe": path or null}; each argv is one converter call. The
child writes result.json: {"done": number of steps that wrote their output, "probe": [[op name, op
type], ...] or null}. A converter that aborts (MNN throws std::out_of_range on some graphs) kills
only this process; the parent reads that from the exit status.
"""
import json
import os
import sys


def _convert(argv: list) -> bool:
    import _tools

    out = argv[argv.index("--MNNModel") + 1] if "--MNNModel" in argv else None
    _tools.mnnconvert(argv)  # returns True even when it prints "Converted Failed!"
    sys.stdout.flush()
    return out is not None and os.path.isfile(out) and os.path.getsize(out) > 0


def _probe(path: str) -> list:
    """Open the file in MNN's Session API and run it once on zeros, recording every op the runtime
    executes with the type string it reports (e.g. ``Convolution [ DT_INT8 ]`` for an integer kernel)."""
    import numpy as np  # before MNN: its numpy bridge only works with numpy already imported
    import MNN

    interp = MNN.Interpreter(path)
    session = interp.createSession({"backend": "CPU", "numThread": 1, "precision": "high"})
    for tensor in interp.getSessionInputAll(session).values():
        shape = list(tensor.getShape())
        if tensor.getDataType() == MNN.Halide_Type_Int:
            host = MNN.Tensor(shape, MNN.Halide_Type_Int, np.zeros(shape, np.int32), MNN.Tensor_DimensionType_Caffe)
        else:
            host = MNN.Tensor(shape, MNN.Halide_Type_Float, np.zeros(shape, np.float32), MNN.Tensor_DimensionType_Caffe)
        tensor.copyFrom(host)
    ops = []

    def before(tensors, info):
        return True

    def after(tensors, info):
        ops.append([info.getName(), info.getType().strip()])
        return True

    interp.runSessionWithCallBackInfo(session, before, after)
    return ops


def main(request_path: str) -> int:
    with open(request_path) as f:
        request = json.load(f)
    result = {"done": 0, "probe": None}
    for argv in request["steps"]:
        if not _convert(argv):
            break
        result["done"] += 1
    if result["done"] == len(request["steps"]) and request.get("probe"):
        result["probe"] = _probe(request["probe"])
    with open("result.json", "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
