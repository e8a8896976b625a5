"""GPU delegate coverage of a .tflite from edgekit's rule file ``data/gpu_rules.json`` (the ops the
public TFLite GPU delegate documentation lists, each with its source). A prediction: no GPU here."""
from __future__ import annotations

from . import rules
from .partitions import Coverage, coverage
from .tflite_model import SubgraphInfo


def verdicts(sg: SubgraphInfo) -> list[str | None]:
    table = rules.load("gpu")["ops"]
    return [rules.check(table.get(op.builtin), sg, op) for op in sg.ops]


def analyse(sg: SubgraphInfo) -> Coverage:
    limit = rules.load("gpu").get("max_partitions")
    return coverage("gpu", [op.builtin for op in sg.ops], verdicts(sg), limit)
