"""Layout chains ncnn cannot take, rewritten in the traced graph as ones it can (exactly).

ncnn blobs have at most 4 dimensions, and pnnx maps neither strided slices nor most ``unbind``s.
Models use those in pure *layout* chains: reshapes, permutes, selects, slices and unbinds that only
move elements (MobileViT's patch unfolding ``reshape(B, C, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4)``,
a ``qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)``, LeViT's ``x[:, ::2, ::2]``).

Such a chain reads its output from its source by an affine map: output element ``i`` is source
element ``offset + sum_k i_k * stride_k`` for a factorisation of the output's flat index. This module
finds each chain (source of at most 4 dims -> the values the rest of the graph reads), computes that
map by replaying the chain on the source's element numbers, and re-emits it as a few ops that never
exceed 4 dims: a reshape that gives each factor its own axis, a narrow (``slice`` step 1) per axis
that is read in part, and permutes of at most 4 blocks. Each plan is replayed on the element numbers
and used only if it picks exactly the same elements as the original chain.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .torchscript import NotConstant, attribute, const, graphs, shape_of

MAX_DIMS = 4
# ops that only move elements; their first input is the one tensor they read
_LAYOUT = {"aten::reshape", "aten::view", "aten::flatten", "aten::unsqueeze", "aten::squeeze", "aten::contiguous",
           "aten::permute", "aten::transpose", "aten::t", "aten::select", "aten::slice", "aten::narrow",
           "aten::unbind", "aten::chunk", "aten::split", "aten::unsafe_chunk", "aten::split_with_sizes"}
_LISTS = {"aten::unbind", "aten::chunk", "aten::split", "aten::unsafe_chunk", "aten::split_with_sizes"}


# --------------------------------------------------------------------------------------------
# The affine map of a chain, and a plan of at most 4-D ops that computes it.
# --------------------------------------------------------------------------------------------

def strided_factors(index):
    """(offset, [(extent, stride), ...] outermost first) with ``index.flatten()[j]`` equal to
    ``offset + sum(j_k * stride_k)`` (j_k: the digits of j in the extents), or None."""
    import torch

    flat = index.flatten()
    n, block, factors = flat.numel(), 1, []
    while block < n:
        stride = int(flat[block] - flat[0])
        if stride <= 0:
            return None
        steps = flat[::block] - flat[0]
        run = int((steps == torch.arange(steps.numel()) * stride).long().cumprod(0).sum())
        extent = max(e for e in range(1, run + 1) if (n // block) % e == 0)
        if extent == 1:
            return None
        factors.insert(0, (extent, stride))
        block *= extent
    offset = int(flat[0]) if n else 0
    if _affine(offset, factors).numel() != n or not torch.equal(_affine(offset, factors), flat):
        return None
    return offset, factors


def _affine(offset: int, factors):
    import torch

    out = torch.tensor([offset])
    for extent, stride in factors:
        out = (out[:, None] + torch.arange(extent)[None, :] * stride).flatten()
    return out


@dataclass(frozen=True)
class Step:
    """One op of a plan: ("reshape", shape), ("narrow", dim, start, end), ("pad", count): zeros after
    the last axis, or ("permute", dims)."""

    op: str
    args: tuple


def plan(numel: int, out_shape, offset: int, factors) -> list[Step] | None:
    """Steps that turn a contiguous source of ``numel`` elements into the output of the affine map,
    every intermediate of at most MAX_DIMS dims; None if the strides do not nest."""
    order = sorted(range(len(factors)), key=lambda k: factors[k][1])  # innermost (smallest stride) first
    axes = [] if order and factors[order[0]][1] == 1 else [(1, 1, None)]  # (base, extent, factor); a gap axis
    axes += [(factors[k][1], factors[k][0], k) for k in order]
    if any(outer[0] % inner[0] for inner, outer in zip(axes, axes[1:])):
        return None
    slots = [outer[0] // inner[0] for inner, outer in zip(axes, axes[1:])]
    starts, rest = [], offset
    for slot in slots:
        starts.append(rest % slot)
        rest //= slot
    starts.append(rest)
    if any(s + a[1] > slot for s, a, slot in zip(starts, axes, slots)):
        return None
    base = axes[-1][0]
    slots.append(max(math.ceil(numel / base), starts[-1] + axes[-1][1]))
    steps = []
    if slots[-1] * base > numel:  # the last outer block runs past the source: pad it with zeros
        steps += [Step("reshape", (numel,)), Step("pad", (slots[-1] * base - numel,))]
    sizes = slots[::-1]  # outermost first from here on
    for i, (start, (_, extent, _)) in enumerate(zip(starts[::-1], axes[::-1])):
        if (start, extent) != (0, sizes[i]):
            view = (math.prod(sizes[:i]), sizes[i], math.prod(sizes[i + 1:]))
            steps += [Step("reshape", view[:2] if view[2] == 1 else view), Step("narrow", (1, start, start + extent))]
            sizes[i] = extent
    kept = [(a[2], s) for a, s in zip(axes[::-1], sizes) if a[2] is not None]  # gap axes are 1 long now
    steps += _permute_steps([k for k, _ in kept], [s for _, s in kept])
    return steps + [Step("reshape", tuple(out_shape))]


def _permute_steps(current: list[int], sizes: list[int]) -> list[Step]:
    """Steps that put axes ``current`` (with ``sizes``) in the order 0, 1, 2, ... (the output's):
    one permute when the axes that move together leave at most 4 blocks, else block swaps."""
    groups, gsizes = [], []  # runs of axes already adjacent and in order
    for a, s in zip(current, sizes):
        if groups and groups[-1][-1] + 1 == a:
            groups[-1].append(a)
            gsizes[-1] *= s
        else:
            groups.append([a])
            gsizes.append(s)
    order = sorted(range(len(groups)), key=lambda g: groups[g][0])
    if order == list(range(len(groups))):
        return []
    if len(groups) <= MAX_DIMS:
        return [Step("reshape", tuple(gsizes)), Step("permute", tuple(order))]
    cur, steps = list(range(len(groups))), []
    for k, g in enumerate(order):  # bring block g to position k: swap it with the blocks before it
        j = cur.index(g)
        if j == k:
            continue
        sz = [gsizes[c] for c in cur]
        steps += _swap(math.prod(sz[:k]), math.prod(sz[k:j]), sz[j], math.prod(sz[j + 1:]))
        cur = cur[:k] + [g] + cur[k:j] + cur[j + 1:]
    return steps


def _swap(pre: int, a: int, b: int, post: int) -> list[Step]:
    """(pre, a, b, post) -> (pre, b, a, post), without the outer axes that are 1 long."""
    view, perm = [pre, a, b, post], [0, 2, 1, 3]
    if post == 1:
        view, perm = view[:3], perm[:3]
    if pre == 1:
        view, perm = view[1:], [d - 1 for d in perm[1:]]
    return [Step("reshape", tuple(view)), Step("permute", tuple(perm))]


def with_batch(steps: list[Step]) -> list[Step] | None:
    """The steps with a leading axis of 1 (pnnx's batch axis) added to every shape, if that keeps them
    within MAX_DIMS; else None. pnnx tracks which axis is the batch (ncnn drops it) through a chain
    only while every tensor keeps one; without it the chain's output may reach ncnn with its axes
    shifted against what its consumers expect."""
    out = []
    for st in steps:
        if st.op == "reshape":
            if len(st.args) + 1 > MAX_DIMS:
                return None
            out.append(Step("reshape", (1, *st.args)))
        elif st.op == "narrow":
            out.append(Step("narrow", (st.args[0] + 1, *st.args[1:])))
        elif st.op == "pad":
            out.append(st)
        else:
            out.append(Step("permute", (0, *(d + 1 for d in st.args))))
    return out


def apply(steps: list[Step], x):
    """Run a plan in torch (on element numbers, to check it; the same ops are emitted in the graph)."""
    import torch

    for st in steps:
        if st.op == "reshape":
            x = x.reshape(st.args)
        elif st.op == "narrow":
            dim, start, end = st.args
            x = x.narrow(dim, start, end - start)
        elif st.op == "pad":
            x = torch.cat([x, torch.zeros(*x.shape[:-1], st.args[0], dtype=x.dtype)], dim=-1)
        else:
            x = x.permute(st.args)
    return x


# --------------------------------------------------------------------------------------------
# The chains in a traced (TorchScript) graph.
# --------------------------------------------------------------------------------------------

def _layout_input(value):
    """The tensor a layout op read to produce ``value`` (through the ListUnpack of an unbind), or None."""
    node = value.node()
    if node.kind() == "prim::ListUnpack":
        node = node.input().node()
        if node.kind() not in _LISTS:
            return None
    elif node.kind() not in _LAYOUT or node.kind() in _LISTS:
        return None
    return node.inputsAt(0)


def _needs_rewrite(node) -> bool:
    """A layout op ncnn cannot take: one with a tensor of more than 4 dims, or a strided slice."""
    if node.kind() not in _LAYOUT:
        return False
    tensors = [v for v in (*node.inputs(), *node.outputs()) if shape_of(v) is not None]
    if any(len(shape_of(v)) > MAX_DIMS for v in tensors):
        return True
    try:
        return node.kind() == "aten::slice" and const(node.inputsAt(4)) not in (1, None)
    except NotConstant:
        return True


def _region(source):
    """(values read outside the chain, aten::size nodes reading the chain) of the chains from ``source``;
    None if a list of an unbind is used other than by ListUnpack."""
    sinks, sizes, stack = [], [], [source]
    while stack:
        v = stack.pop()
        outside = False
        for use in v.uses():
            user = use.user
            if user.kind() == "aten::size":
                sizes.append(user)
            elif user.kind() in _LISTS and use.offset == 0:
                unpacks = [u.user for u in user.output().uses()]
                if any(u.kind() != "prim::ListUnpack" for u in unpacks):
                    return None
                stack.extend(o for u in unpacks for o in u.outputs())
            elif user.kind() in _LAYOUT and use.offset == 0:
                stack.extend(user.outputs())
            else:
                outside = True
        if outside and v is not source:
            sinks.append(v)
    return sinks, sizes


def _replay(value, x):
    """What the layout op producing ``value`` makes of ``x`` (element numbers of its input)."""
    import torch

    node, pick = value.node(), None
    if node.kind() == "prim::ListUnpack":
        pick, node = list(node.outputs()).index(value), node.input().node()
    kind = node.kind().removeprefix("aten::")
    if kind in ("reshape", "view", "flatten", "unsqueeze", "squeeze", "contiguous"):
        return x.reshape(shape_of(value))  # their arguments (traced shape arithmetic) only restate the shape
    args = [const(v) for v in list(node.inputs())[1:]]
    if kind == "slice":
        dim, start, end, step = args
        return x[(slice(None),) * (dim % x.dim()) + (slice(start, end, step),)]
    if kind in ("permute", "transpose", "t", "select", "narrow"):
        return getattr(x, kind)(*args)
    return getattr(torch, kind.removeprefix("unsafe_"))(x, *args)[pick]


def _chain_map(source, sink):
    """Element numbers of ``source`` that ``sink`` holds (a tensor of the sink's shape)."""
    import torch

    path = [sink]
    while path[-1] is not source:
        path.append(_layout_input(path[-1]))
    x = torch.arange(math.prod(shape_of(source))).reshape(shape_of(source))
    for value in reversed(path[:-1]):
        x = _replay(value, x)
    return x


def _plan_region(source, sinks):
    """{sink: steps} for every sink, or None if one of them has no exact plan of at most 4-D ops."""
    plans = {}
    for sink in sinks:
        shape = shape_of(sink)
        if shape is None or len(shape) > MAX_DIMS:
            return None
        try:
            index = _chain_map(source, sink)
        except (NotConstant, RuntimeError, IndexError, TypeError, ValueError):
            return None
        steps = _sink_plan(shape_of(source), shape, index)
        if steps is None:
            return None
        plans[sink] = steps
    return plans


def _sink_plan(source_shape, shape, index) -> list[Step] | None:
    """The steps that make ``index`` (element numbers of a source of ``source_shape``): with pnnx's
    batch axis kept where both ends have one and the steps fit, checked on the element numbers."""
    import torch

    found = strided_factors(index)
    numel = math.prod(source_shape)
    steps = plan(numel, shape, *found) if found else None
    if steps is None:
        return None
    if source_shape[0] == 1 and shape[0] == 1:
        batched = with_batch(plan(numel, shape[1:], *found) or [])
        if batched and _same(apply(batched, torch.arange(numel).reshape(1, numel)), index):
            return batched
    return steps if _same(apply(steps, torch.arange(numel)), index) else None


def _same(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool((a == b).all())


def _emit(graph, source, sink, steps):
    """Insert the plan's ops in front of ``sink``'s node; returns the value that replaces ``sink``."""
    import torch

    graph.setInsertPoint(sink.node())
    x, typ = source, sink.type()

    def add(kind, inputs, shape, out_type=None):
        node = graph.create(kind, inputs)
        graph.insertNode(node)
        node.output().setType(out_type or typ.with_sizes(list(shape)))
        return node.output()

    shape = shape_of(source)
    for st in steps:
        if st.op == "reshape":
            shape = list(st.args)
            x = add("aten::reshape", [x, graph.insertConstant(shape)], shape)
        elif st.op == "narrow":
            dim, start, end = st.args
            shape[dim] = end - start
            x = add("aten::slice", [x, *(graph.insertConstant(a) for a in (dim, start, end, 1))], shape)
        elif st.op == "pad":  # zeros after the last axis
            zeros = graph.insertConstant(torch.zeros(*shape[:-1], st.args[0], dtype=typ.dtype()))
            pair = add("prim::ListConstruct", [x, zeros], None, torch._C.ListType.ofTensors())
            shape = [*shape[:-1], shape[-1] + st.args[0]]
            x = add("aten::cat", [pair, graph.insertConstant(len(shape) - 1)], shape)
        else:
            shape = [shape[d] for d in st.args]
            x = add("aten::permute", [x, graph.insertConstant(list(st.args))], shape)
    graph.setInsertPoint(graph.return_node())
    return x


def _top(value):
    """The tensor a chain of layout ops starts from."""
    while (up := _layout_input(value)) is not None:
        value = up
    return value


def rewrite_layout(graph) -> int:
    """Rewrite, in place, each layout chain of ``graph`` that holds an op ncnn cannot take (more than
    4 dims, a strided slice) into at most 4-D ops; returns how many chain outputs were re-emitted.
    A chain with no exact plan is left as it is (pnnx then leaves an op ncnn reports)."""
    import torch

    done, tried = 0, set()
    while True:
        sources = [_top(n.inputsAt(0)) for n in graph.nodes() if _needs_rewrite(n)]
        sources = [s for s in sources if s.debugName() not in tried]
        if not sources:
            return done
        source = sources[0]
        tried.add(source.debugName())
        shape, region = shape_of(source), _region(source)
        if shape is None or len(shape) > MAX_DIMS or region is None:
            continue
        sinks, size_nodes = region
        plans, known = _plan_region(source, sinks), _sizes_read(size_nodes)
        if plans is None or known is None:
            continue
        for node, value in known.items():  # the traced shapes are fixed: sizes read off the old chain are constants
            graph.setInsertPoint(node)
            node.output().replaceAllUsesWith(graph.insertConstant(value))
        graph.setInsertPoint(graph.return_node())
        new = {sink: _emit(graph, source, sink, steps) for sink, steps in plans.items()}
        for sink, value in new.items():
            sink.replaceAllUsesWith(value)
        torch._C._jit_pass_dce(graph)
        done += len(new)


def _sizes_read(size_nodes) -> dict | None:
    """{aten::size node: the traced size it returns}, or None if one has a dim that is not a constant."""
    known = {}
    for node in size_nodes:
        shape = shape_of(node.inputsAt(0))
        try:
            known[node] = shape if node.inputsSize() == 1 else shape[const(node.inputsAt(1))]
        except (NotConstant, TypeError, IndexError):
            return None
    return known


def rewrite_module(traced) -> int:
    """rewrite_layout on the forward graph of ``traced`` and of each submodule (not inlined, so pnnx
    still sees the modules); returns how many chain outputs were re-emitted."""
    done = 0
    for module, graph in graphs(traced):
        _annotate_calls(module, graph)
        done += rewrite_layout(graph)
    return done


def _annotate_calls(module, graph) -> None:
    """Give the output of each submodule call in ``graph`` the traced shape the submodule's forward
    returns (the call itself is typed plain Tensor), so a chain can start at it."""
    for node in graph.findAllNodes("prim::CallMethod"):
        if node.s("name") != "forward" or node.outputsSize() != 1 or shape_of(node.output()) is not None:
            continue
        try:
            returned = attribute(module, node.inputsAt(0)).graph.return_node().inputsAt(0)
        except (AttributeError, RuntimeError):
            continue
        if shape_of(returned) is not None:
            node.output().setType(returned.type())
