"""PyTorch Mobile for NNAPI (target ``ptl-nnapi``): the traced, channels-last model converted with
``torch.backends._nnapi.prepare.convert_model_to_nnapi`` and saved for the lite interpreter.

The file holds the NNAPI model serialised inside a TorchScript wrapper; at the first call on the
device the wrapper loads ``libneuralnetworks.so`` and compiles the model for the phone's drivers.
That library exists only on Android, so this target CANNOT RUN ON A HOST: ``HOST_RUNNABLE`` is False
with the reason in ``NOT_RUNNABLE_REASON``, and ``runner`` raises a coded error naming it instead
of pretending. The export is real and checked: the file loads in the lite interpreter, and its
inputs (shape, dtype, memory format) are recorded in ``Artifact.meta`` for the manifest.

Image inputs (4-D float) are fed channels-last: the converter is given a channels_last example with
``nnapi_nhwc = True``, which makes NNAPI take NHWC data, the layout an Android camera pipeline has.
The app passes an NCHW-shaped tensor in channels_last memory format. NNAPI is deprecated from
Android 15 (see TargetInfo.deprecated): prefer the tflite target with the GPU delegate or a vendor
NPU delegate for new apps.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from edgekit.errors import UnsupportedOpError, UserError

from ..base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo

NAME = "ptl-nnapi"
HOST_RUNNABLE = False
NOT_RUNNABLE_REASON = ("NNAPI runs only on Android (the lite interpreter's NNAPI module loads libneuralnetworks.so, "
                       "which no host has); the export is checked, its outputs are not")
_JIT_DEPRECATION = r".*(`torch\.jit\.\w+`|Lite Interpreter) is deprecated"
_UNSUPPORTED = re.compile(r"Unsupported node kind \(['\"]?([\w:.]+)['\"]?\)")


class PtlNnapiConverter(Converter):
    info = TargetInfo(
        rank=30,
        name=NAME,
        title="PyTorch Mobile for NNAPI (Android)",
        suffix=".ptl",
        precisions=("fp32",),
        tolerances={"fp32": FP32_TOLERANCE},  # would apply on a device; never used on a host
        delegates=("nnapi",),
        extra="ptl",
        modules=(),
        runtime_modules=(),
        packages=("torch",),
        exporter="torch.jit.trace (channels_last) + torch.backends._nnapi.prepare.convert_model_to_nnapi "
                 "+ _save_for_lite_interpreter",
        runtime="Android only: lite interpreter + NNAPI (libneuralnetworks.so); not runnable on a host",
        deprecated="NNAPI is deprecated from Android 15 and PyTorch Mobile in favour of ExecuTorch; for new apps "
                   "use the tflite target with the GPU delegate or a vendor NPU delegate.",
        not_runnable=NOT_RUNNABLE_REASON,
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        from torch.backends._nnapi.prepare import convert_model_to_nnapi

        inputs, described = [], []
        for t, x in zip(spec.inputs, example_inputs):
            if not x.is_floating_point() or x.dtype != torch.float32:
                raise UnsupportedOpError(NAME, f"{str(x.dtype).replace('torch.', '')} input {t.name!r}", None,
                                         "PyTorch's NNAPI converter takes float32 inputs only; drop the target "
                                         "ptl-nnapi for this model (token inputs: use tflite or executorch)")
            nhwc = x.dim() == 4
            x = x.contiguous(memory_format=torch.channels_last) if nhwc else x.contiguous()
            if nhwc:
                x.nnapi_nhwc = True
            inputs.append(x)
            described.append({"name": t.name, "shape": list(x.shape), "dtype": "float32",
                              "memory_format": "channels_last" if nhwc else "contiguous"})
        final = out_dir / f"{spec.name}-fp32-nnapi{self.info.suffix}"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            with torch.no_grad():
                try:
                    traced = torch.jit.trace(_out_of_place(model), tuple(inputs))
                    nnapi_model = convert_model_to_nnapi(traced, inputs if len(inputs) > 1 else inputs[0])
                except Exception as exc:  # the NNAPI serializer raises bare Exception for unknown ops
                    raise _refusal(exc) from exc
                nnapi_model._save_for_lite_interpreter(str(final))
        meta = {"inputs": described, "outputs": spec.output_names, "host_runnable": HOST_RUNNABLE,
                "not_runnable_reason": NOT_RUNNABLE_REASON, "nnapi": True}
        return Artifact(NAME, "fp32", final.name, (final.name,), meta)

    def coverage(self, path: Path, meta: dict):
        from edgekit.inspect.report import InspectResult

        res = InspectResult(str(path), NAME, details={"summary": "PyTorch Mobile model converted for NNAPI: "
                                                      "every op runs through NNAPI on the device."})
        res.notes.append("not runnable on host: the NNAPI runtime (libneuralnetworks.so) exists only on Android")
        res.notes.append(f"Deprecated: {self.info.deprecated}")
        return res

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        raise UserError("E-HOST-UNRUNNABLE", f"{artifact.path} is not runnable on host: {NOT_RUNNABLE_REASON}",
                        "run it in an Android app (API 27+); on a host, verify the tflite/ptl targets instead")


def load(path: Path):
    """Load the exported file in the lite interpreter (works on a host; running it does not)."""
    from torch.jit.mobile import _load_for_lite_interpreter

    if not Path(path).is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
        try:
            return _load_for_lite_interpreter(str(path))
        except RuntimeError as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"the lite interpreter cannot load {path}: {_first_line(exc)}",
                            "re-export the bundle") from exc


def _refusal(exc: Exception) -> UserError:
    """What convert_model_to_nnapi raised, as ``unsupported`` when its serializer refused a node: an
    unmapped op ("Unsupported node kind") or a form of a mapped one it does not take ("Group
    convolution not supported yet", a flatten of an NHWC tensor). The node is the serializer's local
    ``node`` in the failing frame; its trace records the user's line. Else E-EXPORT-FAILED."""
    from edgekit.source_line import user_frame_of_jit

    node, tb = None, exc.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals.get("node")
        node = local if isinstance(local, torch._C.Node) else node
        tb = tb.tb_next
    found = _UNSUPPORTED.search(str(exc))
    if found or node is not None:
        op = found.group(1) if found else f"{node.kind()} ({_first_line(exc).rstrip('.')})"
        source = user_frame_of_jit(node.sourceRange()) if node is not None else None
        return UnsupportedOpError(NAME, op, None, "PyTorch's NNAPI converter cannot take it; replace it, or drop "
                                  "the target ptl-nnapi (deprecated: prefer tflite with a delegate)", source=source)
    return UserError("E-EXPORT-FAILED", f"convert_model_to_nnapi failed: {_first_line(exc)}",
                     "the model must trace and use ops PyTorch's NNAPI converter supports")


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


CONVERTER = PtlNnapiConverter()


def _out_of_place(model):
    """A copy whose activations run out of place: PyTorch's NNAPI converter maps aten::relu but not
    aten::relu_ (timm and torchvision build their activations with inplace=True)."""
    import copy

    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(getattr(mod, "inplace", None), bool):
            mod.inplace = False
    return model
