"""The ``[compress]`` table of a run config (TOML) -> a CompressConfig; coded errors on bad keys.

    [compress]
    steps = ["prune", "distill"]      # in order; see edgekit.compress.stage.STEPS
    [compress.prune]                  # PruneConfig fields
    ratio = 0.3
    [compress.heads]                  # HeadPruneConfig fields (transformer heads / FFN neurons)
    head_ratio = 0.5
    [compress.distill]                # KDConfig fields (also used by qat_distill)
    temperature = 4.0
    [compress.train]                  # TrainConfig fields: every training step
    epochs = 2
    [compress.theseus]                # "stack" plus TheseusConfig fields
    stack = "layers"
    successor_layers = 1
    [compress.lowrank]                # LowRankConfig fields (param_ratio alone switches energy off)
    [compress.qat]                    # QATConfig fields (qat_distill)
"""
from __future__ import annotations

import dataclasses

from edgekit.errors import UserError

# sub-table -> the steps that use it
USED_BY = {
    "prune": ("prune",), "heads": ("heads",), "lowrank": ("lowrank",), "theseus": ("theseus",), "qat": ("qat_distill",),
    "distill": ("distill", "qat_distill"), "train": ("distill", "qat_distill", "theseus"),
}


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _build(cls, table, where: str, extra: tuple[str, ...] = ()):
    if not isinstance(table, dict):
        raise UserError("E-CONFIG", f"{where} must be a table, not {type(table).__name__}", f"write it as [{where}] with key = value lines")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(table) - set(names) - set(extra))
    if unknown:
        raise UserError("E-CONFIG", f"unknown key(s) {', '.join(unknown)} in [{where}]", f"use only {', '.join((*extra, *names))}")
    values = {k: _tuples(v) for k, v in table.items() if k not in extra}
    try:
        return cls(**values)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # a value of the wrong type meets a comparison in __post_init__
        raise UserError("E-CONFIG", f"[{where}]: a value has the wrong type ({exc})", "check the types against the documented example") from exc


def parse_compress(table: dict, where: str = "compress"):
    """-> CompressConfig from the [compress] table (already parsed TOML)."""
    from .distill import KDConfig
    from .heads import HeadPruneConfig
    from .lowrank import LowRankConfig
    from .prune import PruneConfig
    from .qat import QATConfig
    from .stage import STEPS, CompressConfig, TheseusStage
    from .theseus import TheseusConfig
    from .train import TrainConfig

    if not isinstance(table, dict):
        raise UserError("E-CONFIG", f"[{where}] must be a table", "see edgekit/configs/compress_tiny_cnn.toml")
    unknown = sorted(set(table) - {"steps", *USED_BY})
    if unknown:
        raise UserError("E-CONFIG", f"unknown key(s) {', '.join(unknown)} in [{where}]", f"use only steps, {', '.join(USED_BY)}")
    steps = table.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise UserError("E-CONFIG", f"[{where}] needs steps = a list of step names", f"e.g. steps = [\"prune\", \"distill\"]; steps: {', '.join(STEPS)}")
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise UserError("E-CONFIG", f"unknown compression step(s) {', '.join(bad)} in [{where}] steps", f"choose from {', '.join(STEPS)}")
    for sub in USED_BY:
        if sub in table and not set(USED_BY[sub]) & set(steps):
            raise UserError("E-CONFIG", f"[{where}.{sub}] is given but no step uses it (steps: {', '.join(steps)})",
                            f"add {' or '.join(USED_BY[sub])} to steps, or remove the table")
    kw = {}
    if "prune" in table:
        kw["prune"] = _build(PruneConfig, table["prune"], f"{where}.prune")
    if "heads" in table:
        kw["heads"] = _build(HeadPruneConfig, table["heads"], f"{where}.heads")
    elif "heads" in steps:
        kw["heads"] = HeadPruneConfig()
    if "lowrank" in table:
        sub = dict(table["lowrank"]) if isinstance(table["lowrank"], dict) else table["lowrank"]
        if isinstance(sub, dict) and "param_ratio" in sub and "energy" not in sub:
            sub["energy"] = None  # a parameter budget replaces the default energy threshold
        kw["lowrank"] = _build(LowRankConfig, sub, f"{where}.lowrank")
    elif "lowrank" in steps:
        kw["lowrank"] = LowRankConfig()
    if "distill" in table:
        kw["distill"] = _build(KDConfig, table["distill"], f"{where}.distill")
    if "qat" in table:
        kw["qat"] = _build(QATConfig, table["qat"], f"{where}.qat")
    elif "qat_distill" in steps:
        kw["qat"] = QATConfig()
    if "train" in table:
        kw["train"] = _build(TrainConfig, table["train"], f"{where}.train")
    if "theseus" in table:
        sub = table["theseus"]
        if isinstance(sub, dict) and "stack" not in sub:
            raise UserError("E-CONFIG", f"[{where}.theseus] has no stack", "add stack = \"layers\" (the name of the block list)")
        th = _build(TheseusConfig, sub, f"{where}.theseus", extra=("stack",))
        kw["theseus"] = TheseusStage(str(sub["stack"]), th)
    return CompressConfig(steps=tuple(steps), **kw)
