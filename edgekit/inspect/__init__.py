"""Delegate coverage of an exported artifact (``edgekit inspect ARTIFACT`` and a report section).

Each target analyses its own files (``Converter.coverage``: for a .tflite the operators and the
XNNPACK, GPU and NNAPI coverage, for ExecuTorch the delegated subgraphs, ...); this module finds the
target of a file (its manifest entry, else its suffix) and asks it. What is shared lives here: the
result (``report.InspectResult``) and the partition arithmetic (``partitions``). Imports no runtime
until an artifact of that kind is inspected.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.errors import UserError

from .report import InspectResult

__all__ = ["INSPECTABLE", "InspectResult", "inspect_artifact"]

INSPECTABLE = (".tflite", ".param", ".pte", ".ptl")  # the artifact kinds inspect_artifact analyses


def _target_of(path: Path, meta: dict):
    """The converter of an artifact: the manifest's target, else the first target (by rank) whose
    artifacts have this suffix."""
    from edgekit.converters import all_converters, get

    if meta.get("target"):
        return get(meta["target"])
    suffix = path.suffix.lower()
    for conv in all_converters():
        if conv.info.suffix == suffix:
            return conv
    return None


def _inspect_ncnn(path: Path, meta: dict) -> InspectResult:
    from . import ncnn

    details = ncnn.analyse(path, meta.get("precision"))
    res = InspectResult(str(path), "ncnn", details=details)
    res.details["summary"] = (f"{details['layers']} layers, {details['weighted_layers']} weighted "
                              f"({details['int8_layers']} int8)")
    if details.get("fully_int8") is False:
        res.warnings.append(f"int8 was requested but {len(details['float_layers'])} weighted layer(s) stay float: "
                            + ", ".join(details["float_layers"][:10]))
    return res


def inspect_artifact(path: Path, meta: dict | None = None) -> InspectResult:
    """Inspect one artifact file; ``meta`` is its Artifact.meta from the manifest when known."""
    path = Path(path)
    meta = dict(meta or {})
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "pass the path of an exported artifact")
    if meta.get("nnapi") and not meta.get("target"):
        meta["target"] = "ptl-nnapi"
    conv = _target_of(path, meta)
    name = conv.info.name if conv is not None else None
    if name == "ncnn":
        return _inspect_ncnn(path, meta)
    if name == "ptl":
        return InspectResult(str(path), "ptl", notes=["PyTorch Mobile runs on its CPU kernels: no delegate to inspect."])
    res = conv.coverage(path, meta) if conv is not None else None
    if res is None:
        raise UserError("E-ARGS", f"cannot inspect {path.name}: no target analyses {path.suffix or '(no suffix)'} "
                        "files", "pass a .tflite, ncnn .param, ExecuTorch .pte or .ptl file")
    return res
