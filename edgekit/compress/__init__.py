"""Compression that survives export: distillation, BERT-of-Theseus, structured pruning, low-rank.

Each technique is a frozen config applied by one function, and reports parameters and MACs before
and after (``edgekit.compress.count``). Recovery training (``train.fit``) runs on one process or
under ``torchrun`` with DistributedDataParallel.

The torch-heavy submodules are imported on use: ``import edgekit.compress`` stays light.
"""
from __future__ import annotations

from edgekit.errors import CODES

# Error codes of this package. They belong in edgekit/errors.py CODES; until they are listed there,
# registering them here keeps UserError from rejecting them.
COMPRESS_CODES = {
    "E-COMPRESS-CONFIG": "a compression setting outside its valid range (e.g. a pruning ratio outside (0, 1))",
    "E-COMPRESS-LAYER": "a layer name that does not exist in the model, or a layer of the wrong kind",
    "E-COMPRESS-MISMATCH": "teacher and student (or predecessor and successor) outputs do not fit together",
    "E-COMPRESS-UNSUPPORTED": "a model or layer that the pruning dependency analysis cannot handle",
}
for _code, _text in COMPRESS_CODES.items():
    CODES.setdefault(_code, _text)
