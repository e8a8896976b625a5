"""Verification at several sizes of a model with dynamic shapes (edgekit.dynamic).

The verification samples have the example's shape; each probe rebuilds a few of them at other sizes
of the dynamic dimensions (the bounds and the middle, edgekit.dynamic.probe_sizes), computes the
reference's outputs on them, and judges the artifact on them with the same tolerance as at the
example's size. An artifact that is right only at the example's size fails, and says at which sizes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from edgekit.data import CalibrationSet
from edgekit.dynamic import PROBE_SAMPLES, probe, probe_sizes
from edgekit.spec import ModelSpec


@dataclass(frozen=True)
class SizeProbe:
    """A few verification samples rebuilt at one size per dynamic dimension, with the reference's outputs."""

    sizes: dict
    vset: CalibrationSet
    reference: list

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.sizes.items())


def size_probes(spec: ModelSpec, vset: CalibrationSet, reference_module) -> list[SizeProbe]:
    """The probes of a spec with dynamic dimensions ([] without any), from the verification samples."""
    from edgekit.reference import run_reference

    if not spec.dynamic:
        return []
    probes = []
    for sizes in probe_sizes(spec.dynamic):
        samples = tuple(probe(spec.dynamic, spec.input_names, list(vset.samples), sizes, k * _batch(spec, sizes))
                        for k in range(min(PROBE_SAMPLES, len(vset))))
        pset = CalibrationSet(samples, vset.sources[:len(samples)], vset.kind, vset.root)
        probes.append(SizeProbe(sizes, pset, run_reference(reference_module, pset.samples)))
    return probes


def check_sizes(target: str, art_dict: dict, root: Path, probes: list[SizeProbe], spec: ModelSpec, tol, timeout_s: float) -> dict:
    """Run the artifact at every probe's sizes and judge it: -> {"dims", "sizes": [rows], "failures",
    "errors"}. A row holds the sizes, the status and the worst max abs / cosine at those sizes."""
    from edgekit.isolate import run_artifact
    from edgekit.parity import compare

    rows, failures, errors = [], [], []
    for p in probes:
        outcome = run_artifact(target, art_dict, root, p.vset.stacked(), timeout_s=timeout_s)
        if outcome.error:
            rows.append({"sizes": p.sizes, "status": "error", "error": outcome.error})
            errors.append(f"at {p.label}: {outcome.error.get('code')}: {str(outcome.error.get('message'))[:300]}")
            continue
        batch = _batch(spec, p.sizes)
        res = compare(target, art_dict["precision"], _unbatch(p.reference, batch), _unbatch(outcome.outputs, batch),
                      spec.output_names, tol, spec.task_spec)
        m = res.summary_metrics()
        rows.append({"sizes": p.sizes, "status": res.status, "max_abs": m.get("max_abs"), "cosine_min": m.get("cosine_min"),
                     "failures": res.failures})
        failures.extend(f"at {p.label}: {f}" for f in res.failures)
    return {"dims": [d.describe() for d in spec.dynamic], "sizes": rows, "failures": failures, "errors": errors}


def _batch(spec: ModelSpec, sizes: dict) -> int:
    """The probe's batch size when a dynamic dimension is axis 0 of the inputs, else 1."""
    return next((sizes[d.name] for d in spec.dynamic if any(axis == 0 for _, axis in d.axes)), 1)


def _unbatch(arrays: list, batch: int) -> list:
    """(N, B, ...) -> (N*B, 1, ...): each row of a batch judged as its own sample (top-1 per image)."""
    if batch <= 1:
        return list(arrays)
    return [a.reshape(-1, 1, *a.shape[2:]) if a.ndim >= 2 and a.shape[1] == batch else a for a in arrays]
