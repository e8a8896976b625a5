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

   The reference's pieces may also be read in float (EdgeNeXt's SDTA blocks add chunk pieces 1-2 to the
   running depthwise output; the file slices them from the same int8 tensor): the whole tensor is then
   judged on the file's grid, each piece with a quantize node of its own clamped to that node's range,
   the reference's value and the runtime's alike (``RuntimeGrid.bounds``). The intermediate grid's
   rounding is the converter's (measured on tests/converters/test_tflite_per_layer_alarms.py's SDTA
   block: 3 steps at piece 0, quantized once on a coarser grid, then requantized); a piece's value the
   file's grid cannot hold while the piece's own grid can is a real loss and counts, in the file
   grid's steps (coverage bench, 16 held-out photos, measured piece by piece against the reference's
   own quantize nodes: MixNet-S's first add, piece 0's range to 9.42, the file's grid to 8.43: 17 steps
   on 193 values; its blocks.2.0 SiLU, piece 1: 4 steps on 63 values; EdgeNeXt-XXS's add_2, piece 0
   down to -0.599, the file's grid to -0.497: 22 steps on 734 values, its add_16: 5 steps on 8; and
   EdgeNeXt's getitem_5, the slice of add_12 requantized from piece 2's grid: 12 steps). Those flags
   stay: the file cannot represent values its reference keeps. The cure is in the quantizer:
   quantizer.annotate_splits puts the pieces on one grid, the whole tensor's (as annotate_cats does for
   concat inputs), so the file no longer requantizes before slicing and this pass finds nothing there;
   it remains for a split the quantizer leaves alone (a piece whose use is not a plain int8 spec).
3. A float op of the reference the file computes with an int8 kernel onto its input's grid (below).
4. A resize's input put on the resize's output grid: litert-torch quantizes (or requantizes) the value a
   RESIZE_BILINEAR / RESIZE_NEAREST_NEIGHBOR reads onto that op's output grid, before the reshapes /
   transposes that feed it, where the reference resizes the float (or dequantized) value and quantizes
   after; TFLite's int8 resize computes on its input's grid and writes the same grid (reference kernel
   ``reference_ops::ResizeBilinear`` int8: 10-bit fixed-point weights, one rounding half away from zero;
   given the runtime's own input it is within 1 step of torch's float bilinear on every model here).
   Clamping to the grid's range before the interpolation instead of after changes the values next to
   an outlier: MobileViT-XXS's last block (a LayerNorm, reshaped, resized 8x8 -> 7x7; its values reach
   4.32 where the grid ends at 3.60, 0.3 % of them): 8 steps; SegFormer-B0's decode head (the 7x7 MLP
   output, range to 1.22, requantized onto the concat's grid, ending at 0.99, then resized 8x): 24
   steps; the resize from the runtime's own input: 1 step. The reference's quantize node after the
   resize has this very grid (its range is the reference's own), so the resize input is judged on it
   clamped (the QUANTIZE row: the float op or the requantize that writes it) and the reference resizes
   the runtime's values (the RESIZE_BILINEAR row: the kernel itself).
   The same where the op computing the resize's input writes it straight onto that grid (a conv's own
   requantization, no QUANTIZE between: MobileViTv2-050's last fold, its 1x1 conv's reference grid to
   7.3, the resize's to 5.5): the conv is judged on the file's grid, clamped, and the resize from the
   runtime's values (the resize row read 21 steps from the reference's own, free-running conv).

All are the converter's quantization decisions, not kernel faults: each op computes correctly on
the grids the file gives it (where a grid cannot hold a value the reference keeps, items 1-2, the loss
counts at the op writing it). ``runtime_grids`` finds those tensors, so the per-layer view judges the
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
# TFLite resizes: int8 kernels computing on their input's grid (the output has the input's scale and zero point)
_RESIZE_OPS = {"RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"}
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
    # per piece of a split root: (dim, start, stop, lo, hi), the range the reference's own quantize node
    # of that piece clamps to; a value beyond the file's grid counts only up to that range (elements of
    # no listed piece, read in float by the reference, count in full)
    bounds: list = field(default_factory=list)


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
                    self.add(self.grid(t, op["op_name"], inject=[root], node=root, layer=root,
                                       bounds=self._piece_bounds(root, reached)))

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

    @staticmethod
    def _piece_bounds(root, reached: set) -> list:
        """(dim, start, stop, lo, hi) of each reached piece selected straight from ``root``."""
        from .per_layer import _piece_start

        out = []
        for q in reached:
            piece, val = _piece_start(q), q.meta.get("val")
            src = q.args[0].args[0] if q.args[0].args and hasattr(q.args[0].args[0], "op") else None
            if piece is None or val is None or src is None or (src is not root and _through_moves(src) is not root):
                continue
            if _is(src, "aten.slice") and src.args[0] is not root:
                continue
            dim, start = piece
            scale, zp = float(q.args[1]), int(q.args[2])
            out.append((dim, start, start + int(val.shape[dim]), (-128 - zp) * scale, (127 - zp) * scale))
        return sorted(out)

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
        # (or reads a piece of it in int8 where the reference adds it in float, as EdgeNeXt's SDTA blocks
        # add pieces 1-2 of a chunk to the running depthwise output: a slice matched to no quantize node;
        # only where the file reads no float copy of the value: EdgeNeXt-XXS's add_12 quantized from a
        # float ADD whose float result its residual reads, unclipped, as the reference does)
        consumers = self.consumers.get(t, [])
        src = self.producer.get(t)
        float_copy = src is not None and src["op_name"] == "QUANTIZE" and len(self.consumers.get(int(src["inputs"][0]), [])) > 1
        as_float = any(c["op_name"] == "DEQUANTIZE" for c in consumers) or (not float_copy and any(
            c["op_name"] in _TFL_MOVE and not any(int(v) in self.matched for v in c["outputs"]) for c in consumers))
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

    # 4. a resize's input put on the resize's output grid before the data movement that feeds it
    def resize_inputs(self) -> None:
        for op in self.ops:
            if op["op_name"] not in _RESIZE_OPS:
                continue
            t_in, t_out = int(op["inputs"][0]), int(op["outputs"][0])
            q = self.matched.get(t_out)
            if q is None or t_in in self.matched or t_in in self.done or not self.int8(t_in):
                continue
            g = self._resize_input(t_in, q)
            if g is not None:
                self.add(g)

    def _resize_input(self, t_in: int, q):
        """The grid of a resize's input the file quantized (or requantized) onto the resize's output
        grid where the reference resizes a float value and quantizes after: judged on that grid, with
        the reference's own clamp (its quantize node after the resize has this grid), or None."""
        scale, zp = self.details[t_in]["quantization"]
        up = q.args[0]
        if not (_is(up, "aten.upsample_") and _same_grid(q, scale, zp)) or not up.args or not hasattr(up.args[0], "op"):
            return None
        src = up.args[0]
        if set(src.users) != {up} or _is(src, _DQ) and _is(src.args[0], _Q) and _same_grid(src.args[0], scale, zp):
            return None  # read elsewhere too, or already on this grid in the reference (a plain shared grid)
        # the file's chain into the resize: moves / transposes from a QUANTIZE (the grid's origin)
        t, origin = t_in, None
        for _ in range(16):
            src_op = self.producer.get(t)
            if src_op is None:
                return None
            if src_op["op_name"] == "QUANTIZE":
                origin = src_op
                break
            if t == t_in and src_op["op_name"] not in (*_TFL_MOVE, "TRANSPOSE"):
                return self._resize_input_computed(t_in, src_op, src)
            if src_op["op_name"] not in (*_TFL_MOVE, "TRANSPOSE") or t in self.matched:
                return None
            t = int(src_op["inputs"][0])
        if origin is None:
            return None
        root = src  # the row is named by the op computing the value (through reshapes / transposes)
        while root.op == "call_function" and any(k in str(root.target) for k in (*_REF_MOVE, "transpose", "permute")) \
                and root.args and hasattr(root.args[0], "op"):
            root = root.args[0]
        if _is(root, _DQ) and _is(root.args[0], _Q):
            layer = producer_of(root.args[0])  # a requantized copy of that op's own quantized output
        else:
            layer = root if root.op == "call_function" else src
        return self.grid(t_in, "QUANTIZE", inject=[src], node=src, layer=layer, clamp=True)

    def _resize_input_computed(self, t_in: int, src_op: dict, src):
        """The resize's input written straight onto the resize's output grid by the op computing it (a
        conv's requantization, where the reference quantizes the conv on its own grid and resizes
        after: MobileViTv2's last fold, a 1x1 conv resized 7x7 -> 8x8, align_corners: the reference's conv
        grid reaches 7.3, the resize's, and so the file's conv output, 5.5; unjudged, the reference resized
        its own free-running conv and the resize row read 21 steps off while the kernel, from the
        runtime's input, is within 1 step). The op is judged on that grid with the reference's clamp
        (its quantize node after the resize has this grid), the resize from the runtime's values; or None."""
        if not (_is(src, _DQ) and _is(src.args[0], _Q)):
            return None
        q = src.args[0]
        node = q.args[0]
        if q.name in self.used_q or set(q.users) != {src} or set(getattr(node, "users", {})) != {q} \
                or node.op != "call_function" or _is_move(node) or _is(node, _DQ) or not _layout_ok(self.details[t_in], node):
            return None  # the value is read elsewhere too, on a grid of its own
        return self.grid(t_in, src_op["op_name"], inject=[src], node=node, layer=node, clamp=True)

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
    grids.resize_inputs()
    return grids.layout_checked()
