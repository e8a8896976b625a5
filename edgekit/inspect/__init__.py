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

__all__ = ["InspectResult", "inspect_artifact"]


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


def inspect_artifact(path: Path, meta: dict | None = None) -> InspectResult:
    """Inspect one artifact file; ``meta`` is its Artifact.meta from the manifest when known."""
    path = Path(path)
    meta = dict(meta or {})
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "pass the path of an exported artifact")
    conv = _target_of(path, meta)
    res = conv.coverage(path, meta) if conv is not None else None
    if res is None:
        raise UserError("E-ARGS", f"cannot inspect {path.name}: no target analyses {path.suffix or '(no suffix)'} "
                        "files", f"pass an artifact of a target that has a coverage view ({', '.join(_inspectable())})")
    return res


def _inspectable() -> list[str]:
    from edgekit.converters import Converter, all_converters

    return [f"{c.info.name} {c.info.suffix}" for c in all_converters() if type(c).coverage is not Converter.coverage]
