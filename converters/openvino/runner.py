"""Run an OpenVINO IR (.xml + .bin) on OpenVINO's CPU plugin, and read what the plugin really executes.

Strict settings (edgekit's host check): 1 inference thread, 1 stream, and
``INFERENCE_PRECISION_HINT = f32``. The hint matters: on a CPU with AVX512_BF16 or AMX the plugin's
default inference precision is bf16 (measured on this host, an AMD EPYC with avx512_bf16: default
``bfloat16``; tiny_cnn FP32 IR then differs from torch by 7e-3 of the output scale, with f32 by 3e-7).
``strict=False`` keeps the plugin's default, i.e. what an app on such a CPU gets.
"""
from __future__ import annotations

import platform
import re
from collections import Counter
from pathlib import Path

import numpy as np

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError

from .no_telemetry import import_openvino

DEVICE = "CPU"
# An IR as openvino.save_model writes it: an XML declaration, then the <net> root (no DOCTYPE, no
# entities). read_model would hand any other file to another frontend (onnx, paddle, tf, tflite).
IR_HEAD = re.compile(rb"(?:<\?xml[^<>]{0,200}\?>)?\s*<net[\s>]")
# Layers whose runtime precision says whether the model really runs on integer kernels.
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")
INTEGER = ("u8", "i8")


def config(threads: int = 1, strict: bool = True) -> dict:
    cfg = {"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1}
    if strict:
        cfg["INFERENCE_PRECISION_HINT"] = "f32"
    return cfg


def bin_file(artifact) -> str:
    """The artifact's weights file (an IR is .xml + .bin); the manifest must list it."""
    bins = [f for f in artifact.files if f.endswith(".bin")]
    if len(bins) != 1:
        raise UserError("E-ARTIFACT-CORRUPT", f"the openvino artifact {artifact.path} lists {len(bins)} .bin files, not 1",
                        "re-export the bundle")
    return bins[0]


def read_model(core, root: Path, artifact):
    """The IR as an ov.Model; a missing, truncated or malformed file is E-ARTIFACT-CORRUPT, an
    operation the runtime does not know is E-OP-UNSUPPORTED."""
    xml, weights = Path(root) / artifact.path, Path(root) / bin_file(artifact)
    for p in (xml, weights):
        if not p.is_file():
            raise UserError("E-ARTIFACT-CORRUPT", f"{p} does not exist", "re-export the bundle")
    check_ir(xml, "E-ARTIFACT-CORRUPT")
    try:
        model = core.read_model(str(xml), str(weights))
    except RuntimeError as exc:  # OpenVINO raises RuntimeError (ov::Exception) for every load failure
        raise load_error(xml, exc) from exc
    if not same_names(model, artifact.meta["inputs"], artifact.meta["outputs"]):
        raise UserError("E-ARTIFACT-CORRUPT", f"{artifact.path} has inputs {_names(model.inputs)} and outputs "
                        f"{_names(model.outputs)}, its manifest says {artifact.meta['inputs']} and {artifact.meta['outputs']}",
                        "re-export the bundle; the file or manifest.json was changed")
    return model


def same_names(model, inputs, outputs) -> bool:
    """The model's inputs and outputs carry the ModelSpec's names, in its order."""
    return (len(model.inputs) == len(inputs) and len(model.outputs) == len(outputs)
            and all(n in p.get_names() for n, p in zip(inputs, model.inputs))
            and all(n in p.get_names() for n, p in zip(outputs, model.outputs)))


def _names(ports) -> list[list[str]]:
    return [sorted(p.get_names()) for p in ports]


def check_ir(xml: Path, code: str) -> None:
    """Refuse a file that does not start like an IR before any OpenVINO reader sees it."""
    with open(xml, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    if not IR_HEAD.match(head):
        raise UserError(code, f"{xml.name} is not an OpenVINO IR (it must start with an XML declaration and "
                        "the <net> element, as openvino.save_model writes it)", "re-export the bundle with edgekit")


def load_error(xml: Path, exc: Exception) -> UserError:
    text = str(exc)
    found = re.search(r"Cannot create (\w+) layer (\S+) id:\d+ from unsupported opset", text) or \
        re.search(r"[Uu]nsupported operation of type:? (\w+) name:? (\S+)", text)
    if found:
        return UnsupportedOpError("openvino", found.group(1), found.group(2),
                                  "export with ops OpenVINO's CPU plugin implements, or drop the target openvino")
    found = re.search(r"Opset (\w+) doesn't contain the operation with type: (\w+)", text)
    if found:
        return UnsupportedOpError("openvino", f"{found.group(2)} ({found.group(1)})", None,
                                  "re-export with the OpenVINO version this runner has, or drop the target openvino")
    return UserError("E-ARTIFACT-CORRUPT", f"OpenVINO cannot load {xml.name}: {message(exc)}", "re-export the bundle")


def message(exc: Exception) -> str:
    """An OpenVINO exception's own words, without its "Exception from file:line" / "Check ... failed
    at" location lines."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return "; ".join(said or lines or [type(exc).__name__])[:400]


def compile_model(core, model, threads: int = 1, strict: bool = True):
    try:
        return core.compile_model(model, DEVICE, config(threads, strict))
    except RuntimeError as exc:
        text = str(exc)
        found = re.search(r"[Uu]nsupported operation of type:? (\w+) name:? (\S+)", text)
        if found:
            raise UnsupportedOpError("openvino", found.group(1), found.group(2).rstrip(","),
                                     "replace the op in the model, or drop the target openvino") from exc
        if platform.machine() == "aarch64":
            # the file compiled on the exporting host; here the ARM CPU plugin refuses it (measured,
            # openvino 2026.4.1 under qemu: the int8 IRs of tiny_cnn and MobileNetV2 on cortex-a53, MobileNetV2's
            # on cortex-a72 too, "object is not initialized"; both compile on the ARMv8.2 cortex-a76)
            raise UserError("E-RUNTIME-FAILED", f"OpenVINO's ARM CPU plugin cannot compile the model on this CPU: "
                            f"{message(exc)}", "ship another target's file for this CPU (int8 on ARMv8.0 cores: "
                            "onnx, tflite or mnn), or a fp32 OpenVINO IR") from exc
        raise UserError("E-ARTIFACT-CORRUPT", f"OpenVINO's CPU plugin cannot compile the model: {message(exc)}",
                        "re-export the bundle; if it persists, report the message") from exc


def make_runner(artifact, root: Path, threads: int = 1, strict: bool = True):
    ov = import_openvino()
    core = ov.Core()
    compiled = compile_model(core, read_model(core, root, artifact), threads, strict)
    request = compiled.create_infer_request()
    names = list(artifact.meta["inputs"])
    dtypes = [np.dtype(d) for d in artifact.meta["input_dtypes"]]
    outputs = [compiled.output(n) for n in artifact.meta["outputs"]]
    # dynamic shapes: an input may take any size in its ranges (the IR's dims are bounded by them)
    shapes = artifact.meta.get("input_shapes") if artifact.meta.get("dynamic") else None

    def run(inputs) -> list:
        if len(inputs) != len(names):
            raise UserError("E-DATA-SHAPE", f"got {len(inputs)} inputs, the model takes {len(names)}",
                            "pass one array per model input, in the spec's order")
        for n, a, shape in zip(names, inputs, shapes or ()):
            problem = dynamic.shape_problem(artifact.meta, n, shape, np.shape(a))
            if problem:
                raise UserError("E-DATA-SHAPE", problem, "feed sizes inside the model's dynamic ranges")
        feed = {n: np.ascontiguousarray(a, dtype=dt) for n, a, dt in zip(names, inputs, dtypes)}
        result = request.infer(feed)
        # copy: the request reuses its output buffers on the next call; each output has its actual
        # shape (with dynamic shapes it follows the inputs')
        return [np.array(result[o], dtype=np.float32, copy=True) for o in outputs]

    return run


def runtime_layers(compiled) -> list[dict]:
    """What the CPU plugin executes, from ``compiled.get_runtime_model()``: one dict per compute layer
    (name, layer type, runtime precision, primitive), in execution order."""
    rows = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        get = lambda key: info[key].astype(str) if key in info else ""  # noqa: E731
        if get("layerType") in COMPUTE_LAYERS:
            rows.append({"name": op.get_friendly_name(), "type": get("layerType"),
                         "precision": get("runtimePrecision"), "primitive": get("primitiveType")})
    return rows


def integer_summary(layers: list[dict]) -> dict:
    """{"integer": {type: n}, "float": {type: n}}: compute layers on integer (u8/i8) kernels and the rest."""
    out = {"integer": Counter(), "float": Counter()}
    for layer in layers:
        out["integer" if layer["precision"] in INTEGER else "float"][layer["type"]] += 1
    return {k: dict(v) for k, v in out.items()}
