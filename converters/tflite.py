"""TFLite target: litert-torch exports the module (through ``torch.export``) to one ``.tflite``
flatbuffer; the host runner is the ai-edge-litert interpreter with its default XNNPACK delegate.

Facts this module is built on (measured with litert-torch 0.10.0 / ai-edge-litert 2.3.0):
- The file has one signature, ``serving_default``, whose inputs are named ``args_<k>`` after the
  position k of the forward() argument and whose outputs are ``output_<k>``. TFLite does not
  promise that the interpreter's flat input list follows the argument order (signature inputs are
  keyed by name), so inputs are matched by signature name, never by position in
  ``get_input_details()``, and the mapping is stored in ``Artifact.meta``.
- int64 inputs (token ids, attention masks) become int32 in the file (``enable_x64=False``, what
  phones run); the runner casts, after checking the values fit.
- Images stay NCHW: the converter inserts a TRANSPOSE, so an app feeds the same layout as torch.
- The runner process must not import TensorFlow: with TF loaded, Flex ops would run on the host and
  hide a model that fails on a phone. ai-edge-litert does not import it; neither does this module.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edgekit.errors import UnsupportedOpError, UserError, missing_dependency

from .base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo

NAME = "tflite"
SIGNATURE = "serving_default"

# Messages the toolchain and the runtime use for an operator they cannot take.
_NO_LOWERING = re.compile(r"Lowering not found: (\S+)")
_FAILED_NODE = re.compile(r"While executing %(\S+) : .*?call_function\[target=([^\]]+)\]")
_RUNTIME_OP = (
    re.compile(r"unresolved custom op: ([\w.\-]+)"),
    re.compile(r"Didn't find op for builtin opcode '(\w+)'"),
    re.compile(r"\((Flex\w+)\) failed to prepare"),
)


def _interpreter_class():
    """ai-edge-litert's Interpreter; the retired tflite-runtime only if ai-edge-litert is absent."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise missing_dependency(NAME, "ai_edge_litert", "tflite") from None
    return Interpreter


def _first_line(text: str, limit: int = 300) -> str:
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return line[:limit]


def _chain_text(exc: BaseException) -> str:
    """The messages of an exception and of its causes: the op name is often in an inner one."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def _short_op(target: str) -> str:
    """'torch.ops.aten.cummax.default' -> 'aten.cummax.default' (the name torch users see)."""
    return target.strip().removeprefix("torch.ops.")


def _conversion_error(exc: Exception, model_name: str) -> UserError:
    """Map a litert-torch failure to UnsupportedOpError (naming the op) or E-EXPORT-FAILED."""
    text = _chain_text(exc)
    node = _FAILED_NODE.search(text)
    missing = _NO_LOWERING.search(text)
    if missing:
        return UnsupportedOpError(NAME, _short_op(missing.group(1)), node.group(1) if node else None)
    if node:  # the lowering of one known op failed (e.g. a data-dependent output shape)
        op = _short_op(node.group(2))
        return UnsupportedOpError(NAME, op, node.group(1),
                                  fix=f"litert-torch could not lower {op} ({_first_line(str(exc), 160)}); "
                                      f"rewrite it with static-shape ops or drop the target {NAME}")
    return UserError("E-EXPORT-FAILED", f"litert-torch could not convert {model_name}: {_first_line(text)}",
                     "make torch.export.export(model, example_inputs) succeed on the model (e.g. no "
                     "data-dependent control flow); the toolchain's full error is chained to this one")


def _open(path: Path, threads: int):
    """Load a .tflite and allocate its tensors; a file the runtime rejects raises a coded error."""
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    interpreter_cls = _interpreter_class()
    try:
        interp = interpreter_cls(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        for pattern in _RUNTIME_OP:
            found = pattern.search(str(exc))
            if found:
                raise UnsupportedOpError(NAME, found.group(1), None,
                                         fix="the LiteRT builtin runtime lacks this op (a Flex/custom op or a "
                                             "newer op version); replace it in the model") from exc
        raise UserError("E-ARTIFACT-CORRUPT", f"the LiteRT interpreter cannot load {path.name}: "
                        f"{_first_line(str(exc))}", "re-export the bundle; the file is truncated or corrupt") from exc
    return interp


def _describe(details: dict) -> dict:
    return {"tensor": details["name"], "dtype": np.dtype(details["dtype"]).name,
            "shape": [int(s) for s in details["shape"]]}


def _io_meta(path: Path, spec) -> dict:
    """Read the exported file's signature and pair each spec input/output with its runtime tensor."""
    interp = _open(path, threads=1)
    signatures = interp.get_signature_list()
    if SIGNATURE not in signatures:
        raise UserError("E-EXPORT-FAILED", f"the exported file has signatures {sorted(signatures)}, not {SIGNATURE!r}",
                        "report this litert-torch version: edgekit expects its default signature")
    sig = interp.get_signature_runner(SIGNATURE)
    sig_in, sig_out = sig.get_input_details(), sig.get_output_details()
    # litert-torch names the flat forward() arguments args_0, args_1, ... in argument order, and the
    # spec lists inputs in that same order (the example inputs are built from it).
    in_names = [f"args_{k}" for k in range(len(spec.inputs))]
    out_names = [f"output_{k}" for k in range(len(spec.outputs))]
    if sorted(sig_in) != sorted(in_names) or sorted(sig_out) != sorted(out_names):
        raise UserError("E-EXPORT-FAILED",
                        f"the file's signature has inputs {sorted(sig_in)} and outputs {sorted(sig_out)}, the spec "
                        f"{spec.name} has {len(spec.inputs)} inputs and {len(spec.outputs)} outputs",
                        "make forward() take exactly the spec's inputs and return its outputs (a tensor or a tuple)")
    inputs = []
    for t, rt_name in zip(spec.inputs, in_names):
        d = _describe(sig_in[rt_name])
        if d["shape"] != list(t.shape):
            raise UserError("E-EXPORT-FAILED", f"input {t.name!r} is {d['shape']} in the file, {list(t.shape)} in the spec",
                            "give example inputs of the spec's shapes")
        inputs.append({"name": t.name, "runtime_name": rt_name, "spec_dtype": t.dtype, **d})
    outputs = []
    for t, rt_name in zip(spec.outputs, out_names):
        d = _describe(sig_out[rt_name])
        if int(np.prod(d["shape"])) != int(np.prod(t.shape)):
            raise UserError("E-EXPORT-FAILED", f"output {t.name!r} is {d['shape']} in the file, {list(t.shape)} in the spec",
                            "make the spec's output shapes match what the model returns")
        outputs.append({"name": t.name, "runtime_name": rt_name, "spec_shape": list(t.shape), **d})
    return {
        "signature": SIGNATURE,
        "inputs": inputs,  # spec order
        "outputs": outputs,  # spec order
        # The interpreter's own input order, recorded for apps that feed tensors by position.
        "runtime_input_order": [d["name"] for d in interp.get_input_details()],
        "int64_as_int32": True,
    }


@contextmanager
def _quiet_progress():
    """Silence litert-torch's progress lines during one conversion unless the user asked for them."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        yield
    finally:
        os.environ.pop(key, None)


class TFLiteConverter(Converter):
    info = TargetInfo(
        name=NAME,
        title="TensorFlow Lite (LiteRT)",
        suffix=".tflite",
        precisions=("fp32",),
        tolerances={"fp32": FP32_TOLERANCE},
        delegates=("xnnpack", "nnapi", "gpu"),
        extra="tflite",
        modules=("litert_torch",),
        runtime_modules=("ai_edge_litert|tflite_runtime",),
        arm=True,
        packages=("litert-torch", "ai-edge-litert", "torchao"),
        exporter="litert-torch convert (torch.export -> StableHLO -> TFLite flatbuffer)",
        runtime="ai-edge-litert Interpreter, XNNPACK delegate, FP32",
    )

    def export(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        if recipe is not None:
            raise UserError("E-TARGET-PRECISION", f"target {NAME} exports only fp32 for now",
                            f"run {NAME} without a quantization recipe")
        precision = "fp32"
        try:
            import litert_torch
        except ImportError:
            raise missing_dependency(NAME, "litert_torch", self.info.extra) from None

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / f"{spec.name}-{precision}{self.info.suffix}"
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{final.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            try:
                with _quiet_progress():
                    converted = litert_torch.convert(model.eval(), tuple(example_inputs))
                    converted.export(str(tmp))
            except Exception as exc:  # litert-torch raises torch, JAX and MLIR errors alike
                raise _conversion_error(exc, spec.name) from exc
            meta = _io_meta(tmp, spec)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return Artifact(NAME, precision, final.name, (final.name,), meta)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        interp = _open(Path(root) / artifact.path, threads)
        meta = artifact.meta
        try:
            sig = interp.get_signature_runner(meta["signature"])
            sig_in, sig_out = sig.get_input_details(), sig.get_output_details()
            in_idx = [sig_in[t["runtime_name"]]["index"] for t in meta["inputs"]]
            out_idx = [sig_out[t["runtime_name"]]["index"] for t in meta["outputs"]]
        except (KeyError, ValueError) as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"{artifact.path} does not match its recorded inputs/outputs ({exc})",
                            "re-export the bundle; the file or manifest.json was changed") from exc
        primary = {d["index"] for d in interp.get_input_details()}
        if not set(in_idx) <= primary:  # one signature = the primary subgraph, as litert-torch writes it
            raise UserError("E-ARTIFACT-CORRUPT", f"{artifact.path}: signature {meta['signature']} is not the main graph",
                            "re-export the bundle with edgekit")
        in_specs, out_specs = meta["inputs"], meta["outputs"]

        def run(inputs) -> list:
            if len(inputs) != len(in_specs):
                raise UserError("E-DATA-SHAPE", f"got {len(inputs)} inputs, the model takes {len(in_specs)}",
                                "pass one array per model input, in the spec's order")
            for t, idx, a in zip(in_specs, in_idx, inputs):
                interp.set_tensor(idx, _to_runtime(np.asarray(a), t))
            interp.invoke()
            return [np.array(interp.get_tensor(idx), dtype=np.float32).reshape(t["spec_shape"])
                    for t, idx in zip(out_specs, out_idx)]

        return run


def _to_runtime(a: np.ndarray, t: dict) -> np.ndarray:
    """Check one input against its spec and cast it to the file's dtype (only int64 -> int32)."""
    if list(a.shape) != t["shape"]:
        raise UserError("E-DATA-SHAPE", f"input {t['name']!r} has shape {tuple(a.shape)}, the model takes {tuple(t['shape'])}",
                        "feed samples with the batch dimension and the spec's shape")
    if a.dtype.name == t["dtype"]:
        return a
    if a.dtype.name == t["spec_dtype"] == "int64" and t["dtype"] == "int32":
        info = np.iinfo(np.int32)
        if a.size and (a.min() < info.min or a.max() > info.max):
            raise UserError("E-DATA-SHAPE", f"input {t['name']!r} holds values outside int32, which the .tflite takes",
                            "token ids and masks must fit in int32")
        return a.astype(np.int32)
    raise UserError("E-DATA-SHAPE", f"input {t['name']!r} has dtype {a.dtype}, the model takes {t['spec_dtype']}",
                    "feed the spec's dtypes")


CONVERTER = TFLiteConverter()
