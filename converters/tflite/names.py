"""Shorter tensor names in a .tflite: litert-torch names each tensor by its full module-class path
("edgekit.models.mobilenet_v2.MobileNetV2/torch.nn.modules.container.Sequential_features/.../
torch.nn.modules.conv.Conv2d_0;1"): 70 kB of MobileNetV2's 4.07 MB INT8 file, 1.7 % of it. Each
"/"-separated part keeps only its last dotted component and the root model part is dropped
("Sequential_features/Sequential_0/Conv2d_0;1"): the same structure, readable, a third of the bytes.
Names are debug labels in TFLite (signatures map their own names to tensor indices, and edgekit's
runners and per-layer check use indices), so nothing that runs the file depends on them.
"""
from __future__ import annotations

import stat
from pathlib import Path

from .float_io import _load, _pack, _schema, _text, _write


def short_name(name: str) -> str:
    parts = [p.rsplit(".", 1)[-1] for p in name.split("/")]
    if len(parts) > 1:
        parts = parts[1:]  # the root model's class: the same for every tensor
    return "/".join(parts)


def compact_tensor_names(src: Path, dst: Path) -> dict:
    """Write ``dst``: ``src`` with every tensor name shortened by ``short_name``; -> byte counts."""
    src, dst = Path(src), Path(dst)
    raw = src.read_bytes()
    schema = _schema()
    model = _load(schema, raw, src)
    before = 0
    for graph in model.subgraphs:
        for t in graph.tensors or []:
            name = _text(t.name)
            before += len(name)
            t.name = short_name(name)
    data = _pack(schema, model, raw)
    _write(dst, data, stat.S_IMODE(src.stat().st_mode))
    return {"bytes_before": len(raw), "bytes_after": len(data)}
