"""The ncnn INT8 per-layer view: the int8 ncnn net against the quantized reference, layer by layer
(``compare_blobs``, behind ``Converter.per_layer``), both in the full int8 run and with each layer
run alone on the reference's own input, so a converter or runtime fault shows on exactly its layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InternalError

from .int8 import QMAX

LOCAL_MIN_SQNR_DB = 30.0  # a layer fed the reference's own input must reproduce it at least this well
SQNR_CAP_DB = 200.0  # an exact match is reported as 200 dB (JSON has no infinity)


def _reference_taps(program, modules: list[str]):
    """A GraphModule returning (outputs..., then input and output of each named module) of the
    reference program; module groups are found by the nodes' nn_module_stack.

    Each tap is a copy (``aten.clone``) taken where the module reads its input and right after it
    produced its output: the exported reference keeps the model's in-place ops (timm's
    ``nn.Hardswish(inplace=True)`` is ``aten.hardswish_`` on the conv's output tensor), and a tap of
    the tensor itself returned the value after them. Measured on timm mobilenetv3_small_100: the
    conv_stem "output" was hardswish(conv) (equal to hardswish of ncnn's conv_1 blob within 5e-7), so
    every conv followed by a hardswish read ~0 dB and was flagged (19 of 53 int8 layers)."""
    import torch

    gm = program.module()
    graph = gm.graph
    groups: dict[str, list] = {m: [] for m in modules}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        path = path.removeprefix("L['self'].")
        if path in groups and node.op == "call_function":
            groups[path].append(node)
    taps = []
    for m in modules:
        nodes = groups[m]
        if not nodes:
            raise InternalError(f"the quantized reference has no nodes for module {m}")
        inside = set(nodes)
        first = next(a for a in nodes[0].args if isinstance(a, torch.fx.Node) and a not in inside)
        with graph.inserting_before(nodes[0]):
            x_tap = graph.call_function(torch.ops.aten.clone.default, (first,))
        with graph.inserting_after(nodes[-1]):
            y_tap = graph.call_function(torch.ops.aten.clone.default, (nodes[-1],))
        taps += [x_tap, y_tap]
    out = next(n for n in graph.nodes if n.op == "output")
    flat = out.args[0] if isinstance(out.args[0], (tuple, list)) else (out.args[0],)
    out.args = (tuple(flat) + tuple(taps),)
    graph._codegen = torch.fx.graph.CodeGen()
    gm.recompile()
    return gm, len(flat)


def _as_float(blob: np.ndarray, out_scale: float | None) -> np.ndarray:
    """An extracted blob in the reference's units: a fused layer's int8 levels / its output scale."""
    return blob if out_scale is None else (blob / np.float32(out_scale)).astype(np.float32)


def _sqnr(ref: np.ndarray, err: np.ndarray) -> float:
    p_err = float(np.sum(err.astype(np.float64) ** 2))
    if p_err == 0.0:
        return SQNR_CAP_DB
    p_ref = float(np.sum(ref.astype(np.float64) ** 2))
    return float(min(SQNR_CAP_DB, 10.0 * np.log10(max(p_ref, 1e-30) / p_err)))


def requantized(y: np.ndarray, scale: float) -> np.ndarray:
    """``y`` rounded to int8 levels of ``scale`` (x * s, half away from zero, clamp +-127) and divided
    back: the reference's value of a fused (8=101) layer's int8 output, which is exactly the
    consumer's input rounding in the reference (``_FakeQuant``, the same float32 arithmetic)."""
    s = np.float32(scale)
    v = y.astype(np.float32) * s
    q = np.clip(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)), -QMAX, QMAX)
    return (q / s).astype(np.float32)


def compare_blobs(artifact, root: Path, samples, threads: int = 1) -> list[dict]:
    """Per quantized layer of an ncnn INT8 artifact, in graph order: the ncnn int8 net against the
    quantized reference on the same samples (numpy input tuples, batch 1).

    sqnr_db / max_abs: the layer's output blob (fused activation included) in the full int8 run vs
    the reference's activation: error accumulated along the graph (where precision is lost).
    local_sqnr_db / local_max_abs: ncnn runs only this layer, fed the reference's own input of the
    layer: a converter/runtime fault shows up on exactly its layer (``flagged``).

    A fused layer (8=101, ``output_scale`` in its meta) writes an int8 blob, which extract returns
    as its int8 values in float32: it is divided by that scale (taken from the meta, so a wrong top
    scale in the .bin is caught) and compared with the reference's activation rounded the same way
    (``requantized``), the value its consumer computes with. Where ncnn's float result differs from
    the reference's by float rounding (x86's approximate-reciprocal depthwise dequantize, see
    ``int8._FakeQuant``; ~1 ulp elsewhere) a value next to a rounding boundary lands one int8 step away,
    so fused layers read lower than 8=1 ones (measured on x86: MobileNetV2 depthwise >= 49 dB local,
    1x1 >= 68 dB; tiny_cnn's depthwise 60.7 dB, at most one step), still far above
    ``LOCAL_MIN_SQNR_DB``; the 8=1 file makes the same flips in its consumer's quantize (the outputs
    are identical)."""
    import torch

    from edgekit.quant.reference import load_quantized_reference

    from .int8 import _ncnn_blobs, apply_activation
    from .param import load_net

    root = Path(root)
    meta = artifact.meta
    qlayers = meta["int8_layers"]
    net = load_net(root / artifact.files[0], root / artifact.files[1], threads)
    gm, n_out = _reference_taps(load_quantized_reference(root / meta["reference"]), [q["module"] for q in qlayers])
    acc = {q["layer"]: ([], []) for q in qlayers}  # layer -> (reference values, errors): the full int8 run
    loc = {q["layer"]: ([], []) for q in qlayers}  # the same, each layer run alone on the reference's input
    for s in samples:
        with torch.no_grad():
            res = gm(*[torch.from_numpy(np.ascontiguousarray(a)) for a in s])
        taps = [t.numpy() for t in res[n_out:]]
        blobs = _ncnn_blobs(net, meta["inputs"], meta["input_feed"], s, [q["output"] for q in qlayers])
        for k, q in enumerate(qlayers):
            s_out = q.get("output_scale")  # absent in bundles written before the requantize fusion
            y_ref = apply_activation(taps[2 * k + 1], tuple(q["activation"])).reshape(-1)
            if s_out is not None:
                y_ref = requantized(y_ref, s_out)
            acc[q["layer"]][0].append(y_ref)
            acc[q["layer"]][1].append(_as_float(blobs[q["output"]], s_out).reshape(-1) - y_ref)
            loc[q["layer"]][0].append(y_ref)
            loc[q["layer"]][1].append(_as_float(_alone(net, q, taps[2 * k]), s_out).reshape(-1) - y_ref)
    return [_row(q, acc[q["layer"]], loc[q["layer"]]) for q in qlayers]


def _alone(net, q: dict, x_ref: np.ndarray) -> np.ndarray:
    """ncnn's output blob of one quantized layer fed the reference's input of that layer."""
    import ncnn

    if q.get("input_pad"):  # the reference's conv reads the padded tensor, ncnn's layer pads itself
        t, b, lft, r = q["input_pad"]
        x_ref = x_ref[..., t:x_ref.shape[-2] - b, lft:x_ref.shape[-1] - r]
    ex = net.create_extractor()
    mat = x_ref[0] if x_ref.shape[0] == 1 else x_ref
    data = np.ascontiguousarray(mat, dtype=np.float32)  # alive until clone() copied it
    ex.input(q["input"], ncnn.Mat(data).clone())
    ret, out = ex.extract(q["output"])
    if ret != 0:
        raise InternalError(f"ncnn could not run layer {q['layer']} alone (code {ret})")
    return np.array(out, dtype=np.float32)


def _row(q: dict, acc: tuple[list, list], loc: tuple[list, list]) -> dict:
    ref, err = (np.concatenate(v) for v in acc)
    lref, lerr = (np.concatenate(v) for v in loc)
    local = _sqnr(lref, lerr)
    return {"layer": q["layer"], "op": q["op"], "module": q["module"],
            "sqnr_db": round(_sqnr(ref, err), 3), "max_abs": float(np.abs(err).max()),
            "local_sqnr_db": round(local, 3), "local_max_abs": float(np.abs(lerr).max()),
            "flagged": bool(local < LOCAL_MIN_SQNR_DB)}
