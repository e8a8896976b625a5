"""The tflite target's per-layer view: conversion fidelity of an INT8 .tflite against its quantized reference, and per-layer
compression cost of the quantized reference against FP32.

``tflite_per_layer(artifact, reference, samples, float_model=None)``:
1. the .tflite runs with every intermediate tensor kept (``experimental_preserve_all_tensors``,
   the builtin kernels without default delegates: no delegate may fuse tensors away, 1 thread). Not
   TFLite's reference kernels (``BUILTIN_REF``): their int8 SUM is wrong where the deployed kernels are
   right (``(softmax(v) * v).sum(-1, keepdim=True)``, MobileViTv2's linear attention: the reference
   kernel wrote -1 on every value, 104 steps off the reference, mean 44, while the builtin kernel and
   XNNPACK computed it exactly and the file's output was 0 steps off end to end: a false alarm on the
   SUM, and the view judged a runtime nobody deploys);
2. each int8 tensor an op writes is matched to an activation quantize node of the reference
   (the ``convert_pt2e`` program) with equal scale, zero point and layout, in execution order, where
   the op reads a matched tensor only to a node computed from it, slices / cats only to their kind, and
   a slice only to the selection of the same piece (its begin is the chunk / split piece's offset)
   (``_match``: grids alone are ambiguous where many tensors share one);
2b. tensors the converter put on a grid of its own (concat inputs on the concat's grid, a float result
   quantized once before a split, a float op the file runs as an int8 kernel, a resize's input
   quantized onto the resize's output grid before it: requant.py) are followed:
   the reference takes the runtime's values there, and the producing op is judged on the file's grid
   (rounding there is the kernel's; a value beyond the grid's range, clipping the reference has not,
   counts in full, up to the range of a split piece's own quantize node where it has one);
3. the reference runs once per sample with every matched activation *replaced by the runtime's own
   int8 tensor*, so each reference op computes from exactly the input the runtime's op had; the
   reference's int8 result of each op is compared with the runtime's, in int8 steps;
4. a layer's error is the max over channels of the max |difference| (a one-channel fault moves
   ~1 % of the values: a mean would hide it).
With ``float_model``, each layer also gets the SQNR of the quantized reference vs FP32 at the conv /
linear / add that produces it (where precision is lost: candidates for ``--keep-float``).
Rows are JSON-safe: {"layer", "op", "module", "max_steps", "mean_steps", "worst_channel", "sqnr_db", "flagged"}.
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
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


# Ops the converter adds around others to move between torch's NCHW and TFLite's NHWC: their output
# carries its input's scale and zero point, with no quantize node of its own in the reference. Taken
# as candidates they stole a reference tensor of equal scale (EfficientNet-Lite0 INT8: each PAD sits
# between two TRANSPOSEs, 50 of 78 activations share (6/255, -128) after ReLU6, and 42 of 77 layers
# were compared with the wrong tensor; without them every layer is within 1 step).
_LAYOUT_OPS = {"TRANSPOSE"}


# A slice of a tensor only ever carries a selected part of the reference's value: it may stand for a
# quantize node of a selection (getitem of a split/chunk, slice, select), never for one of a computed
# result of equal grid and size (EdgeNeXt-XXS: the pass-through half of a torch.chunk, sliced from the
# add before it, took the grid and the shape of the depthwise conv on the other half, and the conv's
# row compared two different tensors; the conv itself, matched to its own output, is within 1 step).
_SELECT_OPS = {"SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "GATHER", "UNPACK"}
_SELECT_NODES = ("getitem", "slice", "select", "split", "narrow", "chunk", "unbind", "index")
# Likewise a cat's quantize node stands for a concatenation (or a reshaped copy of
# one), never for the op computing one of its inputs: with the cat's inputs sharing its grid
# (quantizer.py), EdgeNeXt's add before a torch.chunk wrote its result on that grid in the file
# and, equal in shape, took the cat's quantize node (135 steps, mean 20, on a correct file).
_CAT_OPS = {"CONCATENATION", "RESHAPE"}


def _compatible(op_name: str, q) -> bool:
    """Whether the runtime op's output may stand for quantize node ``q`` (slices for selections and
    selections only from slices or reshapes, a cat's only from a concatenation: see above)."""
    target = str(getattr(q.args[0], "target", ""))
    selection = any(k in target for k in _SELECT_NODES)
    if (op_name in _SELECT_OPS) != selection and op_name not in ("RESHAPE", "QUANTIZE"):
        return False  # (EdgeNeXt: a depthwise conv writing on the grid a pass-through chunk shares took its node)
    return op_name in _CAT_OPS or "aten.cat" not in target


def _piece_start(q):
    """(dim, start) of the part of its source a reference selection quantized by ``q`` takes (a getitem
    of a chunk / split / split_with_sizes, a slice), or None where it is not one of those."""
    n = q.args[0]
    if getattr(n, "op", None) != "call_function":
        return None
    target = str(n.target)
    if "getitem" in target and hasattr(n.args[0], "op") and isinstance(n.args[1], int):
        src, k = n.args[0], n.args[1]
        st = str(src.target)
        val = getattr(src.args[0], "meta", {}).get("val") if src.args and hasattr(src.args[0], "op") else None
        if val is None or not hasattr(val, "shape") or not any(x in st for x in ("chunk", "split")):
            return None
        dim = src.args[2] if len(src.args) > 2 else src.kwargs.get("dim", 0)
        dim = dim % len(val.shape)
        length = int(val.shape[dim])
        if "chunk" in st:
            step = -(-length // int(src.args[1]))
            return dim, k * step
        if "split_with_sizes" in st:
            return dim, int(sum(src.args[1][:k]))
        if isinstance(src.args[1], int):  # aten.split.Tensor(x, split_size, dim)
            return dim, k * int(src.args[1])
        return None
    if "aten.slice" in target and len(n.args) > 2:
        val = getattr(n.args[0], "meta", {}).get("val")
        if val is None or not hasattr(val, "shape"):
            return None
        dim, start = n.args[1] % len(val.shape), n.args[2] or 0
        return (dim, int(start) % int(val.shape[dim]) if start < 0 else int(start)) if isinstance(start, int) else None
    return None


def _slice_begin(interp, op, shape: tuple):
    """The begin index (per runtime axis) of a SLICE op, or None (a STRIDED_SLICE's begin may be masked)."""
    if op["op_name"] != "SLICE" or len(op["inputs"]) < 2:
        return None
    try:
        begin = np.asarray(interp.get_tensor(int(op["inputs"][1]))).reshape(-1)
    except ValueError:
        return None
    return [int(b) for b in begin] if len(begin) == len(shape) else None


def _same_piece(begin, shape: tuple, q) -> bool:
    """Whether a runtime slice starting at ``begin`` (runtime layout ``shape``) takes the part of the
    reference's tensor that selection ``q`` takes. Equal grid and size are not enough: EdgeNeXt-XXS's
    last SDTA block chunks an add into 4 pieces of 42 channels, pieces 1-3 sliced from the add's own
    grid, and the slice of piece 1 took piece 3's quantize node (189 steps, mean 37, on a correct file)."""
    if begin is None:
        return True
    piece = _piece_start(q)
    val = q.meta.get("val")
    if piece is None or val is None:
        return True
    dim, start = piece
    ref_shape = tuple(val.shape)
    if len(begin) == 4 and len(ref_shape) == 4 and tuple(shape) == (ref_shape[0], ref_shape[2], ref_shape[3], ref_shape[1]) \
            and tuple(shape) != ref_shape:
        begin = [begin[0], begin[3], begin[1], begin[2]]  # NHWC -> NCHW
    elif len(begin) != len(ref_shape):
        return True
    return all(b == (start if k == dim else 0) for k, b in enumerate(begin))


def _input_qnodes(q, matched: set, depth: int = 16) -> set:
    """The matched quantize nodes whose (dequantized) values the reference computes ``q``'s value from:
    walked back from its producer through float ops, stopping at each dequantize of a matched quantize
    node; one quantize node the file has no tensor for (a linear's output the converter fused with
    the ReLU after it) is walked through, no more (else any node computes from everything before it)."""
    out, stack, seen = set(), [(q.args[0], 0, 0)], set()
    while stack:
        n, k, through = stack.pop()
        if not hasattr(n, "op") or (n.name, through) in seen or k > depth:
            continue
        seen.add((n.name, through))
        target = str(n.target)
        if "dequantize_per_tensor" in target:
            src = n.args[0]
            if hasattr(src, "op") and src.name in matched:
                out.add(src.name)
            elif hasattr(src, "op") and "quantize_per_tensor" in str(src.target) and through == 0:
                stack.append((src.args[0], k + 1, 1))
            continue
        if n.op != "call_function" or "quantize_per" in target:
            continue
        for a in n.args:
            for a in (a if isinstance(a, (list, tuple)) else [a]):
                if hasattr(a, "op"):
                    stack.append((a, k + 1, through))
    return out


def _match(interp, qnodes) -> list[tuple[int, str, object]]:
    """(tflite tensor index, tflite op name, reference quantize node) in execution order.

    Candidates have the runtime tensor's scale, zero point and layout; where the runtime op reads a
    matched tensor, the candidate must also compute from it (one of the op's matched inputs is among
    its input quantize nodes): the first such in graph order, or none. Scale and zero point alone are
    ambiguous where many tensors share a grid: MobileBERT's tiny FFN activations sit at the observers'
    minimum scale 2^-12, and the quantize node of a linear the file fused with its ReLU (no tensor of
    its own in the file) was taken by another FFN's linear three layers later (zero point -78 both),
    76 steps off, mean 14."""
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    producers = {int(t): op for op in ops for t in op["outputs"]}
    used, pairs, matched = set(), [], {}
    for op in ops:
        if op["op_name"] in _LAYOUT_OPS:
            continue
        reads = {q.name for q in (_carried(int(x), producers, matched) for x in op["inputs"] if int(x) >= 0) if q is not None}
        for t in op["outputs"]:
            grid = _int8_grid(details.get(int(t)))
            if grid is None:
                continue
            cands = _candidates(op["op_name"], *grid, qnodes, used, first_only=False)
            begin = _slice_begin(interp, op, grid[2])
            cands = [q for q in cands if _same_piece(begin, grid[2], q)]
            pick = _pick(cands if reads else cands[:1], reads, used)
            if pick is None:
                continue
            used.add(pick.name)
            matched[int(t)] = pick
            pairs.append((int(t), op["op_name"], pick))
    return pairs


def _carried(t: int, producers: dict, matched: dict):
    """The quantize node a runtime tensor carries (through layout / requantize / reshape ops)."""
    seen = 0
    while t not in matched and seen < 8:
        op = producers.get(t)
        if op is None or op["op_name"] not in (*_LAYOUT_OPS, "QUANTIZE", "RESHAPE", "PAD", *_SELECT_OPS) or not len(op["inputs"]):
            return None
        t, seen = int(op["inputs"][0]), seen + 1
    return matched.get(t)


def _int8_grid(d):
    """(scale, zero point, shape) of an int8 tensor with a grid, else None."""
    if d is None or np.dtype(d["dtype"]) != np.int8:
        return None
    scale, zp = d["quantization"]
    if not scale:
        return None
    return scale, zp, tuple(int(x) for x in d["shape"])


def _candidates(op_name: str, scale, zp, shape: tuple, qnodes, used: set, first_only: bool) -> list:
    """The unused quantize nodes of the runtime tensor's scale, zero point and layout that the op may
    stand for, in graph order (only the first with ``first_only``)."""
    out = []
    for q in qnodes:
        if q.name in used:
            continue
        val = q.meta.get("val")
        if val is None or not _same_layout(shape, tuple(val.shape)):
            continue
        if not _compatible(op_name, q):
            continue
        if abs(float(q.args[1]) - scale) <= 1e-6 * scale and int(q.args[2]) == int(zp):
            out.append(q)
            if first_only:
                break
    return out


def _pick(candidates: list, reads: set, used: set):
    """The first candidate computed from one of the matched tensors the op reads (any first
    candidate if it reads none), or None."""
    if not reads:
        return candidates[0] if candidates else None
    return next((q for q in candidates if _input_qnodes(q, used) & reads), None)


def _dequantized(a: np.ndarray, g) -> np.ndarray:
    return ((a.astype(np.float32) - np.float32(g.zero_point)) * np.float32(g.scale)).astype(np.float32)


def _on_grid(x: np.ndarray, g) -> np.ndarray:
    """The reference's float value on the runtime's grid, not clamped to int8: rounding onto the
    file's grid is what its kernel does, but a value the grid cannot hold (clipped by a range the
    reference does not have) is a real loss and must count, in steps beyond the range."""
    q = np.round(x / np.float32(g.scale)) + g.zero_point
    return (np.clip(q, -128, 127) if g.clamp else q).astype(np.int64)


def _clip_pieces(x: np.ndarray, bounds: list) -> np.ndarray:
    """A split root's value with each listed piece clamped to the range of the piece's own quantize node
    (requant.RuntimeGrid.bounds), the reference's and the runtime's alike: what each piece keeps."""
    if not bounds:
        return x
    x = x.copy()
    for dim, start, stop, lo, hi in bounds:
        idx = [slice(None)] * x.ndim
        idx[dim] = slice(start, stop)
        x[tuple(idx)] = np.clip(x[tuple(idx)], lo, hi)
    return x


class _Steps:
    """Per row key, over the samples: the max |difference| per channel, and the sum and count of
    the differences."""

    def __init__(self):
        self.worst: dict[str, np.ndarray] = {}
        self.sums: dict[str, list[float]] = {}

    def record(self, name: str, ref: np.ndarray, got: np.ndarray) -> None:
        diff = np.abs(ref.astype(np.int64) - got.astype(np.int64))
        # per channel (dim 1); a 1-D tensor (a LayerNorm's per-token statistic, a bias-like vector): per element
        per_ch = diff.reshape(diff.shape[0], diff.shape[1], -1).max(axis=(0, 2)) if diff.ndim >= 2 else diff.reshape(-1)
        self.worst[name] = np.maximum(self.worst.get(name, per_ch), per_ch)
        s = self.sums.setdefault(name, [0.0, 0.0])
        s[0] += float(diff.sum())
        s[1] += diff.size


class _Comparison:
    """A .tflite and its quantized reference, matched: each sample runs through both (steps 1-3 of
    the module docstring), the differences accumulate in ``steps``."""

    def __init__(self, gm, interp):
        from .requant import runtime_grids

        self.gm, self.interp = gm, interp
        self.pairs = _match(interp, q_nodes(gm))
        # tensors on grids the converter chose (concat inputs, split pieces): judged on the file's grid
        self.grids = runtime_grids(interp, self.pairs)
        self.judged = [g for g in self.grids if g.node is not None]
        self.inputs = interp.get_input_details()
        self.steps = _Steps()

    def _invoke(self, sample) -> None:
        for d, a in zip(self.inputs, sample):
            a = np.asarray(a)
            if np.dtype(d["dtype"]) == np.int8 and a.dtype.kind == "f":
                scale, zp = d["quantization"]
                a = np.clip(np.round(a / np.float32(scale)) + zp, -128, 127).astype(np.int8)
            self.interp.set_tensor(d["index"], a.astype(d["dtype"]))
        self.interp.invoke()

    def _runtime_values(self) -> tuple[dict, dict, dict]:
        """After invoke: (int8 tensor per matched quantize node, the values the reference takes from
        the runtime per node name, int8 tensor per judged grid tensor)."""
        import torch

        got = {q.name: _to_nchw(self.interp.get_tensor(t), tuple(q.meta["val"].shape)) for t, _, q in self.pairs}
        inject = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in got.items()}
        got_grid = {}
        for g in self.grids:
            a = self.interp.get_tensor(g.tensor)
            for n in g.inject:
                inject[n.name] = torch.from_numpy(np.ascontiguousarray(_dequantized(_to_nchw(a, tuple(n.meta["val"].shape)), g)))
            if g.node is not None:
                got_grid[g.tensor] = _to_nchw(a, tuple(g.node.meta["val"].shape))
        return got, inject, got_grid

    def compare(self, sample) -> None:
        import torch

        self._invoke(sample)
        got, inject, got_grid = self._runtime_values()
        args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)
        watch = {g.node.name for g in self.judged}
        values = run_injected(self.gm, args, inject, watch)
        computed = {k: v for k, v in values.items() if k in inject}
        watched = {k: v for k, v in values.items() if k in watch}
        for name in got:
            if name in computed:
                self.steps.record(name, computed[name].numpy(), got[name])
        for g in self.judged:
            value = computed[g.node.name] if g.node.name in computed else watched[g.node.name]
            got_g = got_grid[g.tensor]
            if g.bounds:  # the file's value past a piece's range is cut when requantized onto that piece's grid
                got_g = _on_grid(_clip_pieces(_dequantized(got_g, g), g.bounds), g)
            self.steps.record(f"grid:{g.tensor}", _on_grid(_clip_pieces(value.numpy(), g.bounds), g), got_g)

    def _entries(self) -> list[tuple]:
        """(tensor, op name, row key, producing node) of every judged tensor, in execution order."""
        entries = [(t, op, q.name, producer(q)) for t, op, q in self.pairs]
        entries += [(g.tensor, g.op, f"grid:{g.tensor}", g.layer) for g in self.judged]
        position = {int(t): k for k, op in enumerate(self.interp._get_ops_details()) for t in op["outputs"]}
        entries.sort(key=lambda e: position.get(e[0], -1))  # execution order
        return entries

    def rows(self, float_model, samples: list) -> list[dict]:
        entries = self._entries()
        producers = {key: p for _, _, key, p in entries}
        sq = float_sqnr(self.gm, float_model, samples, [p.name for p in producers.values()]) if float_model is not None else {}
        rows = []
        for t, op, key, p in entries:
            w = self.steps.worst.get(key)
            if w is None or p.op == "placeholder":
                continue  # the graph input: nothing computes it
            sums = self.steps.sums[key]
            rows.append({"layer": p.name, "op": op, "module": module_of(p),
                         "max_steps": float(w.max()), "mean_steps": round(sums[0] / max(sums[1], 1), 4),
                         "worst_channel": int(w.argmax()), "sqnr_db": sq.get(p.name),
                         "flagged": bool(w.max() > FLAG_STEPS)})
        return rows


def tflite_per_layer(artifact_path, reference_program_path, samples, float_model=None) -> list[dict]:
    """Per-layer error of an INT8 .tflite vs its quantized reference (see the module docstring)."""
    from edgekit.quant.reference import load_quantized_reference

    samples = list(samples)
    if not samples:
        raise UserError("E-DATA-EMPTY", "per-layer check got no samples", "pass at least one input tuple")
    gm = load_quantized_reference(Path(reference_program_path)).module()
    comparison = _Comparison(gm, _interpreter(Path(artifact_path)))
    for sample in samples:
        comparison.compare(sample)
    return comparison.rows(float_model, samples)
