"""ncnn target, step 3: the ncnn graph pnnx wrote, legalised (pnnx leftovers that have an exact ncnn
form are rewritten: bool masks and casts, where, unbind of over 4-D tensors) and checked for layers
ncnn has none of (UnsupportedOpError naming the layer and pnnx's note)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgekit.errors import UnsupportedOpError

from .param import Layer

# Layers that only move values: their output holds a bool tensor (as 0/1) when their inputs do.
_MOVES_VALUES = {"Split", "Noop", "Tile", "Reshape", "Permute", "Crop", "Slice", "ExpandDims", "Squeeze",
                 "Flatten", "Concat"}
# What a masked-out score gets in ncnn's SDPA (which adds its float mask to the scores): exp() of it is 0
# in float32 next to any real score, and it stays finite in fp16 (an app's ncnn may compute in fp16).
SDPA_MASKED = -3.0e4


@dataclass
class _IrOp:
    """One op of pnnx's own IR (.pnnx.param): params and the (shape, dtype) of each operand."""

    inputs: list[tuple[tuple[int, ...], str]]
    outputs: list[tuple[tuple[int, ...], str]]
    params: dict[str, str]


def parse_pnnx_ir(text: str) -> dict[str, _IrOp]:
    ops = {}
    for ln in text.splitlines()[2:]:
        tok = ln.split()
        if len(tok) < 4:
            continue
        nin, nout = int(tok[2]), int(tok[3])
        names = tok[4:4 + nin + nout]
        params, types = {}, {}
        for t in tok[4 + nin + nout:]:
            key, _, val = t.partition("=")
            if key.startswith("#"):
                m = re.fullmatch(r"\(([-\d,?]*)\)(\w+)", val)  # "?": a size that follows the inputs
                if m:
                    types[key[1:]] = (tuple(-1 if d == "?" else int(d) for d in m.group(1).split(",") if d), m.group(2))
            else:
                params[key] = val
        unknown = ((), "?")
        ops[tok[1]] = _IrOp([types.get(n, unknown) for n in names[:nin]],
                            [types.get(n, unknown) for n in names[nin:]], params)
    return ops


def _kind(dtype: str) -> str:
    """"float", "int" or "bool" for a pnnx IR type (f32, i64, bool) or a torch dtype name."""
    if dtype.startswith(("f", "bf")) or any(k in dtype for k in ("float", "half", "double")):
        return "float"
    return "bool" if "bool" in dtype else "int"


def _scalar(value: float) -> str:
    if not np.isfinite(np.float32(value)):
        raise ValueError("not finite in float32")
    return f"{value:.9e}".replace("e+", "e")


class Legaliser:
    """Rewrites pnnx leftovers that have an exact ncnn form; each rule returns replacement layers
    or None (then the layer stays, and is reported as unsupported)."""

    def __init__(self, layers: list[Layer], ir: dict[str, _IrOp]):
        self.layers, self.ir, self.count = layers, ir, 0
        self.producer: dict[str, Layer] = {}  # blob -> the layer writing it, as rewritten so far
        self.bools: set[str] = set()  # blobs holding a bool tensor as 0/1

    def new(self, type_: str, base: str, inputs: list[str], params: list[str], output: str | None = None) -> Layer:
        """A new layer named after the one it replaces; its output blob is ``output`` or its own name."""
        self.count += 1
        name = f"{base}_lg{self.count}"
        return Layer(type_, name, inputs, [output or name], params)

    def run(self) -> list[str]:
        """Rewrite self.layers in place; returns "type name" of each layer rewritten."""
        rules = {"MemoryData": self.int8_constant, "Tensor.to": self.cast, "pnnx.Expression": self.logic,
                 "torch.where": self.where, "torch.unbind": self.unbind, "SDPA": self.sdpa_mask}
        out, rewritten = [], []
        for layer in self.layers:
            rule, op = rules.get(layer.type), self.ir.get(layer.name)
            replacement = rule(layer, op) if rule and (op or layer.type in ("MemoryData", "SDPA")) else None
            if self.holds_bool(layer, op):
                self.bools.update(layer.outputs)
            if replacement is not None:
                rewritten.append(f"{layer.type} {layer.name}")
            for new in replacement if replacement is not None else [layer]:
                out.append(new)
                self.producer.update((b, new) for b in new.outputs)
        self.layers[:] = out
        return rewritten

    def holds_bool(self, layer, op) -> bool:
        """True if the layer's outputs hold bool tensors: pnnx typed them bool, or the layer only moves
        the values of bool inputs (ncnn layers pnnx made have names of their own, not in the IR)."""
        if op is not None and op.outputs and all(_kind(t) == "bool" for _, t in op.outputs):
            return True
        return layer.type in _MOVES_VALUES and bool(layer.inputs) and all(b in self.bools for b in layer.inputs)

    def sdpa_mask(self, layer, _op):
        """ncnn's SDPA (5=1: a 4th input, the mask) adds its mask to the scores; torch's bool mask keeps
        the True positions. A bool mask (0/1 here) becomes the additive one: (m - 1) * -SDPA_MASKED."""
        if "5=1" not in layer.params or len(layer.inputs) != 4 or layer.inputs[3] not in self.bools:
            return None
        minus = self.new("BinaryOp", layer.name, layer.inputs[3:], ["0=1", "1=1", "2=1.0"])
        additive = self.new("BinaryOp", layer.name, minus.outputs, ["0=2", "1=1", f"2={_scalar(-SDPA_MASKED)}"])
        return [minus, additive, Layer(layer.type, layer.name, [*layer.inputs[:3], *additive.outputs],
                                        layer.outputs, layer.params)]

    def int8_constant(self, layer, _op):
        """pnnx stores bool/int8 constants as int8 (MemoryData 21=3), which ncnn's float layers would
        read as float bits: add a Cast int8 -> float32 behind it."""
        if "21=3" not in layer.params:
            return None
        data = Layer(layer.type, layer.name, [], [layer.name + "_int8"], layer.params)
        return [data, self.new("Cast", layer.name, data.outputs, ["0=3", "1=1"], layer.outputs[0])]

    def cast(self, layer, op):
        """Casts from integer/bool data: ncnn already holds them as float32 integers (exact)."""
        if "dtype" not in op.params or op.inputs[0][1] == "?":
            return None
        src, dst = _kind(op.inputs[0][1]), _kind(op.params["dtype"])
        if src == "float":
            return None
        if dst != "bool" or src == "bool":
            return [Layer("Noop", layer.name, layer.inputs, layer.outputs)]
        # int -> bool: min(|x|, 1), exact for integer values
        absval = self.new("UnaryOp", layer.name, layer.inputs, ["0=0"])
        return [absval, self.new("BinaryOp", layer.name, absval.outputs, ["0=5", "1=1", "2=1.0"], layer.outputs[0])]

    def logic(self, layer, op):
        """and/or of two bool tensors (0/1 in ncnn): mul and max."""
        kind = {"and(@0,@1)": "0=2", "or(@0,@1)": "0=4"}.get(op.params.get("expr", ""))
        if kind is None or len(layer.inputs) != 2 or any(_kind(t) != "bool" for _, t in op.inputs):
            return None
        return [Layer("BinaryOp", layer.name, layer.inputs, layer.outputs, [kind])]

    def where(self, layer, op):
        """where(c, x, y) with c in {0, 1} as c*x + (1-c)*y: exact for finite x, y."""
        roles = [r for r in ("condition", "input", "other") if f"${r}" in op.params]
        if roles[:1] != ["condition"] or len(roles) != len(layer.inputs) or _kind(op.inputs[0][1]) != "bool":
            return None
        blob = dict(zip(roles, layer.inputs))
        try:
            scalars = {r: _scalar(float(op.params[r])) for r in ("input", "other") if r not in blob}
        except (KeyError, ValueError):
            return None
        split = self.new("Split", layer.name, [blob["condition"]], [])
        split.outputs = [split.name + "_0", split.name + "_1"]
        notc = self.new("BinaryOp", layer.name, [split.outputs[1]], ["0=7", "1=1", "2=1.0"])

        def times(c, role):
            if role in blob:
                return self.new("BinaryOp", layer.name, [c, blob[role]], ["0=2"])
            return self.new("BinaryOp", layer.name, [c], ["0=2", "1=1", f"2={scalars[role]}"])

        a, b = times(split.outputs[0], "input"), times(notc.outputs[0], "other")
        return [split, notc, a, b, self.new("BinaryOp", layer.name, a.outputs + b.outputs, ["0=0"], layer.outputs[0])]

    def unbind(self, layer, op):
        """unbind(0) of an (N, 1, *rest) tensor (batch second: q, k, v out of a fused qkv projection).
        pnnx keeps the ncnn blob as (N, *rest) and puts an unconvertible reshape to (N, 1, *rest),
        named ``<unbind>_ncnnbatch2dim_<k>``, in front: make that a Noop, Slice on axis 0 and
        reshape each piece to (1, *rest)."""
        shape, rest = op.inputs[0][0], op.inputs[0][0][2:]
        before = self.producer.get(layer.inputs[0])
        if op.params.get("dim") != "0" or len(shape) < 3 or shape[1] != 1 or not 1 <= len(rest) <= 3 \
                or len(layer.outputs) != shape[0] or before is None or before.type != "Tensor.reshape" \
                or not before.name.startswith(layer.name + "_ncnnbatch2dim_"):
            return None
        before.type = "Noop"
        n = shape[0]
        piece = self.new("Slice", layer.name, layer.inputs, ["-23300=" + ",".join([str(n)] + ["-233"] * n), "1=0"])
        piece.outputs = [f"{piece.name}_{k}" for k in range(n)]
        # Each piece is (1, *rest) with that 1 kept as a real axis (no batch): how pnnx wrote the layers
        # reading the pieces (a Reduction over axis 3 of a 3-D rest, say). ncnn order: w, h, d, c.
        dims = list(reversed([1, *rest]))
        keys = {2: ["0", "1"], 3: ["0", "1", "2"], 4: ["0", "1", "11", "2"]}[len(dims)]
        params = [f"{k}={d}" for k, d in zip(keys, dims)]
        if any(d < 0 for d in rest):  # a size that follows the inputs': an expression of the piece's own axes
            axes = {1: "w", 2: "wh", 3: "whd"}[len(rest)]  # the piece's (1, *rest) ncnn axes, innermost first
            sizes = [f"0{a}" if d < 0 else str(d) for a, d in zip(axes, reversed(rest))]
            params = ['6="' + ",".join([*sizes, "1"]) + '"']
        return [piece] + [self.new("Reshape", layer.name, [p], params, o) for p, o in zip(piece.outputs, layer.outputs)]


def check_supported(layers: list[Layer], log: str) -> None:
    import ncnn

    # pnnx.* leftovers are often helpers of the real culprit (the constants an aten::sort takes): name that first
    bad = sorted((layer for layer in layers if ncnn.layer_to_index(layer.type) < 0),
                 key=lambda layer: layer.type.startswith("pnnx."))
    if not bad:
        return
    details = []
    for layer in bad:
        params = re.findall(rf"^ignore \S+ {re.escape(layer.name)} param (.*)$", log, re.M)
        details.append(f"{layer.type} (layer {layer.name}{': ' + ', '.join(params) if params else ''})")
    rank = " pnnx reported reshapes beyond ncnn's 4 dims." if "exceeds ncnn physical rank" in log else ""
    raise UnsupportedOpError(
        "ncnn", bad[0].type, bad[0].name,
        f"ncnn has no layer for: {'; '.join(details)}.{rank} Express these with ops ncnn has "
        "(float arithmetic instead of bool masks and casts, at most 4-D tensors), or drop the ncnn target")
