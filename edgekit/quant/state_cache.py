"""Learned weights on disk, keyed by a content hash: what AdaRound and quantization-aware training
learned, so a re-export with the same model, data and recipe learns nothing again.

One ``.npz`` per key, no pickle: every tensor as its raw bytes (any dtype) and a JSON entry with the
format, the full key, each tensor's name, dtype and shape, and a JSON report. Written atomically
(``edgekit.atomic``): a reader sees the old file or the new one, never a part, and two processes
writing one key both write a complete file (the same learned weights). A file that is missing,
truncated, corrupt (the zip's CRC-32 is checked), for another key or format, or does not fit the
model reads as None: the caller learns again and rewrites it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("edgekit")


def cache_dir(kind: str) -> Path:
    """``$EDGEKIT_CACHE_DIR/<kind>``, else ``$EDGEKIT_CACHE/<kind>`` (the variable edgekit.arm reads),
    else ``~/.cache/edgekit/<kind>``."""
    base = os.environ.get("EDGEKIT_CACHE_DIR") or os.environ.get("EDGEKIT_CACHE")
    return Path(base) / kind if base else Path.home() / ".cache" / "edgekit" / kind


def hash_model_and_samples(h, model: torch.nn.Module, samples) -> None:
    """Feed every tensor of ``model``'s state dict and every array of ``samples`` into the hash ``h``."""
    for name, t in model.state_dict().items():
        h.update(name.encode() + str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype
    for s in samples:
        for a in s:
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode() + a.tobytes())


def content_key(model: torch.nn.Module, samples, settings) -> str:
    """sha256 of the model's weights, the samples and ``settings`` (its repr, with torch's version)."""
    h = hashlib.sha256()
    hash_model_and_samples(h, model, samples)
    h.update(repr((settings, torch.__version__)).encode())
    return h.hexdigest()


def save(path: Path, fmt: str, key: str, state: dict, report: dict) -> None:
    names = list(state)
    meta = {"format": fmt, "key": key, "report": report,
            "tensors": [[n, str(state[n].dtype).removeprefix("torch."), list(state[n].shape)] for n in names]}
    arrays = {f"t{i}": state[n].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for i, n in enumerate(names)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    from edgekit.atomic import atomic_file

    with atomic_file(path, durable=True) as f:
        np.savez(f, **arrays)


def load(path: Path, fmt: str, key: str, like: dict) -> tuple[dict, dict] | None:
    """(state dict, report) from a file ``save`` wrote for ``key``; ``like``: the state dict the
    tensors must fit (names, dtypes, shapes)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            if meta.get("format") != fmt or meta.get("key") != key:
                raise ValueError("written for another key or format")
            state = {}
            for i, (name, dtype, shape) in enumerate(meta["tensors"]):
                ref = like.get(name)
                if ref is None or str(ref.dtype).removeprefix("torch.") != dtype or list(ref.shape) != shape:
                    raise ValueError(f"tensor {name} does not fit the model")
                raw = torch.from_numpy(z[f"t{i}"])
                state[name] = raw.view(ref.dtype).reshape(shape) if raw.numel() else torch.empty(shape, dtype=ref.dtype)
            if set(state) != set(like):
                raise ValueError("tensors missing")
            return state, meta["report"]
    except Exception as exc:  # noqa: BLE001  (whatever is wrong with the file: learn again and rewrite it)
        log.warning("%s cache %s unusable (%s: %s): learning again", fmt, path, type(exc).__name__, exc)
        return None


def store(path: Path | None, fmt: str, key: str, state: dict, report: dict) -> None:
    """``save``, where a failure (a read-only or full disk) only means the next job learns again."""
    if path is None:
        return
    try:
        save(path, fmt, key, state, report)
    except (OSError, TypeError, ValueError) as exc:
        log.warning("%s cache %s not written (%s)", fmt, path, exc)
