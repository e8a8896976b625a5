"""GPU delegate coverage of a .tflite from edgekit's rule file ``data/gpu_rules.json``: the ops, op
versions, tensor types and constant inputs the TFLite/LiteRT GPU delegate's model builder accepts with
its default options, each rule citing the delegate source it comes from. A prediction: no GPU here.

INT8 files are accepted (quantized ops are allowed by default) but the delegate computes them in float;
``quantized_note()`` gives the sentence a report shows next to an INT8 file's GPU row."""
from __future__ import annotations

from edgekit.inspect.partitions import Coverage, coverage

from . import rules
from .model import SubgraphInfo


def verdicts(sg: SubgraphInfo) -> list[str | None]:
    table = rules.load("gpu")["ops"]
    return [rules.check(table.get(op.builtin), sg, op) for op in sg.ops]


def analyse(sg: SubgraphInfo) -> Coverage:
    limit = rules.load("gpu").get("max_partitions")
    return coverage("gpu", [op.builtin for op in sg.ops], verdicts(sg), limit)


def quantized_note() -> str:
    """How the GPU delegate runs a quantized .tflite (from the rule file, with its source)."""
    return rules.load("gpu")["quantized_models"]
