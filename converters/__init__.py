"""The converter layer: one module per target. This registry is the capability table's source.

Importing this package imports no toolchain: each target module imports its own lazily.
"""
from __future__ import annotations

import importlib

from edgekit.errors import UserError

from .base import Artifact, Converter, TargetInfo, Tolerance  # noqa: F401

# Target modules in table order (the order of the README table, the CLI help and reports).
_MODULES = ("tflite", "ptl", "ptl_nnapi", "ncnn", "executorch", "onnx")
_cache: dict[str, Converter] = {}


def _load(mod: str) -> Converter:
    if mod not in _cache:
        _cache[mod] = importlib.import_module(f"{__name__}.{mod}").CONVERTER
    return _cache[mod]


def all_converters() -> list[Converter]:
    return [_load(mod) for mod in _MODULES]


def target_names() -> list[str]:
    return [c.info.name for c in all_converters()]


def get(name: str) -> Converter:
    if name in _MODULES and _load(name).info.name == name:  # the usual case: imports one module only
        return _load(name)
    for conv in all_converters():
        if conv.info.name == name:
            return conv
    raise UserError(
        "E-TARGET-UNKNOWN",
        f"unknown target {name!r}",
        f"choose from {', '.join(target_names())} or 'all' (see `edgekit targets`)",
    )


def resolve_targets(spec: str | list[str]) -> list[Converter]:
    """'all', 'tflite,onnx' or a list of names -> converters, in the order given, no duplicates."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UserError("E-TARGET-UNKNOWN", "no target given", f"pass --targets with some of {', '.join(target_names())} or all")
    if "all" in names:
        if len(names) > 1:
            raise UserError("E-ARGS", f"'all' combined with other targets: {','.join(names)}", "pass either 'all' or a list of targets")
        return all_converters()
    seen, out = set(), []
    for n in names:
        if n in seen:
            raise UserError("E-ARGS", f"target {n!r} given twice", "name each target once")
        seen.add(n)
        out.append(get(n))
    return out
