"""The tflite target's per-layer view: conversion fidelity of an INT8 .tflite against its quantized reference, and per-layer
compression cost of the quantized reference against FP32.

``tflite_per_layer(artifact, reference, samples, float_model=None)``:
1. the .tflite runs with every intermediate tensor kept (``experimental_preserve_all_tensors``,
   reference kernels: no delegate may fuse tensors away, 1 thread);
2. each int8 tensor an op writes is matched to an activation quantize node of the reference
   (the ``convert_pt2e`` program) with equal scale, zero point and element count, in execution order;
3. the reference runs once per sample with every matched activation *replaced by the runtime's own
   int8 tensor*, so each reference op computes from exactly the input the runtime's op had; the
   reference's int8 result of each op is compared with the runtime's, in int8 steps;
4. a layer's error is the max over channels of the max |difference| (a one-channel fault moves
   ~1 % of the values: a mean would hide it).
With ``float_model``, each layer also gets the SQNR of the quantized reference vs FP32 at the conv /
linear / add that produces it (where precision is lost: candidates for ``--keep-float``).
Rows are JSON-safe: {"layer", "op", "module", "max_steps", "mean_steps", "worst_channel", "sqnr_db"}.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import UserError
from edgekit.quant.per_layer import FLAG_STEPS, float_sqnr, module_of, producer, q_nodes, run_injected


def _to_nchw(a: np.ndarray, shape) -> np.ndarray:
    """litert-torch computes 4-D activations in NHWC (TRANSPOSE at the edges): back to torch's NCHW."""
    if a.ndim == 4 and list(a.transpose(0, 3, 1, 2).shape) == list(shape):
        return a.transpose(0, 3, 1, 2)
    return a.reshape(shape)


def _same_layout(runtime_shape: tuple, reference_shape: tuple) -> bool:
    """The runtime tensor holds the reference tensor's values in a layout ``_to_nchw`` can undo:
    the same shape (leading 1s aside) or NHWC for NCHW. Equal element counts are not enough: an
    attention context quantized before its transpose ([12, 128, 32] vs [1, 128, 384]) has the same
    scale and size but its values in another order."""
    def squeeze(s):
        s = tuple(s)
        while len(s) > 1 and s[0] == 1:
            s = s[1:]
        return s

    if squeeze(runtime_shape) == squeeze(reference_shape):
        return True
    r = tuple(reference_shape)
    return len(r) == 4 and tuple(runtime_shape) == (r[0], r[2], r[3], r[1])


def _interpreter(path: Path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interp.allocate_tensors()
    return interp


# Ops the converter adds around others to move between torch's NCHW and TFLite's NHWC: their output
# carries its input's scale and zero point, with no quantize node of its own in the reference. Taken
# as candidates they stole a reference tensor of equal scale (EfficientNet-Lite0 INT8: each PAD sits
# between two TRANSPOSEs, 50 of 78 activations share (6/255, -128) after ReLU6, and 42 of 77 layers
# were compared with the wrong tensor; without them every layer is within 1 step).
_LAYOUT_OPS = {"TRANSPOSE"}


def _match(interp, qnodes) -> list[tuple[int, str, object]]:
    """(tflite tensor index, tflite op name, reference quantize node) in execution order."""
    details = {d["index"]: d for d in interp.get_tensor_details()}
    used, pairs = set(), []
    for op in interp._get_ops_details():
        if op["op_name"] in _LAYOUT_OPS:
            continue
        for t in op["outputs"]:
            d = details.get(int(t))
            if d is None or np.dtype(d["dtype"]) != np.int8:
                continue
            scale, zp = d["quantization"]
            if not scale:
                continue
            shape = tuple(int(x) for x in d["shape"])
            for q in qnodes:
                if q.name in used:
                    continue
                val = q.meta.get("val")
                if val is None or not _same_layout(shape, tuple(val.shape)):
                    continue
                if abs(float(q.args[1]) - scale) <= 1e-6 * scale and int(q.args[2]) == int(zp):
                    used.add(q.name)
                    pairs.append((int(t), op["op_name"], q))
                    break
    return pairs


def tflite_per_layer(artifact_path, reference_program_path, samples, float_model=None) -> list[dict]:
    """Per-layer error of an INT8 .tflite vs its quantized reference (see the module docstring)."""
    from edgekit.quant.reference import load_quantized_reference

    samples = list(samples)
    if not samples:
        raise UserError("E-DATA-EMPTY", "per-layer check got no samples", "pass at least one input tuple")
    gm = load_quantized_reference(Path(reference_program_path)).module()
    interp = _interpreter(Path(artifact_path))
    pairs = _match(interp, q_nodes(gm))
    inputs = interp.get_input_details()
    worst: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    for sample in samples:
        for d, a in zip(inputs, sample):
            a = np.asarray(a)
            if np.dtype(d["dtype"]) == np.int8 and a.dtype.kind == "f":
                scale, zp = d["quantization"]
                a = np.clip(np.round(a / np.float32(scale)) + zp, -128, 127).astype(np.int8)
            interp.set_tensor(d["index"], a.astype(d["dtype"]))
        interp.invoke()
        import torch

        got = {q.name: _to_nchw(interp.get_tensor(t), tuple(q.meta["val"].shape)) for t, _, q in pairs}
        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)
        computed = run_injected(gm, args, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in got.items()})
        for name, ref in computed.items():
            diff = np.abs(ref.numpy().astype(np.int32) - got[name].astype(np.int32))
            per_ch = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2)) if diff.ndim >= 2 else diff.reshape(1)
            worst[name] = np.maximum(worst.get(name, per_ch), per_ch)
            s = sums.setdefault(name, [0.0, 0.0])
            s[0] += float(diff.sum())
            s[1] += diff.size
    producers = {q.name: producer(q) for _, _, q in pairs}
    sq = float_sqnr(gm, float_model, samples, [p.name for p in producers.values()]) if float_model is not None else {}
    rows = []
    for t, op, q in pairs:
        w, p = worst.get(q.name), producers[q.name]
        if w is None or p.op == "placeholder":
            continue  # the graph input: nothing computes it
        rows.append({"layer": p.name, "op": op, "module": module_of(p),
                     "max_steps": float(w.max()), "mean_steps": round(sums[q.name][0] / max(sums[q.name][1], 1), 4),
                     "worst_channel": int(w.argmax()), "sqnr_db": sq.get(p.name),
                     "flagged": bool(w.max() > FLAG_STEPS)})
    return rows
