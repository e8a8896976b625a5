"""InspectResult: the structured answer of ``edgekit inspect`` and the markdown section of a report."""
from __future__ import annotations

from dataclasses import dataclass, field

from .partitions import Coverage


@dataclass
class InspectResult:
    artifact: str
    kind: str  # "tflite", "ncnn", "executorch", "ptl-nnapi", "ptl"
    ops: list[dict] = field(default_factory=list)  # tflite: every op of every subgraph
    subgraphs: list[dict] = field(default_factory=list)  # tflite: name, op count, inputs/outputs
    xnnpack: Coverage | None = None  # measured
    gpu: Coverage | None = None  # rule-based
    nnapi: dict[int, Coverage] = field(default_factory=dict)  # rule-based, per API level
    details: dict = field(default_factory=dict)  # ncnn / executorch specifics
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact, "kind": self.kind, "subgraphs": self.subgraphs, "ops": self.ops,
            "xnnpack": self.xnnpack.to_dict() if self.xnnpack else None,
            "gpu": self.gpu.to_dict() if self.gpu else None,
            "nnapi": {str(lv): c.to_dict() for lv, c in self.nnapi.items()},
            "details": self.details, "notes": list(self.notes), "warnings": list(self.warnings),
        }

    def markdown(self, ops: bool = True) -> str:
        """The coverage as Markdown; ops=False leaves out the per-operator table (for bundle reports)."""
        out = [f"### Delegate coverage: `{self.artifact}` ({self.kind})", ""]
        for w in self.warnings:
            out.append(f"> **Warning:** {w}")
        if self.warnings:
            out.append("")
        if self.subgraphs:
            out.append("Subgraphs: " + "; ".join(f"{s['name']} ({s['ops']} ops)" for s in self.subgraphs))
            out.append("")
        if self.xnnpack or self.gpu or self.nnapi:
            out += ["| delegate | how | ops delegated | partitions | on CPU |", "|---|---|---|---|---|"]
            rows = []
            if self.xnnpack:
                rows.append(("XNNPACK (CPU)", "measured (LiteRT interpreter)", self.xnnpack))
            if self.gpu:
                rows.append(("GPU delegate", "rules (delegate source)", self.gpu))
            for lv, c in self.nnapi.items():
                rows.append((f"NNAPI, API {lv}", "rules (delegate source)", c))
            for name, how, c in rows:
                cpu = ", ".join(f"{n} (op {i})" for i, n, _ in c.cpu_ops[:8]) or "none"
                if len(c.cpu_ops) > 8:
                    cpu += f", +{len(c.cpu_ops) - 8} more"
                out.append(f"| {name} | {how} | {c.delegated} of {c.total} | {len(c.partitions)} | {cpu} |")
            out.append("")
        if self.details.get("summary"):
            out += [self.details["summary"], ""]
        if self.ops and ops:
            out += ["<details><summary>Operators</summary>", "", "| # | op | version | inputs | outputs |", "|---|---|---|---|---|"]
            for op in self.ops:
                out.append(f"| {op['subgraph']}:{op['index']} | {op['op']} | {op['version']} | "
                           f"{', '.join(op['inputs'])} | {', '.join(op['outputs'])} |")
            out += ["", "</details>", ""]
        for n in self.notes:
            out.append(f"- {n}")
        return "\n".join(out).rstrip() + "\n"
