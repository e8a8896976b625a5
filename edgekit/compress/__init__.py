"""Compression that survives export: distillation, BERT-of-Theseus, structured pruning (channels;
attention heads and FFN neurons), low-rank, QAT-style distillation.

Each technique is a frozen config applied by one function, and reports parameters and MACs before
and after (``edgekit.compress.count``). ``edgekit.compress.stage.compress`` runs a chosen sequence
of them as one pipeline stage (``CompressConfig``; the ``[compress]`` table of a run config).
Recovery training (``train.fit``) runs on one process or under ``torchrun`` with DDP.

The torch-heavy submodules are imported on use: ``import edgekit.compress`` stays light.
"""
from __future__ import annotations
