"""Compression that survives export: distillation, BERT-of-Theseus, structured pruning, low-rank.

Each technique is a frozen config applied by one function, and reports parameters and MACs before
and after (``edgekit.compress.count``). Recovery training (``train.fit``) runs on one process or
under ``torchrun`` with DistributedDataParallel.

The torch-heavy submodules are imported on use: ``import edgekit.compress`` stays light.
"""
from __future__ import annotations
