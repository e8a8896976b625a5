"""Where an unsupported operator comes from in the user's code.

torch.export keeps the Python stack of every node (``node.meta["stack_trace"]``). Given the operator
a converter could not take (``aten::hardswish``, ``aten.upsample_bilinear2d.vec``, ``hardswish``)
or the node it named, this finds the first node of the captured program that matches and returns
the innermost frame of that stack that is the user's own code, not torch's or edgekit's:
``models/net.py:42 in forward: x = F.hardswish(x)``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')
_JIT_FRAME = re.compile(r"^(?P<file>[^\n(]+)\((?P<line>\d+)\): (?P<func>\S+)$", re.M)


def _library_dirs() -> tuple[str, ...]:
    """Folders whose frames are not the user's: torch, edgekit (and its converters), installed packages."""
    import sysconfig

    import torch

    import edgekit

    import edgekit.converters

    dirs = [Path(torch.__file__).parent, Path(edgekit.__file__).parent, Path(edgekit.converters.__file__).parent]
    dirs += [Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib", "stdlib")]
    return tuple(str(d.resolve()) + os.sep for d in dirs)


def _op_key(op: str) -> str:
    """'aten::hardswish', 'aten.hardswish_.default', 'quantized hardswish' -> 'hardswish'."""
    name = re.split(r"::|\.", op.strip().split()[-1])
    name = [p for p in name if p not in ("aten", "quantized", "quantized_decomposed", "prims", "default", "Tensor", "vec", "int", "self", "")]
    return name[0].rstrip("_") if name else op


def user_frame(stack_trace: str | None) -> str | None:
    """The innermost frame of ``stack_trace`` outside torch, edgekit and installed packages."""
    if not stack_trace:
        return None
    library = _library_dirs()
    frames = [m for m in _FRAME.finditer(stack_trace)
              if not m["file"].startswith("<") and not str(Path(m["file"]).resolve()).startswith(library)]
    if not frames:
        return None
    m = frames[-1]
    return f"{m['file']}:{m['line']} in {m['func']}: {m['code'].strip()}"


def user_frame_of_jit(source_range: str | None) -> str | None:
    """The same for a TorchScript node's ``sourceRange()`` of a traced module ("file(line): func" per
    frame, innermost first): the innermost frame outside the library folders, with its code line."""
    import linecache

    library = _library_dirs()
    for m in _JIT_FRAME.finditer(source_range or ""):
        path = m["file"].strip()
        if path.startswith("<") or str(Path(path).resolve()).startswith(library):
            continue
        code = linecache.getline(path, int(m["line"])).strip()
        return f"{path}:{m['line']} in {m['func']}: {code}"
    return None


def locate(program, op: str | None, node: str | None = None) -> str | None:
    """The user's source line of the first node of ``program`` (an ExportedProgram) that is ``node``
    or calls ``op``; None when the program has no such node or no stack for it."""
    if program is None or not (op or node):
        return None
    key = _op_key(op) if op else None
    for n in program.graph.nodes:
        if n.op != "call_function":
            continue
        target = getattr(n.target, "__name__", str(n.target))
        if n.name == node or (key and _op_key(target) == key):
            where = user_frame(n.meta.get("stack_trace"))
            if where:
                return where
    return None
