"""Where the TFLite converter quantizes a tensor onto a grid of its own choosing, and how the per-layer
view follows it (per_layer.py: "the reference follows the runtime").

litert-torch's converter (0.10) gives tensors int8 grids the PT2E reference does not have:
1. CONCATENATION inputs: every input of a concat is computed on the concat's grid. Where the PT2E
   reference concatenates in float (litert's quantizer puts no quantize node on a cat whose users
   compute in float: BatchNorm, add, mean), the file takes the first input's grid and the producer of
   each other input (a conv, a ReLU) writes straight onto it, rounding on a different grid and
   clipping at a different range than its own quantize node in the reference. Measured (coverage
   bench, random weights): GhostNet's ghost modules (cat of a 1x1 conv and a depthwise conv on its
   output): the depthwise output's range 9.50 clipped at 8.57, the residual add after it 11 steps off
   the reference; MixNet-S's mixed convs (cat of 2-4 convs, then a float BatchNorm): 38 steps.
2. A float result split into quantized pieces (``torch.split`` then a quantize per piece): the file
   quantizes the whole tensor once onto one piece's grid, then requantizes (QUANTIZE int8 -> int8) and
   slices: MixNet-S's first split, 17 steps where the intermediate grid clips the other piece.

Both are the converter's quantization decisions, not kernel faults: each op computes correctly on
the grids the file gives it. ``runtime_grids`` finds those tensors, so the per-layer view judges the
producing op on the file's own grid and feeds the reference downstream the file's values (each later
op is then judged from exactly the runtime's input, as for every matched tensor). The cost of the
converter's choice still shows end to end (artifact vs reference) and as SQNR vs FP32.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.quant.per_layer import producer as producer_of

_Q = "quantized_decomposed.quantize_per_tensor"
_DQ = "quantized_decomposed.dequantize_per_tensor"
# TFLite ops that move int8 values without computing (their output keeps a grid chosen elsewhere)
_TFL_MOVE = {"SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}
# reference nodes that only select or reshape a float value
_REF_MOVE = ("getitem", "split", "chunk", "slice", "view", "reshape", "squeeze", "unsqueeze", "flatten")


@dataclass
class RuntimeGrid:
    """A tflite int8 tensor on a grid the reference does not have.

    ``inject``: reference nodes that take the runtime's dequantized tensor instead of their own value
    (the reference computes downstream from exactly what the runtime computed);
    ``node``: the reference float node whose value the runtime quantized onto its grid (its producer
    is judged on that grid), or None where the tensor is only a requantized copy of a matched one."""

    tensor: int
    op: str
    scale: float
    zero_point: int
    inject: list = field(default_factory=list)
    node: object = None
    layer: object = None  # the node that names the row (a conv fused with its ReLU: the conv)
    # the reference itself clamps the value to this grid's range (the concat's own quantize node has
    # this grid); otherwise a value beyond the range counts (clipped by a range the reference lacks)
    clamp: bool = False


def _is(node, prefix: str) -> bool:
    return node is not None and getattr(node, "op", None) == "call_function" and str(node.target).startswith(prefix)


def _is_move(node) -> bool:
    return node.op == "call_function" and any(k in str(node.target) for k in _REF_MOVE)


def _layout_ok(details: dict, node) -> bool:
    """The runtime tensor holds the node's values in a layout per_layer can undo (same shape or NHWC)."""
    from .per_layer import _same_layout

    val = node.meta.get("val")
    return val is not None and hasattr(val, "shape") and _same_layout(tuple(int(x) for x in details["shape"]), tuple(val.shape))


def _same_grid(q, scale: float, zp: int) -> bool:
    return abs(float(q.args[1]) - scale) <= 1e-6 * scale and int(q.args[2]) == int(zp)


def _through_moves(n):
    """The node a chain of select / reshape nodes starts from."""
    while _is_move(n) and n.args and hasattr(n.args[0], "op"):
        n = n.args[0]
    return n


def _ref_source(n):
    """The reference quantize node whose dequantized value ``n`` selects / reshapes, or None."""
    n = _through_moves(n)
    return n.args[0] if _is(n, _DQ) and _is(n.args[0], _Q) else None


class _FileGrids:
    """The file's tensors and ops against the matched pairs, and the grids the passes found so far
    (``out`` in the order found; ``done``: their tensors, each judged once)."""

    def __init__(self, interp, pairs):
        self.details = {d["index"]: d for d in interp.get_tensor_details()}
        self.ops = interp._get_ops_details()
        self.producer = {int(t): op for op in self.ops for t in op["outputs"]}
        self.consumers: dict[int, list] = {}
        for op in self.ops:
            for t in op["inputs"]:
                self.consumers.setdefault(int(t), []).append(op)
        self.matched = {t: q for t, _, q in pairs}
        self.used_q = {q.name for q in self.matched.values()}
        self.nodes = pairs[0][2].graph.nodes if pairs else []
        self.out: list[RuntimeGrid] = []
        self.done: set[int] = set()

    def int8(self, t: int) -> bool:
        d = self.details.get(t)
        return d is not None and np.dtype(d["dtype"]) == np.int8 and bool(d["quantization"][0])

    def grid(self, t: int, op: str, **kw) -> RuntimeGrid:
        scale, zp = self.details[t]["quantization"]
        return RuntimeGrid(t, op, float(scale), int(zp), **kw)

    def add(self, g: RuntimeGrid) -> None:
        self.out.append(g)
        self.done.add(g.tensor)

    def tfl_source(self, t: int):
        """The reference quantize node a tflite tensor copies (through requantize / slice / reshape)."""
        while t not in self.matched:
            src = self.producer.get(t)
            if src is None or not (src["op_name"] in _TFL_MOVE or (src["op_name"] == "QUANTIZE" and self.int8(int(src["inputs"][0])))):
                return None
            t = int(src["inputs"][0])
        return self.matched[t]

    # 1. concat inputs (and outputs) on the concat's grid
    def concat_inputs(self) -> None:
        cat_nodes = [n for n in self.nodes if _is(n, "aten.cat")]
        for op in self.ops:
            if op["op_name"] != "CONCATENATION":
                continue
            ins, t_out = [int(t) for t in op["inputs"]], int(op["outputs"][0])
            if not all(self.int8(t) for t in ins) or not self.int8(t_out):
                continue
            cat = self._reference_cat(cat_nodes, ins, t_out)
            if cat is None:
                continue
            own = self.matched.get(t_out)  # the concat's own quantize node, on the file's grid
            clamp = own is not None and own.args[0] is cat
            for t, arg in zip(ins, cat.args[0]):
                if t in self.done or not hasattr(arg, "op"):
                    continue
                g = self._concat_input(t, arg, clamp)
                if g is not None:
                    self.add(g)
            self._concat_output(t_out, cat)

    def _reference_cat(self, cat_nodes: list, ins: list[int], t_out: int):
        """The one reference cat whose inputs the concat's inputs copy, or None."""
        sources = [self.tfl_source(t) for t in ins]
        cats = [c for c in cat_nodes if len(c.args[0]) == len(ins) and any(sources)
                and all(q is None or _ref_source(a) is q for q, a in zip(sources, c.args[0]))]
        if t_out in self.matched:
            cats = [c for c in cats if self.matched[t_out].args[0] is c]
        return cats[0] if len(cats) == 1 else None

    def _concat_input(self, t: int, arg, clamp: bool):
        """The grid of concat input ``t`` (reference cat argument ``arg``), or None."""
        scale, zp = self.details[t]["quantization"]
        src = self.producer.get(t, {})
        computed_here = src.get("op_name") not in (None, "QUANTIZE", *_TFL_MOVE) and t not in self.matched
        if _is(arg, _DQ) and _is(arg.args[0], _Q):  # the input has its own quantize node in the reference
            q = arg.args[0]
            if self.matched.get(t) is q:
                return None
            node = q.args[0] if computed_here and q.name not in self.used_q and _layout_ok(self.details[t], q.args[0]) else None
            return self.grid(t, src.get("op_name", "?"), inject=[arg], node=node, clamp=clamp,
                             layer=producer_of(q) if node is not None else None)
        if not _is_move(arg) and computed_here and _layout_ok(self.details[t], arg):  # a float result
            return self.grid(t, src.get("op_name", "?"), inject=[arg], node=arg, layer=arg, clamp=clamp)
        if _is_move(arg) and _ref_source(arg) is not None and not _same_grid(_ref_source(arg), scale, zp):
            return self.grid(t, src.get("op_name", "?"), inject=[arg])  # a slice requantized onto the concat's grid
        return None

    def _concat_output(self, t_out: int, cat) -> None:
        qs = [u for u in cat.users if _is(u, _Q)]
        if t_out in self.matched or t_out in self.done or any(q.name in self.used_q for q in qs):
            return
        # the concat's result on the file's grid: the reference's float cat (and its own quantize
        # node, if any, on another grid) replaced by it wherever it is used
        dqs = [u for q in qs for u in q.users if _is(u, _DQ)]
        self.add(self.grid(t_out, "CONCATENATION", inject=[cat, *dqs], node=cat, layer=cat))

    # 2. a float result quantized once, then requantized / sliced into the reference's pieces
    def split_pieces(self) -> None:
        for op in self.ops:
            for t in (int(x) for x in op["outputs"]):
                if not self._quantized_once(op, t):
                    continue
                reached = self._reached(t)
                root = self._float_root(t, reached) if reached else None
                if root is not None and self._uses_covered(t, root, reached):
                    self.add(self.grid(t, op["op_name"], inject=[root], node=root, layer=root))

    def _quantized_once(self, op: dict, t: int) -> bool:
        if t in self.matched or t in self.done or not self.int8(t) or op["op_name"] in _TFL_MOVE or op["op_name"] == "TRANSPOSE":
            return False
        if op["op_name"] == "QUANTIZE" and self.int8(int(op["inputs"][0])):
            return False  # a requantized copy: judged where it lands
        return True

    def _reached(self, t: int) -> set:
        """The matched quantize nodes the file requantizes / slices ``t`` into."""
        reached, stack, seen = set(), [t], set()
        while stack:
            u = stack.pop()
            for c in self.consumers.get(u, []):
                if c["op_name"] in _TFL_MOVE or (c["op_name"] == "QUANTIZE" and self.int8(int(c["outputs"][0]))):
                    for v in (int(x) for x in c["outputs"]):
                        if v in self.matched:
                            reached.add(self.matched[v])
                        elif v not in seen:
                            seen.add(v)
                            stack.append(v)
        return reached

    def _float_root(self, t: int, reached: set):
        """The one float node the pieces are selected from, or None."""
        roots = {_through_moves(q.args[0]) for q in reached}
        if len(roots) != 1:
            return None
        root = next(iter(roots))
        if _is(root, _DQ) or _is(root, _Q) or root.op != "call_function" or not _layout_ok(self.details[t], root):
            return None
        return root

    def _uses_covered(self, t: int, root, reached: set) -> bool:
        # every use of the float result must end in one of the pieces the file sliced from this tensor
        leaves, stack = set(), [root]
        while stack:
            n = stack.pop()
            for u in n.users:
                if _is_move(u):
                    stack.append(u)
                else:
                    leaves.add(u)
        # (a float use reads the file's tensor dequantized, as EdgeNeXt's residual reads the add
        # whose chunks its SDTA block quantizes)
        as_float = any(c["op_name"] == "DEQUANTIZE" for c in self.consumers.get(t, []))
        return bool(leaves) and all(n in reached or (as_float and not _is(n, _Q)) for n in leaves)

    # 3. a float op of the reference the file computes with an int8 kernel onto its input's grid
    #    (RESIZE_BILINEAR: MobileViT-XXS's last block upsamples a conv output in float in the reference,
    #    on the conv's int8 grid in the file; the LayerNorms after it were ~1 step off on every value)
    def int8_kernels(self) -> None:
        for op in self.ops:
            if op["op_name"] in (*_TFL_MOVE, "TRANSPOSE", "QUANTIZE", "DEQUANTIZE", "CONCATENATION"):
                continue
            for t in (int(x) for x in op["outputs"]):
                if t in self.matched or t in self.done or not self.int8(t):
                    continue
                node = self._float_op(op, t)
                if node is not None:
                    self.add(self.grid(t, op["op_name"], inject=[node], node=node, layer=node))

    def _float_op(self, op: dict, t: int):
        """The one float reference node computing ``t`` from exactly the op's matched inputs, or None."""
        ins = [self.matched.get(int(x)) for x in op["inputs"] if int(x) >= 0 and self.int8(int(x))]
        if not ins or any(q is None for q in ins):
            return None
        users = {u for q in ins for dq in q.users if _is(dq, _DQ) for u in dq.users}
        cands = [u for u in users if u.op == "call_function" and not _is(u, _Q) and not _is_move(u)
                 and not any(_is(v, _Q) for v in u.users) and _layout_ok(self.details[t], u)]
        if len(cands) != 1:
            return None
        node = cands[0]
        if any(not (_is(a, _DQ) and a.args[0] in ins) for a in node.args if hasattr(a, "op")):
            return None  # it also reads something the file's op does not
        return node

    def layout_checked(self) -> list[RuntimeGrid]:
        # only where the runtime tensor's layout maps onto each node's (equal element counts are not enough)
        return [g for g in self.out
                if all(_layout_ok(self.details[g.tensor], n) for n in [*g.inject, *([g.node] if g.node is not None else [])])]


def runtime_grids(interp, pairs) -> list[RuntimeGrid]:
    """The file's tensors on grids of its own (see the module docstring), in execution order.
    ``pairs``: the matched (tensor, op name, reference quantize node) of per_layer._match."""
    grids = _FileGrids(interp, pairs)
    grids.concat_inputs()
    grids.split_pieces()
    grids.int8_kernels()
    return grids.layout_checked()
