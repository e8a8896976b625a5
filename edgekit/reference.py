"""The FP32 reference kept in every bundle: the model saved with torch.export, plus its ModelSpec.

`edgekit verify` recomputes reference outputs from this file alone, so a bundle copied anywhere can
be checked on new data without the user's Python code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import UserError
from edgekit.spec import ModelSpec

SPEC_KEY = "edgekit/spec.json"


def export_program(module: torch.nn.Module, example_inputs: tuple, name: str, dynamic_shapes=None):
    """torch.export of the model; ``dynamic_shapes`` (edgekit.dynamic.torch_shapes) keeps those axes symbolic."""
    try:
        return torch.export.export(module, tuple(example_inputs), strict=False, dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # torch.export raises many types; the user needs the message
        raise UserError("E-MODEL-EXPORT", f"torch.export cannot capture model {name}: {type(exc).__name__}: {str(exc)[:500]}",
                        "make the model export-friendly (no data-dependent control flow), see torch.export docs") from exc


def save_reference(program, spec: ModelSpec, path: Path) -> None:
    torch.export.save(program, str(path), extra_files={SPEC_KEY: json.dumps(spec.to_dict())})


def load_reference(path: Path):
    """-> (ExportedProgram, ModelSpec or None when the file was not written by edgekit).

    The file may come from an untrusted bundle: edgekit.safe_load reads it without running code
    from it (weights-only unpickling, operator allow-list), E-BUNDLE-UNSAFE otherwise."""
    from edgekit.safe_load import load_program

    extra = {SPEC_KEY: ""}
    program = load_program(Path(path), what=f"the reference program {Path(path).name}", extra_files=extra)
    if not extra[SPEC_KEY]:
        return program, None
    try:
        return program, ModelSpec.from_dict(json.loads(extra[SPEC_KEY]))
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError is a ValueError
        raise UserError("E-BUNDLE-INVALID", f"the ModelSpec stored in {Path(path).name} is not valid: {str(exc)[:300]}",
                        "re-export the bundle, or save the program without edgekit's spec") from exc


def run_reference(module, samples) -> list[np.ndarray]:
    """Run every sample through a torch module; -> stacked float32 outputs (N, *output_shape)."""
    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for sample in samples:
            result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in sample])
            result = (result,) if isinstance(result, torch.Tensor) else tuple(result)
            outs.append([r.detach().float().numpy() for r in result])
    return [np.stack([o[k] for o in outs]) for k in range(len(outs[0]))]
