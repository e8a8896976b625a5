"""Partitions: given which ops a delegate supports, how the graph splits between the delegate and
the CPU, and the one-line summary a report shows.

The split follows execution order: consecutive supported ops form one delegate partition, and each
unsupported op ends it (what TFLite's partitioner gives on the chain-shaped graphs converters
emit). A delegate with a partition limit (GPU: 1, NNAPI: 3 by default) takes the largest partitions
by op count; ops of the partitions over the limit run on the CPU although the delegate supports them.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coverage:
    delegate: str  # "xnnpack", "nnapi@29", "gpu"
    total: int
    partitions: tuple[tuple[int, ...], ...]  # delegated partitions (op indices), execution order
    cpu_ops: tuple[tuple[int, str, str], ...]  # (op index, op name, why it is on the CPU)
    dropped_partitions: int = 0  # supported partitions left on the CPU by the partition limit
    measured: bool = False  # True: read from the real runtime; False: from edgekit's rule files

    @property
    def delegated(self) -> int:
        return sum(len(p) for p in self.partitions)

    def summary(self) -> str:
        s = f"{self.delegated} of {self.total} ops delegated in {len(self.partitions)} partition(s)"
        if not self.cpu_ops:
            return s + "; none run on CPU"
        names = ", ".join(f"{name} (op {i})" for i, name, _ in self.cpu_ops[:12])
        more = f" and {len(self.cpu_ops) - 12} more" if len(self.cpu_ops) > 12 else ""
        return f"{s}; these run on CPU: {names}{more}"

    def to_dict(self) -> dict:
        return {"delegate": self.delegate, "measured": self.measured, "total_ops": self.total,
                "delegated_ops": self.delegated, "partitions": [list(p) for p in self.partitions],
                "dropped_partitions": self.dropped_partitions,
                "cpu_ops": [{"index": i, "op": n, "reason": r} for i, n, r in self.cpu_ops],
                "summary": self.summary()}


def split(supported: list[bool]) -> list[tuple[int, ...]]:
    """Runs of consecutive supported ops, in execution order."""
    runs, cur = [], []
    for i, ok in enumerate(supported):
        if ok:
            cur.append(i)
        elif cur:
            runs.append(tuple(cur))
            cur = []
    if cur:
        runs.append(tuple(cur))
    return runs


def coverage(delegate: str, names: list[str], reasons: list[str | None], max_partitions: int | None = None,
             measured: bool = False) -> Coverage:
    """Coverage from per-op verdicts (reason None = supported) and the delegate's partition limit."""
    runs = split([r is None for r in reasons])
    kept, dropped = runs, []
    if max_partitions is not None and len(runs) > max_partitions:
        # largest first; on a tie the earlier partition wins (a stable sort)
        chosen = sorted(range(len(runs)), key=lambda k: -len(runs[k]))[:max_partitions]
        kept = [runs[k] for k in sorted(chosen)]
        dropped = [runs[k] for k in range(len(runs)) if k not in chosen]
    in_dropped = {i for p in dropped for i in p}
    cpu = []
    for i, (name, reason) in enumerate(zip(names, reasons)):
        if reason is not None:
            cpu.append((i, name, reason))
        elif i in in_dropped:
            cpu.append((i, name, f"supported, but its partition is beyond the delegate's limit of {max_partitions}"))
    return Coverage(delegate, len(names), tuple(kept), tuple(cpu), len(dropped), measured)
