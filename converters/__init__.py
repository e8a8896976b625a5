"""The converter layer: one module (or package) per target, found through a registry. This registry
is the capability table's source.

Targets are Python entry points of the group ``edgekit.targets`` (name = the module's key, value =
``module:CONVERTER``): edgekit's own are declared in its pyproject.toml, and any installed package
can add one (a company's NPU target) without forking edgekit::

    [project.entry-points."edgekit.targets"]
    mynpu = "mynpu_edgekit.target:CONVERTER"

Targets are listed by ``TargetInfo.rank`` (edgekit's own: 10, 20, ...; others default to 100), then
name: the order of the README table, CLI help and reports. Adding a target therefore touches only
its own module or package, its tests and docs, and one entry-point line (plus an extra) in pyproject. Importing this package imports no toolchain: each target module
imports its own lazily, and a target module is imported only when it is asked for.
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from edgekit.errors import UserError

from .base import Artifact, Converter, TargetInfo, Tolerance  # noqa: F401

GROUP = "edgekit.targets"
_registry: dict[str, str] | None = None
_cache: dict[str, Converter] = {}


def registry() -> dict[str, str]:
    """key -> "module:attribute" of every target: built-ins first, then third-party entry points."""
    global _registry
    if _registry is None:
        eps = list(entry_points(group=GROUP))
        own = [ep for ep in eps if ep.dist is not None and ep.dist.name == "edgekit"]
        _registry = {}
        for ep in own + [ep for ep in eps if ep not in own]:  # edgekit's own win a name clash
            _registry.setdefault(ep.name, ep.value)
        if not own:  # edgekit run from its sources (e.g. the aarch64 runner under qemu): its own modules
            for mod in _source_modules():
                _registry.setdefault(mod, f"{__name__}.{mod}:CONVERTER")
    return _registry


def _source_modules() -> list[str]:
    """The target modules/packages of this folder, for an edgekit whose entry points are not
    installed: every module that defines CONVERTER at top level (read, not imported)."""
    import pkgutil
    from pathlib import Path

    found = []
    for info in pkgutil.iter_modules(__path__):
        path = Path(__path__[0]) / (f"{info.name}/__init__.py" if info.ispkg else f"{info.name}.py")
        if path.is_file() and "\nCONVERTER = " in path.read_text(encoding="utf-8"):
            found.append(info.name)
    return found


def refresh() -> None:
    """Forget the registry and the loaded converters (after installing a target package at run time)."""
    global _registry
    _registry = None
    _cache.clear()


def _load(key: str) -> Converter:
    if key not in _cache:
        module, _, attr = registry()[key].partition(":")
        try:
            conv = getattr(importlib.import_module(module), attr or "CONVERTER")
        except (ImportError, AttributeError) as exc:
            raise UserError("E-TARGET-UNKNOWN", f"the target {key!r} is registered as {registry()[key]} but cannot be loaded: {exc}",
                            "reinstall the package that provides it, or uninstall it") from exc
        if not isinstance(conv, Converter):
            raise UserError("E-TARGET-UNKNOWN", f"{registry()[key]} is a {type(conv).__name__}, not an edgekit Converter",
                            "a target's entry point must name a Converter instance")
        _cache[key] = conv
    return _cache[key]


def all_converters() -> list[Converter]:
    """Every target that loads; a broken third-party entry point is left out here (``get`` of its
    name gives the coded error), so it cannot break the built-in targets."""
    loaded = []
    for key in registry():
        try:
            loaded.append(_load(key))
        except UserError:
            continue
    return sorted(loaded, key=lambda c: (c.info.rank, c.info.name))


def target_names() -> list[str]:
    return [c.info.name for c in all_converters()]


def get(name: str) -> Converter:
    key = name.replace("-", "_")
    if key in registry() and _load(key).info.name == name:  # the usual case: imports one module only
        return _load(key)
    if name in registry():  # a registered key whose converter names itself otherwise: load it to say so
        _load(name)
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
