"""ExecuTorch: what the XNNPACK partitioner delegated, read from the artifact's meta["delegation"]
(recorded by the executorch converter at export), and a warning for ops left on portable kernels,
ExecuTorch's reference C++ kernels (single-threaded, unoptimised: on the order of 100x slower than
XNNPACK for convolutions and matmuls)."""
from __future__ import annotations

from edgekit.errors import UserError

PORTABLE_SLOWDOWN = "~100x slower than XNNPACK"
# Ops that only move or view data: cheap on portable kernels; not worth a warning on their own.
_CHEAP = ("aten.view_copy", "aten.squeeze_copy", "aten.unsqueeze_copy", "aten.expand_copy", "aten.permute_copy",
          "aten.clone", "aten._to_copy", "dim_order_ops._to_dim_order_copy", "aten.slice_copy", "aten.select_copy")


def analyse(meta: dict) -> dict:
    d = meta.get("delegation")
    if not isinstance(d, dict) or "portable_ops" not in d:
        raise UserError("E-BUNDLE-INVALID", "the ExecuTorch artifact's meta has no 'delegation' record",
                        "re-export the bundle with this edgekit (the executorch converter records it)")
    portable = dict(d.get("portable_ops", {}))
    heavy = {op: n for op, n in portable.items() if not op.startswith(_CHEAP)}
    warnings = []
    if heavy:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(heavy.items()))
        warnings.append(f"{sum(heavy.values())} op(s) stay on ExecuTorch's portable kernels ({PORTABLE_SLOWDOWN}): {listed}")
    total = int(d.get("delegated_nodes", 0)) + int(d.get("portable_nodes", 0))
    return {"backends": d.get("backends", {}), "subgraphs": d.get("subgraphs", 0),
            "delegated_nodes": d.get("delegated_nodes", 0), "portable_nodes": d.get("portable_nodes", 0),
            "portable_ops": portable, "summary": f"{d.get('delegated_nodes', 0)} of {total} ops delegated to "
            f"XNNPACK in {d.get('subgraphs', 0)} subgraph(s)", "warnings": warnings}
