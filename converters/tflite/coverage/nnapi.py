"""NNAPI coverage of a .tflite per Android API level (27..34), from edgekit's rule file
``data/nnapi_rules.json`` (TFLite NNAPI delegate's validation rules, each with its source).

NNAPI cannot run on a host, so this is a rule-based prediction, labelled as such. NNAPI is
deprecated from Android 15: ``deprecation()`` gives the text and the alternatives reports show.
"""
from __future__ import annotations

from edgekit.inspect.partitions import Coverage, coverage

from . import rules
from .model import SubgraphInfo


def levels() -> list[int]:
    return list(rules.load("nnapi")["levels"])


def deprecation() -> dict:
    return dict(rules.load("nnapi")["deprecation"])


def verdicts(sg: SubgraphInfo, level: int) -> list[str | None]:
    table = rules.load("nnapi")["ops"]
    return [rules.check(table.get(op.builtin), sg, op, level) for op in sg.ops]


def analyse(sg: SubgraphInfo) -> dict[int, Coverage]:
    """Coverage at each API level, with the delegate's default partition limit applied."""
    limit = rules.load("nnapi").get("max_partitions")
    names = [op.builtin for op in sg.ops]
    return {lv: coverage(f"nnapi@{lv}", names, verdicts(sg, lv), limit) for lv in levels()}
