"""The rule engine shared by the NNAPI and GPU analysers: edgekit's own JSON rule files
(``data/*.json`` beside this module, one entry per op with its source note) applied to the ops of a
.tflite read by ``model``."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from edgekit.errors import InternalError

from .model import OpInfo, SubgraphInfo

DATA = Path(__file__).parent / "data"


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """A rule file by name ("nnapi", "gpu"); a broken file is an edgekit bug, not the user's."""
    path = DATA / f"{name}_rules.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InternalError(f"edgekit's rule file {path} is missing or unreadable: {exc}") from exc
    for op, rule in doc.get("ops", {}).items():
        if not rule.get("source"):
            raise InternalError(f"{path.name}: the rule for {op} has no source note")
    return doc


def _data_input(sg: SubgraphInfo, op: OpInfo):
    ins = sg.op_inputs(op)
    return ins[0] if ins else None


def check(rule: dict | None, sg: SubgraphInfo, op: OpInfo, level: int | None = None) -> str | None:
    """Why ``op`` is refused under ``rule`` (at API ``level`` for level-aware rules), or None if accepted."""
    if rule is None:
        return "the delegate has no rule for this op"
    min_api = rule.get("min_api")
    if level is not None and min_api is not None and level < min_api:
        return f"needs API {min_api}"
    max_version = rule.get("max_version")
    if max_version is not None and op.version > max_version:
        return f"op version {op.version} > {max_version}"
    first = _data_input(sg, op)
    types = rule.get("types")
    if types is not None and first is not None:
        if first.dtype not in types:
            allowed = ", ".join(types)
            return f"input type {first.dtype} not accepted ({allowed})"
        if isinstance(types, dict) and level is not None and level < types[first.dtype]:
            return f"{first.dtype} input needs API {types[first.dtype]}"
    per_channel = rule.get("per_channel_min_api")
    if per_channel is not None and level is not None and level < per_channel:
        if any(t.scales > 1 for t in sg.op_inputs(op)):
            return f"per-channel quantized weights need API {per_channel}"
    for pos in rule.get("const_inputs", ()):
        if pos < len(op.inputs) and op.inputs[pos] >= 0 and not sg.tensors[op.inputs[pos]].constant:
            return f"input {pos} must be a constant"
    max_rank = rule.get("max_rank")
    if max_rank is not None and first is not None and len(first.shape) > max_rank:
        return f"rank {len(first.shape)} > {max_rank}"
    min_inputs = rule.get("min_inputs")
    if min_inputs is not None and sum(1 for i in op.inputs if i >= 0) < min_inputs:
        return f"needs {min_inputs} inputs (e.g. a bias)"
    return None
