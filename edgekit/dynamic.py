"""Dynamic shapes: input axes whose size may vary at run time within a range (batch, sequence length,
image size), written on the command line as ``--dynamic`` and in the API as ``dynamic_shapes=``.

One ``DynamicDim`` is one size shared by one or more input axes (``input_ids`` and ``attention_mask``
share their sequence length). Its range travels in the ModelSpec, so the manifest records it and
``edgekit verify`` checks the artifact at several sizes of it, never only at the export example's.

Command line, one flag per dimension::

    --dynamic batch=1..8                      axis 0 of every input (the batch)
    --dynamic x.2=160..320/32                 axis 2 of input x, a multiple of 32 in 160..320
    --dynamic seq:input_ids.1,attention_mask.1=8..128    one size shared by two axes, named seq

API: the same strings, or torch.export's notation, a dict keyed by input name (or a tuple in input
order) of ``{axis: Dim("seq", min=8, max=128)}``; ``Dim(...) * 32`` for a multiple of 32.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from edgekit.errors import UserError

MAX_SIZE = 1 << 20  # a dynamic axis's upper bound: far above any real batch, sequence or image side
PROBE_SAMPLES = 2  # samples per probed size (each probe is one more run of every artifact)
_NAME = re.compile(r"[A-Za-z_]\w{0,63}")
_CLI = re.compile(r"(?:(?P<name>[A-Za-z_]\w*):)?(?P<axes>[^=]+)=(?P<min>\d+)\.\.(?P<max>\d+)(?:/(?P<step>\d+))?")
_FIX = ("write --dynamic NAME=MIN..MAX forms such as batch=1..8, x.2=160..320/32 or "
        "seq:input_ids.1,attention_mask.1=8..128 (input.axis, comma-separated for a shared size)")


def _bad(what: str, fix: str = _FIX) -> UserError:
    return UserError("E-DYNAMIC-SHAPES", what, fix)


@dataclass(frozen=True)
class DynamicDim:
    """One size that may vary in min..max (a multiple of ``step``), shared by ``axes``: (input name, axis) pairs."""

    name: str
    min: int
    max: int
    axes: tuple[tuple[str, int], ...]
    step: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise _bad(f"dynamic dimension name {self.name!r:.80} is not an identifier of at most 64 characters")
        for k in ("min", "max", "step"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_SIZE:
                raise _bad(f"dynamic dimension {self.name}: {k} {v!r:.40} is not a whole number in 1..{MAX_SIZE}")
        if self.min > self.max:
            raise _bad(f"dynamic dimension {self.name}: min {self.min} is above max {self.max}")
        if self.min % self.step or self.max % self.step:
            raise _bad(f"dynamic dimension {self.name}: {self.min}..{self.max} are not multiples of its step {self.step}",
                       f"give bounds that are multiples of {self.step}")
        if (not isinstance(self.axes, tuple) or not 1 <= len(self.axes) <= 16
                or not all(isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str) and isinstance(a[1], int)
                           and not isinstance(a[1], bool) and 0 <= a[1] < 8 for a in self.axes)):
            raise _bad(f"dynamic dimension {self.name}: axes {self.axes!r:.120} are not 1 to 16 (input, axis 0..7) pairs")
        if len(set(self.axes)) != len(self.axes):
            raise _bad(f"dynamic dimension {self.name} names an axis twice: {self.axes}")

    def fits(self, size: int) -> bool:
        return self.min <= size <= self.max and size % self.step == 0

    def sizes(self) -> tuple[int, ...]:
        """The sizes verification probes: both bounds and one in between (a multiple of step)."""
        mid = (self.min + self.max) // 2 // self.step * self.step
        return tuple(sorted({self.min, max(mid, self.min), self.max}))

    def describe(self) -> str:
        axes = ",".join(f"{i}.{a}" for i, a in self.axes)
        return f"{self.name}:{axes}={self.min}..{self.max}" + (f"/{self.step}" if self.step > 1 else "")

    def to_dict(self) -> dict:
        return {"name": self.name, "min": self.min, "max": self.max, "step": self.step,
                "axes": [{"input": i, "axis": a} for i, a in self.axes]}

    @classmethod
    def from_dict(cls, d) -> "DynamicDim":
        """From the manifest (untrusted): ValueError on anything malformed."""
        try:
            return cls(d["name"], d["min"], d["max"], tuple((a["input"], a["axis"]) for a in d["axes"]), d.get("step", 1))
        except UserError as exc:
            raise ValueError(exc.what) from exc
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed dynamic dimension ({type(exc).__name__}: {exc})") from exc


def parse(text: str, input_names: list[str]) -> DynamicDim:
    """One ``--dynamic`` value (see the module docstring) for a model with these inputs."""
    m = _CLI.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise _bad(f"--dynamic {text!r:.80} is not NAME=MIN..MAX[/STEP]")
    lo, hi, step = int(m["min"]), int(m["max"]), int(m["step"] or 1)
    if m["axes"].strip() == "batch" and m["name"] is None:
        return DynamicDim("batch", lo, hi, tuple((n, 0) for n in input_names), step)
    axes = []
    for part in m["axes"].split(","):
        name, dot, axis = part.strip().rpartition(".")
        if not dot or not axis.isdigit():
            raise _bad(f"--dynamic {text!r:.80}: {part.strip()!r} is not INPUT.AXIS (e.g. x.0)")
        axes.append((name, int(axis)))
    return DynamicDim(m["name"] or f"{axes[0][0]}_{axes[0][1]}", lo, hi, tuple(axes), step)


def from_torch(dynamic_shapes, input_names: list[str]) -> tuple[DynamicDim, ...]:
    """torch.export's ``dynamic_shapes`` (a dict keyed by input name, or a tuple/list in input order,
    of {axis: Dim}) as DynamicDims; Dims used on several axes become one shared DynamicDim."""
    if isinstance(dynamic_shapes, dict):
        unknown = [k for k in dynamic_shapes if k not in input_names]
        if unknown:
            raise _bad(f"dynamic_shapes names {', '.join(map(str, unknown))}, not inputs of the model ({', '.join(input_names)})",
                       "key dynamic_shapes by the model's input names")
        per_input = [dynamic_shapes.get(n) for n in input_names]
    elif isinstance(dynamic_shapes, (tuple, list)) and len(dynamic_shapes) == len(input_names):
        per_input = list(dynamic_shapes)
    else:
        raise _bad(f"dynamic_shapes is a {type(dynamic_shapes).__name__}, not a dict by input name or a "
                   f"tuple of {len(input_names)} entries", "pass {'x': {0: Dim('batch', min=1, max=8)}}")
    found: dict[str, list] = {}
    for name, axes in zip(input_names, per_input):
        if axes is None:
            continue
        if not isinstance(axes, dict):
            raise _bad(f"dynamic_shapes[{name!r}] is a {type(axes).__name__}, not a dict of axis -> Dim",
                       "pass {axis: Dim('name', min=..., max=...)}")
        for axis, dim in axes.items():
            lo, hi, step, dname = _dim_range(dim, f"dynamic_shapes[{name!r}][{axis!r}]")
            entry = found.setdefault(dname, [lo, hi, step, []])
            if entry[:3] != [lo, hi, step]:
                raise _bad(f"Dim {dname} is given two ranges", "use one Dim object per shared size")
            entry[3].append((name, axis))
    return tuple(DynamicDim(n, lo, hi, tuple(axes), step) for n, (lo, hi, step, axes) in found.items())


def _dim_range(dim, where: str) -> tuple[int, int, int, str]:
    """(min, max, step, name) of a torch.export Dim, or ``Dim * k``."""
    from torch.export.dynamic_shapes import Dim, _DerivedDim

    if isinstance(dim, _DerivedDim):
        root, step = dim.root, dim.fn(1)
        if not isinstance(step, int) or dim.fn(2) != 2 * step:
            raise _bad(f"{where}: {dim.__name__} is not Dim * k", "use Dim(...) or Dim(...) * k")
        return root.min * step, root.max * step, step, root.__name__
    if isinstance(dim, Dim):
        if dim.max is None or dim.max > MAX_SIZE:
            raise _bad(f"{where}: Dim {dim.__name__} has no upper bound", f"give Dim('{dim.__name__}', min=..., max=...)")
        return max(dim.min, 1), dim.max, 1, dim.__name__
    raise _bad(f"{where} is a {type(dim).__name__}, not a torch.export Dim with bounds",
               "pass Dim('name', min=..., max=...) (Dim.AUTO and Dim.DYNAMIC have no range to verify)")


def from_program(program, input_names: list[str]) -> tuple[tuple[DynamicDim, ...], list[str]]:
    """The dynamic dimensions a torch.export program was captured with: each input axis whose size is
    a symbol (or k * a symbol) with a finite range in ``program.range_constraints`` -> (DynamicDims,
    the "input.axis" of dynamic axes left out because their range has no upper bound to verify)."""
    user = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    found: dict[str, list] = {}
    unbounded = []
    for name, arg in zip(input_names, user):
        val = placeholders[arg].meta.get("val") if arg in placeholders else None
        for axis, size in enumerate(getattr(val, "shape", ())):
            if isinstance(size, int):
                continue
            step, symbol = size.node.expr.as_coeff_Mul()
            rng = program.range_constraints.get(symbol)
            if rng is None or not symbol.is_Symbol or not step.is_Integer or not rng.upper.is_finite or rng.upper > MAX_SIZE:
                unbounded.append(f"{name}.{axis}")
                continue
            entry = found.setdefault(str(symbol), [int(step), max(int(rng.lower), 1), int(rng.upper), []])
            entry[3].append((name, axis))
    dims = tuple(DynamicDim(f"{axes[0][0]}_{axes[0][1]}", lo * k, hi * k, tuple(axes), k) for k, lo, hi, axes in found.values())
    return dims, unbounded


def resolve(given, input_names: list[str], example: tuple) -> tuple[DynamicDim, ...]:
    """The job's dynamic shapes (strings, one string, or torch's notation) checked against the model."""
    if given is None or given == () or given == []:
        return ()
    if isinstance(given, str):
        given = (given,)
    if isinstance(given, (tuple, list)) and all(isinstance(g, str) for g in given):
        dims = tuple(parse(g, input_names) for g in given)
    else:
        dims = from_torch(given, input_names)
    if len({d.name for d in dims}) != len(dims):
        raise _bad(f"dynamic dimension names repeat: {[d.name for d in dims]}", "give each --dynamic its own NAME:")
    seen: set = set()
    for d in dims:
        for name, axis in d.axes:
            if name not in input_names:
                raise _bad(f"--dynamic {d.describe()}: the model has no input {name!r} (inputs: {', '.join(input_names)})",
                           "name an input of the model")
            t = example[input_names.index(name)]
            if axis >= t.dim():
                raise _bad(f"--dynamic {d.describe()}: input {name} has {t.dim()} axes, no axis {axis}", "pick an existing axis")
            if (name, axis) in seen:
                raise _bad(f"--dynamic: axis {name}.{axis} is given twice", "give each axis one dynamic dimension")
            seen.add((name, axis))
            if not d.fits(int(t.shape[axis])):
                raise _bad(f"--dynamic {d.describe()}: the example input {name} has size {int(t.shape[axis])} on axis {axis}, "
                           "outside that range", "give a range that holds the example's size")
    return dims


def torch_shapes(dims, input_names: list[str]):
    """``dynamic_shapes`` for torch.export (a tuple in input order) of these DynamicDims; None without any."""
    if not dims:
        return None
    from torch.export import Dim

    per_input: list[dict] = [{} for _ in input_names]
    for d in dims:
        dim = Dim(d.name, min=d.min // d.step, max=d.max // d.step)
        dim = dim * d.step if d.step > 1 else dim
        for name, axis in d.axes:
            per_input[input_names.index(name)][axis] = dim
    return tuple(p or None for p in per_input)


def export_example(dims, input_names: list[str], samples: list) -> tuple[np.ndarray, ...]:
    """The sample torch.export traces with: torch specializes an axis of size 1 (or 0) to a constant,
    so each dynamic axis gets a size of at least 2 inside its range (real data, resized by ``resize``)."""
    sizes = {d.name: next((s for s in (2 * d.step, d.min, d.max) if s >= 2 and d.fits(s)), d.max) for d in dims}
    return probe(dims, input_names, samples, sizes, 0)


def probe(dims, input_names: list[str], samples: list, sizes: dict[str, int], start: int) -> tuple[np.ndarray, ...]:
    """One sample at the given size per dimension, made from real samples: a batch axis (axis 0) takes
    consecutive samples, a float axis is resampled linearly (images: bilinear), an integer axis (token
    ids, masks) is cut or padded with 0."""
    target = {(n, a): sizes[d.name] for d in dims for n, a in d.axes}
    out = []
    for i, name in enumerate(input_names):
        arr = samples[start % len(samples)][i]
        batch = target.get((name, 0))
        if batch is not None and batch != arr.shape[0]:
            rows = np.concatenate([samples[(start + k) % len(samples)][i] for k in range(batch)], axis=0)
            arr = rows[:batch]
        for axis in range(1, arr.ndim):
            size = target.get((name, axis))
            if size is not None and size != arr.shape[axis]:
                arr = _resize_axis(arr, axis, size)
        out.append(np.ascontiguousarray(arr))
    return tuple(out)


def _resize_axis(arr: np.ndarray, axis: int, size: int) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating):
        old = arr.shape[axis]
        pos = (np.arange(size) + 0.5) * old / size - 0.5  # pixel centres, as align_corners=False
        pos = np.clip(pos, 0, old - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        w = (pos - lo).astype(arr.dtype).reshape([-1 if k == axis else 1 for k in range(arr.ndim)])
        return (np.take(arr, lo, axis=axis) * (1 - w) + np.take(arr, hi, axis=axis) * w).astype(arr.dtype)
    if size <= arr.shape[axis]:
        return np.take(arr, np.arange(size), axis=axis)
    pad = [(0, size - arr.shape[axis]) if k == axis else (0, 0) for k in range(arr.ndim)]
    return np.pad(arr, pad)


def probe_sizes(dims) -> list[dict[str, int]]:
    """The size combinations verification runs beyond the example's: every dimension at its minimum,
    at its middle, at its maximum (so a bound no target honours is found)."""
    combos = []
    for k in range(3):
        combo = {d.name: d.sizes()[min(k, len(d.sizes()) - 1)] for d in dims}
        if combo not in combos:
            combos.append(combo)
    return combos


def meta(dims) -> dict:
    """The artifact meta of a target with dynamic shapes (runners read it in their subprocess)."""
    return {"dynamic": [d.to_dict() for d in dims]} if dims else {}


def shape_problem(art_meta: dict, name: str, fixed, shape) -> str | None:
    """What is wrong with an input's shape for an artifact (None: it fits): each axis must equal the
    spec's (``fixed``), except a dynamic axis, which must lie in its range (``art_meta["dynamic"]``)."""
    free = {axis: d for d in map(DynamicDim.from_dict, art_meta.get("dynamic") or []) for n, axis in d.axes if n == name}
    shape, fixed = tuple(int(s) for s in shape), tuple(int(s) for s in fixed)
    if len(shape) == len(fixed) and all(free[k].fits(s) if k in free else s == f for k, (s, f) in enumerate(zip(shape, fixed))):
        return None
    want = tuple(f"{free[k].min}..{free[k].max}" if k in free else f for k, f in enumerate(fixed))
    return f"input {name!r} has shape {shape}, the model takes {want}"
