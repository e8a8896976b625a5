"""The quantized reference program: the convert_pt2e model (float simulation of exactly the
artifact's quantization) captured with torch.export and saved next to the artifact.

Loading it needs the ``quantized_decomposed`` ops registered: ``load_quantized_reference`` imports
torchao's PT2E module first (plain ``torch.export.load`` works too once torchao is imported).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import UserError


def reference_name(spec_name: str, target: str, precision: str = "int8") -> str:
    """Per target and precision: each target's quantizer places its own quantize/dequantize pairs, so
    two quantized artifacts of one model have different references and must not share (overwrite) one file."""
    return f"{spec_name}-{precision}.{target}.reference.pt2"


def quant_meta(recipe, calibration, reference: str, output_scales, kept_float, notes) -> dict:
    """The artifact meta every calibrated (static INT8) export records: its reference file, output
    scales (0.0 for a float output), the recipe, the calibration set used, layers kept float, notes."""
    return {
        "reference": reference,
        "output_scales": [s if s is not None else 0.0 for s in output_scales],
        "recipe": recipe.to_dict(),
        "recipe_summary": recipe.describe(),
        "calibration": {"count": min(len(calibration), recipe.max_samples),
                        "sha256": calibration.head(recipe.max_samples).sha256},
        "kept_float": sorted(kept_float),
        "quant_notes": list(notes),
    }


def save_quantized_reference(module, example_inputs: tuple, path: Path) -> None:
    """torch.export the convert_pt2e module and save it atomically (edgekit.atomic)."""
    import torch

    from edgekit.atomic import atomic_file

    ep = torch.export.export(module, tuple(example_inputs))
    with atomic_file(path) as f:
        torch.export.save(ep, f)


def load_quantized_reference(path: Path):
    """The saved reference as an ExportedProgram (call ``.module()`` to run it), read by
    edgekit.safe_load (no code from the file runs: it may come from an untrusted bundle)."""
    from edgekit.safe_load import load_program

    if not Path(path).is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"quantized reference {path} does not exist", "re-export the bundle")
    return load_program(Path(path), what=f"the quantized reference {Path(path).name}")


def run_program(module, samples) -> list[np.ndarray]:
    """Outputs of a torch module on numpy input tuples: one (N, ...) array per output."""
    import torch

    outs = []
    with torch.no_grad():
        for s in samples:
            y = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in s])
            outs.append([t.numpy() for t in (y if isinstance(y, (tuple, list)) else (y,))])
    return [np.stack([o[k] for o in outs]) for k in range(len(outs[0]))]
