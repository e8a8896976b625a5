"""Test helper: change one stored weight inside an exported artifact, whatever its format.

Every format edgekit writes stores float32 constants as raw little-endian bytes somewhere in its
files. A 1-D tensor (a bias) has the same byte layout in every format, so its bytes can be found
and one value changed in place: the file stays loadable, only its numbers are wrong. Inside a bundle,
the manifest's sha256 is updated too, as an exporter with that bug would have written it (otherwise
verify refuses the changed file before running it, E-ARTIFACT-CHANGED).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def perturb_tensor(files: list[Path], values: np.ndarray, index: int, delta: float) -> Path:
    """Add ``delta`` to element ``index`` of the stored copy of ``values``; return the file edited."""
    needle = np.ascontiguousarray(values, dtype="<f4").tobytes()
    for path in files:
        data = bytearray(path.read_bytes())
        at = data.find(needle)
        if at < 0:
            continue
        if data.find(needle, at + 1) >= 0:
            raise AssertionError(f"{path.name} stores that tensor twice; pick another one")
        pos = at + 4 * index
        value = np.frombuffer(bytes(data[pos:pos + 4]), "<f4")[0] + np.float32(delta)
        data[pos:pos + 4] = np.float32(value).astype("<f4").tobytes()
        path.write_bytes(bytes(data))
        rehash(path)
        return path
    raise AssertionError(f"tensor not found as raw float32 in {[p.name for p in files]}")


def rehash(path: Path) -> None:
    """Record ``path``'s new sha256 and size in the manifest of the bundle it sits in (if any)."""
    import hashlib
    import json

    manifest = path.parent / "manifest.json"
    if not manifest.is_file():
        return
    m = json.loads(manifest.read_text())
    for art in m.get("artifacts", []):
        for f in art["files"]:
            if f["path"] == path.name:
                f["sha256"], f["size_bytes"] = hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_size
    manifest.write_text(json.dumps(m, indent=2))


def scale_ncnn_input_scale(bundle: Path, dst: Path, artifact, layer: dict, factor: float = 4.0) -> None:
    """Copy an ncnn INT8 artifact's files into ``dst`` with ``layer``'s input scale in the .bin (stored
    once, as a little-endian float after its int8 weights) multiplied by ``factor``: the file still
    loads and runs, and only that layer computes wrong numbers."""
    import shutil
    import struct

    for f in artifact.files:
        shutil.copy(Path(bundle) / f, Path(dst) / f)
    path = Path(dst) / artifact.files[1]
    data = bytearray(path.read_bytes())
    packed = struct.pack("<f", layer["input_scale"])
    assert data.count(packed) == 1, "the layer's input scale is not stored exactly once"
    at = data.index(packed)
    data[at:at + 4] = struct.pack("<f", layer["input_scale"] * factor)
    path.write_bytes(bytes(data))


def flip_largest_tflite_weight(tfl: Path, op_name: str, index: int, out: Path) -> Path:
    """A copy of the .tflite ``tfl`` at ``out`` with the largest int8 weight of the index-th ``op_name``
    op sign-flipped (a seeded fault the per-layer view must localise)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tfl))
    interp.allocate_tensors()
    op = [o for o in interp._get_ops_details() if o["op_name"] == op_name][index]
    w = interp.get_tensor(int(op["inputs"][1]))
    bad = w.copy().reshape(-1)
    k = int(np.argmax(np.abs(bad)))
    bad[k] = np.int8(-int(bad[k]))
    blob = tfl.read_bytes()
    assert blob.count(w.tobytes()) == 1
    out.write_bytes(blob.replace(w.tobytes(), bad.tobytes()))
    return out
