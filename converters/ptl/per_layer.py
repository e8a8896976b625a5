"""Per-layer conversion fidelity of an INT8 .ptl (PyTorch Mobile, qnnpack) against its quantized
reference (the float simulation ``quant.simulate`` builds and the ptl converter
saves next to the artifact).

``ptl_per_layer(artifact, reference, samples)``:
1. the artifact's own graph: a .ptl written by ``_save_for_lite_interpreter`` also holds the
   TorchScript code, so ``torch.jit.load`` reads the same frozen graph the lite interpreter runs.
   A copy of its forward graph returns, besides the model's result, a copy of the output of every
   top-level node taken as soon as the node wrote it (``PtlTaps``; an in-place op further on, such
   as the ``aten::relu_`` of a ``ReLU(inplace=True)`` after a conv, would otherwise change the
   conv's exposed output); eval-mode dropout, which computes nothing, is not a layer. It runs under
   the qnnpack engine. On every sample its final result must equal
   the lite interpreter's bit for bit (else InternalError: the view would not be the artifact's);
2. each quantized tensor an op writes is matched, in execution order, to a fake-quantize node of the
   reference with equal scale, zero point and shape (the first one not yet taken);
3. the reference runs once per sample with every matched activation *replaced by the runtime's own
   dequantized tensor*, so each reference op computes from exactly the input the runtime's op had and
   a fault shows on the op that causes it, not on everything after it; the reference's value at each
   matched node is requantized (its own scale and zero point) and compared with the runtime's integer
   tensor, in quantization steps;
4. a layer's error is the max over channels of the max |difference| (a one-channel fault moves
   ~1 % of the values: a mean would hide it); above ``FLAG_STEPS`` the layer is flagged.
A quantized runtime tensor that no reference activation matches exactly (its scale or zero point is
not the one the quantization chose, e.g. a wrong output scale stored in the artifact) is paired with
the unused reference activation of its shape between its matched neighbours, compared in that
activation's steps, and flagged whatever its error (a "note" says which qparams differ); with no such
activation it is a flagged row without steps.

Why matching against the reference rather than re-running each runtime node in float: the float
re-execution would use the artifact's own (possibly wrong) weights and scales, so it could not see a
wrong scale stored in the artifact; the reference was built independently from the quantized module.

Rows are JSON-safe, shaped like ``tflite_per_layer``'s: {"layer", "op", "module", "max_steps",
"mean_steps", "worst_channel", "sqnr_db" (None: the per-layer fidelity view has no FP32 side), "flagged"},
plus "note" on a row whose quantization differs from the reference's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import InternalError, UserError

from edgekit.quant.per_layer import FLAG_STEPS, channel_max, module_of, producer, run_injected

_FAKE_QUANT = "aten.fake_quantize_per_tensor_affine"
_JIT_DEPRECATION = r".*(`torch\.jit\.\w+`|Lite Interpreter) is deprecated"
# nodes that compute nothing of their own (eval-mode dropout returns its input): no reference activation
_NOT_A_LAYER = {"prim::Constant", "aten::dropout", "quantized::dropout", "aten::feature_dropout", "aten::alpha_dropout", "aten::detach"}


@dataclass(frozen=True)
class Tap:
    """One node output of the artifact's graph: its position among the exposed values and its op."""

    index: int
    op: str  # TorchScript node kind, e.g. "quantized::conv2d_relu"


class PtlTaps:
    """The .ptl's own forward graph with every top-level node output exposed: callable on torch
    tensors, -> (the model's result, [tensor of each tap]). Quantized weights are packed for the
    quantized engine active when this is built: build and run it under the artifact's engine."""

    def __init__(self, path: Path):
        import torch

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
            from edgekit.safe_load import check_torchscript

            # torch.jit.load compiles the file's TorchScript source and runs its __setstate__: screened
            # against the operator allow-list first, as verify's parent does (this runs confined anyway)
            check_torchscript(Path(path), what=f"the per-layer view of {Path(path).name}")
            try:
                module = torch.jit.load(str(path))
            except RuntimeError as exc:
                raise UserError("E-ARTIFACT-CORRUPT", f"torch.jit.load cannot read the TorchScript code in {path}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
                                "re-export the bundle (the per-layer view needs the code the .ptl stores)") from exc
        graph = module.forward.graph.copy()
        self._self = None
        first = list(graph.inputs())[0]
        if first.type().kind() == "ClassType":
            if first.uses():
                self._self = module._c  # not frozen: the graph reads attributes of the module
            else:
                graph.eraseInput(0)
        exposed, self.taps = [], []
        for node in list(graph.nodes()):
            if node.kind() in _NOT_A_LAYER:
                continue
            for value in node.outputs():
                if value.type().kind() == "TensorType":
                    self.taps.append(Tap(len(exposed), node.kind()))
                    exposed.append(_snapshot(graph, node, value))
        final = list(graph.outputs())
        pack = graph.create("prim::TupleConstruct", final + exposed)
        pack.insertBefore(graph.return_node())
        pack.output().setType(torch._C.TupleType([v.type() for v in final + exposed]))
        for _ in final:
            graph.eraseOutput(0)
        graph.registerOutput(pack.output())
        self._n_final = len(final)
        self._fn = torch._C._create_function_from_graph("edgekit_per_layer_taps", graph)

    def __call__(self, *args):
        out = self._fn(*args) if self._self is None else self._fn(self._self, *args)
        result = out[0] if self._n_final == 1 else tuple(out[: self._n_final])
        return result, list(out[self._n_final:])


def _snapshot(graph, node, value):
    """A copy of ``value`` taken right after ``node``: an in-place op further on (a traced
    ``ReLU(inplace=True)`` is ``aten::relu_`` on the conv's own output) would otherwise change the
    exposed tensor, and the conv would be compared after the ReLU (measured: timm ResNet conv1
    layers flagged 97-137 steps off while their file was right)."""
    import torch

    none = graph.create("prim::Constant")
    none.output().setType(torch._C.NoneType.get())
    none.insertAfter(node)
    clone = graph.create("aten::clone", [value, none.output()])
    clone.output().setType(value.type())
    clone.insertAfter(none)
    return clone.output()


def _reference_nodes(gm) -> list:
    """Fake-quantize nodes of the reference in graph order (each stands for one quantized tensor)."""
    return [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target).startswith(_FAKE_QUANT)]


def _squeeze(shape) -> tuple:
    s = tuple(int(x) for x in shape)
    while len(s) > 1 and s[0] == 1:
        s = s[1:]
    return s


def _qparams(t) -> tuple[float, int]:
    return float(t.q_scale()), int(t.q_zero_point())


def match(taps: list[Tap], tensors: list, ref_nodes: list) -> list[tuple[Tap, object, bool]]:
    """(tap, reference node or None, exact) for each per-tensor quantized runtime tensor, in execution
    order. Exact: the first unused reference node with equal scale, zero point and shape. A tensor
    left over is then paired, not exactly, with the first unused reference node of its shape between
    the reference nodes of its matched neighbours: the activation the artifact quantizes differently."""
    import torch

    quantized = [tap for tap in taps if isinstance(tensors[tap.index], torch.Tensor) and tensors[tap.index].is_quantized
                 and tensors[tap.index].qscheme() == torch.per_tensor_affine]
    shape_of = {n.name: _squeeze(n.meta["val"].shape) for n in ref_nodes if n.meta.get("val") is not None}
    used, found = set(), {}
    for tap in quantized:
        t = tensors[tap.index]
        scale, zp = _qparams(t)
        for n in ref_nodes:
            if n.name in used or shape_of.get(n.name) != _squeeze(t.shape):
                continue
            if abs(float(n.args[1]) - scale) <= 1e-6 * scale and int(n.args[2]) == zp:
                found[tap.index] = n
                used.add(n.name)
                break
    position = {n.name: k for k, n in enumerate(ref_nodes)}
    pairs, last = [], -1
    for i, tap in enumerate(quantized):
        if tap.index in found:
            pairs.append((tap, found[tap.index], True))
            last = position[found[tap.index].name]
            continue
        nxt = next((position[found[t.index].name] for t in quantized[i + 1:] if t.index in found), len(ref_nodes))
        shape = _squeeze(tensors[tap.index].shape)
        loose = next((n for n in ref_nodes[last + 1:nxt] if n.name not in used and shape_of.get(n.name) == shape), None)
        if loose is not None:
            used.add(loose.name)
            last = position[loose.name]
        pairs.append((tap, loose, False))
    return pairs


def _steps(node, value):
    """The reference's float value at a fake-quantize node as integers on that node's grid."""
    import torch

    scale, zp, lo, hi = float(node.args[1]), int(node.args[2]), int(node.args[3]), int(node.args[4])
    return torch.clamp(torch.round(value.double() / scale) + zp, lo, hi).to(torch.int64)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _lite(path: Path):
    from torch.jit.mobile import _load_for_lite_interpreter

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
        return _load_for_lite_interpreter(str(path))


def ptl_per_layer(artifact_path, reference_program_path, samples) -> list[dict]:
    """Per-layer error of an INT8 .ptl vs its quantized reference (see the module docstring)."""
    import torch

    from .quant import qnnpack_engine

    from edgekit.quant.reference import load_quantized_reference

    samples = list(samples)
    if not samples:
        raise UserError("E-DATA-EMPTY", "per-layer check got no samples", "pass at least one input tuple")
    gm = load_quantized_reference(Path(reference_program_path)).module()
    ref_nodes = _reference_nodes(gm)
    pairs = None
    worst: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    with qnnpack_engine(), torch.no_grad():
        # loading packs the weights for the engine active *at load*: under the default x86 engine the
        # same file runs fbgemm kernels (measured: MobileNetV2 depthwise layers 20-93 steps off, int16
        # saturation), so both the tapped graph and the lite interpreter are loaded under qnnpack
        taps = PtlTaps(Path(artifact_path))
        lite = _lite(Path(artifact_path))
        for sample in samples:
            args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in sample)
            result, tensors = taps(*args)
            for a, b in zip(_as_tuple(result), _as_tuple(lite(*args))):
                if not torch.equal(a, b):
                    raise InternalError(f"the per-layer graph of {Path(artifact_path).name} does not reproduce the "
                                        f"lite interpreter's output (max diff {float((a - b).abs().max()):.3g}): its "
                                        "layer view would not be the artifact's computation")
            if pairs is None:
                pairs = match(taps.taps, tensors, ref_nodes)
            got = {n.name: tensors[t.index] for t, n, _ in pairs if n is not None}
            inject = {k: v.dequantize().contiguous() for k, v in got.items()}
            computed = run_injected(gm, args, inject)
            for t, n, exact in pairs:
                if n is None:
                    continue
                if exact:
                    diff = (_steps(n, computed[n.name]) - got[n.name].int_repr().to(torch.int64)).abs().numpy()
                else:  # other grids: the difference of the float values in the reference's steps
                    diff = ((computed[n.name].double() - inject[n.name].double()).abs() / float(n.args[1])).numpy()
                per_ch = channel_max(diff)
                worst[n.name] = np.maximum(worst.get(n.name, per_ch), per_ch)
                s = sums.setdefault(n.name, [0.0, 0.0])
                s[0] += float(diff.sum())
                s[1] += diff.size
    return _rows(pairs or [], worst, sums, tensors)


def _rows(pairs, worst, sums, tensors) -> list[dict]:
    rows = []
    for k, (tap, node, exact) in enumerate(pairs):
        scale, zp = _qparams(tensors[tap.index])
        if node is None:
            rows.append({"layer": f"{tap.op.split('::')[-1]}#{k}", "op": tap.op, "module": "", "max_steps": None,
                         "mean_steps": None, "worst_channel": None, "sqnr_db": None, "flagged": True,
                         "note": f"no reference activation of shape {list(tensors[tap.index].shape)} is left for this "
                                 f"tensor (scale {scale:.6g}, zero point {zp})"})
            continue
        w, p = worst[node.name], producer(node)
        row = {"layer": p.name, "op": tap.op, "module": module_of(p),
               "max_steps": round(float(w.max()), 3), "mean_steps": round(sums[node.name][0] / max(sums[node.name][1], 1), 4),
               "worst_channel": int(w.argmax()), "sqnr_db": None, "flagged": bool(w.max() > FLAG_STEPS) or not exact}
        if not exact:
            row["note"] = (f"the artifact quantizes this tensor with scale {scale:.6g}, zero point {zp}; the reference "
                           f"with {float(node.args[1]):.6g}, {int(node.args[2])} (steps are the reference's)")
        rows.append(row)
    return rows
