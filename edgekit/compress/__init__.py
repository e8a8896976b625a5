"""Compression that survives export: distillation, BERT-of-Theseus, structured pruning (channels;
attention heads and FFN neurons), low-rank, QAT-style distillation.

Each technique is a frozen config applied by one function, and reports parameters and MACs before
and after (``edgekit.compress.count``). ``edgekit.compress.stage.compress`` runs a chosen sequence
of them as one pipeline stage (``CompressConfig``; the ``[compress]`` table of a run config).
Recovery training (``train.fit``) runs on one process or under ``torchrun`` with DDP.

The torch-heavy submodules are imported on use: ``import edgekit.compress`` stays light.
"""
from __future__ import annotations

# The names the README's table shows, importable from here (``from edgekit.compress import PruneConfig``);
# each loads its submodule on first use. (The function prune shares its name with the submodule
# edgekit.compress.prune: import it from there.)
_EXPORTS = {
    "KDConfig": "distill", "Distiller": "distill", "TheseusConfig": "theseus", "PruneConfig": "prune",
    "LowRankConfig": "lowrank", "low_rank": "lowrank", "TrainConfig": "train", "fit": "train",
    "HeadPruneConfig": "heads", "prune_heads": "heads", "QATConfig": "qat", "CompressConfig": "stage",
    "TheseusStage": "stage", "compress": "stage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
