"""Run a .mnn file in MNN's runtime: the Express Module API (``MNN.nn.load_module_from_file``), the
API MNN's own apps use (``Module::load``), on the CPU backend with one thread.

Precision mode (strict, edgekit's check): ``high`` for every file: FP32 arithmetic, no low-precision
sigmoid/SiLU approximations; an int8 file still runs its integer kernels (``Convolution [ DT_INT8 ]``),
the mode only concerns float ops; an fp16 file keeps its fp16 weights. ``strict=False``: MNN's default
(``normal``) for fp32/int8 files, and ``low``, the mode it is made for, for an fp16 file.
``low`` means FP16 arithmetic where the CPU has it. Measured under qemu (MNN 3.6.1): on the ARMv8.2
cortex-a76 ``low`` computes in FP16 (MobileNetV2 fp32 file: 1.8e-01 max abs from the reference, 39.7
dB; tiny_cnn fp16 file: max_abs_rel 2.6e-3, beyond the fp16 tolerance), while ``normal`` and ``high``
give the same FP32 outputs as on the cortex-a53 (1.8e-05); on the cortex-a53 and on x86 ``low`` still
computes in FP32. int8 files: the same outputs in all three modes on both CPUs.

Dynamic shapes (fp32, ``meta["dynamic"]``): the file keeps the ONNX file's symbolic dims; the module
is loaded with ``shape_mutable=True`` and re-plans its tensors when an input's shape changes (what
resizeTensor + resizeSession do in the Session API). An input must lie in the ranges
(edgekit.dynamic.shape_problem); outputs come back at their actual shapes.

Inputs are fed in ModelSpec order under their names, cast to the dtype the file declares (MNN's
ONNX converter turns int64 token ids into int32); outputs come back in ModelSpec order as float32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit import dynamic
from edgekit.errors import UserError


def precision_mode(artifact_precision: str, strict: bool) -> str:
    if strict:
        return "high"
    return "low" if artifact_precision == "fp16" else "normal"


def load(artifact, root: Path, threads: int = 1, strict: bool = True):
    """-> a callable: list of numpy inputs (ModelSpec order) -> list of float32 outputs."""
    import MNN
    import MNN.expr as F

    path = Path(root) / artifact.path
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    size, expected = path.stat().st_size, artifact.meta.get("file_bytes")
    if expected is not None and size != expected:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} has {size} bytes, the export wrote {expected}",
                        "re-export the bundle")
    names, outputs = list(artifact.meta["inputs"]), list(artifact.meta["outputs"])
    config = {"backend": "CPU", "numThread": int(threads), "precision": precision_mode(artifact.precision, strict)}
    mutable = bool(artifact.meta.get("dynamic"))
    in_shapes = artifact.meta.get("input_shapes") if mutable else None
    try:
        manager = MNN.nn.create_runtime_manager((config,))
        module = MNN.nn.load_module_from_file(str(path), names, outputs, runtime_manager=manager,
                                              shape_mutable=mutable)
    except (SystemError, RuntimeError, ValueError) as exc:  # MNN: "Invalidate buffer to create MNN Module"
        raise UserError("E-ARTIFACT-CORRUPT", f"MNN cannot load {path.name}: {type(exc).__name__}: {exc}",
                        "re-export the bundle") from exc
    if module is None:
        raise UserError("E-ARTIFACT-CORRUPT", f"MNN cannot load {path.name}", "re-export the bundle")
    declared = module.get_info()["inputs"]
    feeds = [(F.int, np.int32) if d.dtype == F.int else (F.float, np.float32) for d in declared]
    shapes = [tuple(s) for s in artifact.meta.get("output_shapes", [])]

    def run(arrays, _keep=(manager, module)) -> list:  # the module does not own its runtime manager:
        # without this reference the manager is freed when load() returns and the module computes garbage
        if len(arrays) != len(names):
            raise UserError("E-DATA-SHAPE", f"{len(arrays)} inputs given, the model takes {len(names)}",
                            "pass one array per model input, in spec order")
        for n, a, shape in zip(names, arrays, in_shapes or ()):
            problem = dynamic.shape_problem(artifact.meta, n, shape, np.shape(a))
            if problem:
                raise UserError("E-DATA-SHAPE", problem, "feed sizes inside the model's dynamic ranges")
        args = []
        for a, (mnn_type, np_type) in zip(arrays, feeds):
            a = np.ascontiguousarray(a, dtype=np_type)
            # NCHW here means "dimensions as given": the file keeps the ONNX input layout (the module
            # reports its internal NC4HW4 packing for 4-D inputs, which is not what callers hold)
            args.append(F.const(a, list(a.shape), F.NCHW, mnn_type))
        outs = module.forward(args)
        if len(outs) != len(outputs):
            raise UserError("E-RUNTIME-FAILED", f"MNN returned {len(outs)} outputs for {len(outputs)} "
                            "(its log names the op that failed)", "check the inputs match the manifest; re-export")
        result = []
        for k, out in enumerate(outs):
            if out.data_format == F.NC4HW4:
                out = F.convert(out, F.NCHW)
            y = np.array(out.read(), dtype=np.float32, copy=True)
            if mutable:  # the output's sizes follow the input's: its actual shape
                y = y.reshape(out.shape) if y.size == int(np.prod(out.shape)) else y
            elif k < len(shapes) and y.size == int(np.prod(shapes[k])):
                y = y.reshape(shapes[k])
            result.append(y)
        return result

    return run
