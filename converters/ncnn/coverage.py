"""ncnn: the layer list of a .param and, where int8 is requested, whether every weighted layer is int8.

.param text format: magic ``7767517``, then ``<layer count> <blob count>``, then one line per layer:
``Type Name n_in n_out <in blobs> <out blobs> key=value ...``. The weighted layers (Convolution,
ConvolutionDepthWise, InnerProduct and their 1D/3D forms) run int8 kernels only when their param
``8`` (int8_scale_term) is non-zero; any other weighted layer stays float.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UserError

MAGIC = "7767517"
WEIGHTED = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Convolution1D", "ConvolutionDepthWise1D",
            "Convolution3D", "ConvolutionDepthWise3D", "Deconvolution", "DeconvolutionDepthWise")
INT8_CAPABLE = ("Convolution", "ConvolutionDepthWise", "InnerProduct")  # layers ncnn has int8 kernels for


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    params: dict[str, str]

    @property
    def int8(self) -> bool:
        return self.params.get("8", "0") not in ("0", "")


def read_param(path: Path) -> list[NcnnLayer]:
    path = Path(path)
    try:
        lines = [s.strip() for s in path.read_text().splitlines() if s.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError("E-ARTIFACT-CORRUPT", f"cannot read {path}: {exc}", "pass the .param of an exported ncnn model") from exc
    if len(lines) < 2 or lines[0] != MAGIC:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} is not an ncnn .param (no magic {MAGIC})",
                        "pass the .param of an exported ncnn model")
    try:
        n_layers = int(lines[1].split()[0])
    except (ValueError, IndexError) as exc:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name}: bad layer/blob count line", "re-export the model") from exc
    layers = []
    for line in lines[2:]:
        parts = line.split()
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
        except (ValueError, IndexError) as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"{path.name}: unreadable layer line {line[:60]!r}", "re-export the model") from exc
        params = dict(kv.split("=", 1) for kv in parts[4 + n_in + n_out:] if "=" in kv)
        layers.append(NcnnLayer(parts[0], parts[1], params))
    if len(layers) != n_layers:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} declares {n_layers} layers and holds {len(layers)}",
                        "re-export the model; the file is truncated")
    return layers


def analyse(path: Path, precision: str | None) -> dict:
    """Layer counts, and for an int8 request the weighted layers that are not int8."""
    layers = read_param(path)
    weighted = [la for la in layers if la.type in WEIGHTED]
    out = {"layers": len(layers), "layer_types": dict(Counter(la.type for la in layers)),
           "weighted_layers": len(weighted), "int8_layers": sum(1 for la in weighted if la.int8)}
    if precision == "int8":
        float_layers = [f"{la.type} {la.name}" for la in weighted if not la.int8]
        out["fully_int8"] = not float_layers
        out["float_layers"] = float_layers
    return out
