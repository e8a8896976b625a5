"""Per-layer fidelity of an INT8 OpenVINO IR against its quantized reference.

Correspondence, by name and checked by numbers: the IR comes from the QDQ ONNX file, which torch.onnx
exported from the same convert_pt2e program that is saved as the reference, so every activation
FakeQuantize of the IR carries the name of a reference ``dequantize_per_tensor`` node as its output
tensor name (the graph output's carries the output name instead: the reference output's dequantize).
That node's argument is the reference ``quantize_per_tensor`` node; the pair is used only when the
FakeQuantize has 256 levels and output range ((-128 - zp) * scale, (127 - zp) * scale) of exactly
that node's scale and zero point.

Then (as the tflite view, edgekit.converters.tflite.per_layer):
1. every matched FakeQuantize output becomes an extra output of the model (``add_outputs`` on the read
   model before compiling, strict f32, 1 thread); the plugin must still run every conv/matmul layer
   of the shipped compile, by name, on the same kind of kernel (integer or float), else the view
   refuses with the differences (seen on an attention block: the fused attention subgraph splits
   into MatMul layers once its inputs are probed). A conv followed by a residual add is no longer
   fused with the add, so the probed program can differ from the shipped one by a step there
   (tiny_cnn output: shipped 2 steps from the reference, probed 1);
2. each probed value, (q - zp) * scale in float, is turned back into its int8 q;
3. the reference runs with every matched quantize node replaced by the runtime's own int8 tensor, so
   each reference op computes from exactly the input the runtime's op had; its int8 result is
   compared with the runtime's, per channel, in steps.
Measured: tiny_cnn 0 steps on every layer; MobileNetV2 (66 layers, 4 photos) at most 1 step on every
layer. Flagged above FLAG_STEPS (2), as for tflite and ptl.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.quant.per_layer import FLAG_STEPS, channel_max, module_of, producer, run_injected

from .no_telemetry import import_openvino
from .runner import INTEGER, compile_model, read_model, runtime_layers

_Q = "quantized_decomposed.quantize_per_tensor"
_DQ = "quantized_decomposed.dequantize_per_tensor"
_THROUGH = ("Add", "Multiply", "Subtract", "Convert")  # bias add / dequantize between a FakeQuantize and its layer


def openvino_per_layer(artifact, root: Path, samples: list) -> list[dict]:
    import torch

    from edgekit.quant.reference import load_quantized_reference

    ov = import_openvino()
    gm = load_quantized_reference(Path(root) / artifact.meta["reference"]).module()
    core = ov.Core()
    model = read_model(core, root, artifact)
    pairs = match(model, gm, list(artifact.meta["outputs"]))
    if not pairs:
        return []
    shipped = _kernels(compile_model(core, read_model(core, root, artifact)))
    model.add_outputs([fq.output(0) for fq, _ in pairs])
    compiled = compile_model(core, model)
    probed = _kernels(compiled)
    changed = sorted(n for n in shipped.keys() | probed.keys() if shipped.get(n) != probed.get(n))
    if changed:  # the probed program would not be the shipped one: report nothing rather than other numbers
        raise RuntimeError("probing the FakeQuantize outputs changes the CPU plugin's compute layers, so there is "
                           "no faithful per-layer view of this IR: " + ", ".join(
                               f"{n} {shipped.get(n, 'fused')} -> {probed.get(n, 'fused')}" for n in changed[:8]))
    request = compiled.create_infer_request()
    probes = [compiled.output(fq.output(0).get_any_name()) for fq, _ in pairs]
    names, dtypes = artifact.meta["inputs"], [np.dtype(d) for d in artifact.meta["input_dtypes"]]
    worst: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    for sample in samples:
        result = request.infer({n: np.ascontiguousarray(a, dtype=dt) for n, a, dt in zip(names, sample, dtypes)})
        got = {q.name: _to_int8(np.asarray(result[p]), q) for p, (_, q) in zip(probes, pairs)}
        args = tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=dt)) for a, dt in zip(sample, dtypes))
        computed = run_injected(gm, args, {k: torch.from_numpy(v) for k, v in got.items()})
        for name, ref in computed.items():
            diff = np.abs(ref.numpy().astype(np.int32) - got[name].astype(np.int32))
            per_ch = channel_max(diff)
            worst[name] = np.maximum(worst.get(name, per_ch), per_ch)
            s = sums.setdefault(name, [0.0, 0.0])
            s[0] += float(diff.sum())
            s[1] += diff.size
    rows = []
    for fq, q in pairs:
        w, p = worst.get(q.name), producer(q)
        if w is None or p.op == "placeholder":
            continue  # the graph input: nothing computes it
        rows.append({"layer": p.name, "op": _layer_type(fq), "module": module_of(p),
                     "max_steps": float(w.max()), "mean_steps": round(sums[q.name][0] / max(sums[q.name][1], 1), 4),
                     "worst_channel": int(w.argmax()), "sqnr_db": None, "flagged": bool(w.max() > FLAG_STEPS)})
    return rows


def match(model, gm, output_names: list[str]) -> list[tuple[object, object]]:
    """(activation FakeQuantize of the IR, reference quantize node) pairs, in the IR's order."""
    nodes = {n.name: n for n in gm.graph.nodes}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = out_node.args[0] if isinstance(out_node.args[0], (tuple, list)) else (out_node.args[0],)
    pairs, used = [], set()
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize" or _source(op, 0).get_type_name() == "Constant":
            continue  # weights are int8 constants (Convert/Multiply), not FakeQuantize; skip any that are
        for name in op.output(0).get_names():
            dq = outs[output_names.index(name)] if name in output_names and len(outs) == len(output_names) else nodes.get(name)
            q = _quantize_of(dq)
            if q is not None and q.name not in used and _same_grid(op, float(q.args[1]), int(q.args[2])):
                pairs.append((op, q))
                used.add(q.name)
                break
    return pairs


def _quantize_of(dq):
    if dq is None or dq.op != "call_function" or not str(dq.target).startswith(_DQ):
        return None
    q = dq.args[0]
    if getattr(q, "op", None) != "call_function" or not str(q.target).startswith(_Q):
        return None
    return q if len(q.args) > 5 and str(q.args[5]) == "torch.int8" else None


def _same_grid(fq, scale: float, zp: int) -> bool:
    if fq.get_levels() != 256:
        return False
    lo, hi = (_scalar(_source(fq, i)) for i in (3, 4))
    if lo is None or hi is None:
        return False
    tol = 1e-5 * abs(scale) * 256
    return abs(lo - (-128 - zp) * scale) <= tol and abs(hi - (127 - zp) * scale) <= tol


def _source(op, i: int):
    return op.input(i).get_source_output().get_node()


def _scalar(node):
    if node.get_type_name() != "Constant":
        return None
    data = np.asarray(node.get_data()).reshape(-1)
    return float(data[0]) if data.size and np.all(data == data[0]) else None


def _to_int8(values: np.ndarray, q) -> np.ndarray:
    scale, zp = np.float32(q.args[1]), int(q.args[2])
    return np.clip(np.round(values / scale) + zp, -128, 127).astype(np.int8)


def _layer_type(fq) -> str:
    """The IR layer whose output the FakeQuantize quantizes (through a bias add): Convolution, MatMul, Add..."""
    node = _source(fq, 0)
    while node.get_type_name() in _THROUGH and node.get_input_size() == 2 and _source(node, 1).get_type_name() == "Constant":
        node = _source(node, 0)
    return node.get_type_name()


def _kernels(compiled) -> dict[str, str]:
    """Compute layer name -> integer or float, as the plugin compiled it."""
    return {layer["name"]: "integer" if layer["precision"] in INTEGER else "float" for layer in runtime_layers(compiled)}
