"""ncnn target with dynamic shapes (edgekit.dynamic): what it refuses (a dynamic batch: an ncnn Mat
holds one sample), pnnx's second shape set, and which output axes vary with the inputs."""
from __future__ import annotations

import numpy as np

from edgekit import dynamic
from edgekit.errors import UnsupportedOpError, UserError


class DynamicUnsupported(UnsupportedOpError):
    """E-DYNAMIC-UNSUPPORTED, raised as an UnsupportedOpError so the pipeline reports it as it reports an
    op ncnn cannot take: ``unsupported`` (which fails the run when the user named ncnn, and not when
    ``--targets all`` chose it), with the model's source line when ``op``/``node`` name one."""

    def __init__(self, what: str, fix: str, op: str = "dynamic shapes", node: str | None = None,
                 source: str | None = None):
        self.target, self.op, self.node, self.source = "ncnn", op, node, source
        UserError.__init__(self, "E-DYNAMIC-UNSUPPORTED", what, fix)


def check_dynamic(spec, precision: str) -> None:
    """E-DYNAMIC-UNSUPPORTED for what the ncnn target cannot export with dynamic shapes."""
    batch = [d for d in spec.dynamic if any(axis == 0 for _, axis in d.axes)]
    if batch:
        which = ", ".join(d.describe() for d in batch)
        raise DynamicUnsupported(
            f"ncnn runs one sample at a time: a dynamic batch ({which}) has no axis in an ncnn Mat (it holds c, h, w "
            "of one sample)",
            "drop the batch range for ncnn and run the network once per sample; ncnn takes dynamic non-batch axes "
            "(image height/width, sequence length), e.g. --dynamic x.2=160..320/32")
    if precision != "fp32":
        raise DynamicUnsupported(f"ncnn exports dynamic shapes in fp32 only, not {precision}",
                                 "export the quantized model at a fixed shape, or fp32 with --dynamic")


def second_size(d, size: int) -> int:
    """pnnx's second size of one dynamic dimension: another size in its range, far enough from the
    traced one that shape arithmetic (a stride-2 pooling) does not map both to the same number."""
    for cand in (min(d.max, max(2 * size, size + d.step)) // d.step * d.step, size - d.step, d.min):
        if cand != size and d.fits(cand):
            return cand
    return size


def example_sizes(spec, example_inputs) -> dict[str, int]:
    names = spec.input_names
    return {d.name: int(example_inputs[names.index(d.axes[0][0])].shape[d.axes[0][1]]) for d in spec.dynamic}


def resized(spec, example_inputs, sizes: dict[str, int]) -> tuple:
    """The example inputs rebuilt at other sizes of the dynamic dimensions (edgekit.dynamic.probe)."""
    import torch

    sample = tuple(x.detach().cpu().numpy() for x in example_inputs)
    arrays = dynamic.probe(spec.dynamic, spec.input_names, [sample], sizes, 0)
    return tuple(torch.from_numpy(a) for a in arrays)


def output_free_axes(model, spec, example_inputs, others: list[tuple]) -> list[list[int]]:
    """Per output, the axes whose size changes with the inputs' (the model run in torch at the traced
    size and at each of ``others``)."""
    import torch
    from torch.utils._pytree import tree_leaves

    def shapes(inputs):
        with torch.no_grad():
            out = model(*inputs)
        return [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]

    try:
        base, rest = shapes(example_inputs), [shapes(o) for o in others]
    except Exception as exc:  # noqa: BLE001 - the user's forward() at another in-range size
        raise UserError("E-DYNAMIC-SHAPES", f"the model fails at another size inside the --dynamic range: "
                        f"{_first_line(exc)}", "give a range the model takes at every size") from exc
    if len(base) != len(spec.outputs) or any(len(r) != len(base) for r in rest):
        raise UserError("E-EXPORT-FAILED", f"the model returns {len(base)} tensors, the spec {spec.name} names "
                        f"{len(spec.outputs)} outputs",
                        "make forward() return the spec's outputs (a tensor or a tuple)")
    free = []
    for k, shape in enumerate(base):
        if any(len(r[k]) != len(shape) for r in rest):
            raise UserError("E-DYNAMIC-UNSUPPORTED", f"output {spec.outputs[k].name!r} changes its number of axes with "
                            "the input size", "give outputs whose rank does not depend on the input size")
        free.append(sorted({a for r in rest for a, (x, y) in enumerate(zip(shape, r[k])) if x != y}))
    return free


def output_shape(got: tuple, fixed: tuple, free: list[int]) -> tuple | None:
    """The output's shape (batch included) from the shape of the Mat ncnn returned (no batch; axes of
    size 1 sometimes dropped), the spec's shape and the axes that vary; None if they do not agree."""
    size = int(np.prod(got))
    if not free:
        return fixed if size == int(np.prod(fixed)) else None
    if fixed and len(got) == len(fixed) - 1 and all(g == f for k, (g, f) in enumerate(zip(got, fixed[1:]), 1)
                                                     if k not in free):
        return (fixed[0], *got)
    known = int(np.prod([f for k, f in enumerate(fixed) if k not in free]))
    if len(free) == 1 and known and size % known == 0:
        return tuple(size // known if k in free else f for k, f in enumerate(fixed))
    # several varying axes and a Mat of another rank: match its axes to the spec's, sizes of 1 left out
    want = [(k, f) for k, f in enumerate(fixed) if k in free or f != 1]
    have = [g for g in got if g != 1]
    if len(want) != len(have) or any(k not in free and f != g for (k, f), g in zip(want, have)):
        return None
    sizes = {k: g for (k, _), g in zip(want, have)}
    return tuple(sizes.get(k, f) for k, f in enumerate(fixed))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
