"""Per-layer fidelity of an INT8 .onnx: each layer's kernel replayed on the reference's own input.

onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into integer kernels (QLinearConv, QGemm,
QLinearAdd, ...), and exposing an intermediate tensor as a graph output stops that fusion (int8.py),
so the shipped session's intermediate tensors cannot be read. The view replays the kernels instead.
torch.onnx keeps the FX names, so each activation QuantizeLinear's output is named after the
reference ``quantize_per_tensor`` node it stands for. For each of them:
1. the layer is cut out of the file (``onnx.utils.Extractor``): from the int8 tensors its
   DequantizeLinear nodes read (earlier QuantizeLinear outputs, or the float graph input) to its own
   QuantizeLinear output, with its weights;
2. onnxruntime compiles that piece with the runner's settings (all graph optimizations, 1 thread), so
   it fuses it into the same kernel as in the whole file;
3. the piece runs on the reference's own int8 values at its inputs, and its int8 output is compared
   with the reference's, per channel, in steps.
Each kernel is thus judged on exactly the input its reference op had (the other views feed the
reference op the runtime's input; either way a cascade of rounding flips cannot reach a layer's row).
A layer more than FLAG_STEPS steps off is flagged, as for every target. Rows name the layer by its
reference node and its op as the file has it (Conv, Gemm, Add, ...), with the kernel onnxruntime
compiled the piece into.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.quant.per_layer import FLAG_STEPS, channel_max, module_of, producer, run_injected

_Q = "quantized_decomposed.quantize_per_tensor"


def onnx_per_layer(artifact, root: Path, samples: list) -> list[dict]:
    import onnx
    import torch

    from edgekit.quant.reference import load_quantized_reference

    gm = load_quantized_reference(Path(root) / artifact.meta["reference"]).module()
    model = onnx.shape_inference.infer_shapes(onnx.load(str(Path(root) / artifact.path)))
    ref_q = {n.name: n for n in gm.graph.nodes if n.op == "call_function" and str(n.target).startswith(_Q)
             and len(n.args) > 5 and str(n.args[5]) == "torch.int8"}
    layers = [(q, _layer_inputs(model, q)) for q in model.graph.node
              if q.op_type == "QuantizeLinear" and q.output[0] in ref_q]
    names, dtypes = artifact.meta["inputs"], [np.dtype(d) for d in artifact.meta["input_dtypes"]]
    layers = [(q, ins) for q, ins in layers if ins and all(i in ref_q or i in names for i in ins)
              and producer(ref_q[q.output[0]]).op != "placeholder"]  # the graph input: nothing computes it
    grids = _grids(model)
    layers = [(q, ins) for q, ins in layers if q.output[0] in grids and all(i in grids or i in names for i in ins)]
    pieces = {q.output[0]: _compile(_piece(model, q, ins, grids)) for q, ins in layers}
    watched = set(pieces) | {i for _, ins in layers for i in ins if i in ref_q}
    worst: dict[str, np.ndarray] = {}
    sums: dict[str, list[float]] = {}
    for sample in samples:
        feeds = {n: np.ascontiguousarray(a, dtype=dt) for n, a, dt in zip(names, sample, dtypes)}
        computed = run_injected(gm, tuple(torch.from_numpy(a) for a in feeds.values()), {}, watch=watched)
        values = {k: v.numpy() for k, v in computed.items()}
        for q, ins in layers:
            session, _ = pieces[q.output[0]]
            fed = {f"{i}{_FLOAT}": _dequantize(values[i], grids[i]) if i in grids else feeds[i] for i in ins}
            got = _quantize(session.run(None, fed)[0], grids[q.output[0]])
            diff = np.abs(got.astype(np.int32) - values[q.output[0]].astype(np.int32))
            per_ch = channel_max(diff)
            worst[q.output[0]] = np.maximum(worst.get(q.output[0], per_ch), per_ch)
            s = sums.setdefault(q.output[0], [0.0, 0.0])
            s[0] += float(diff.sum())
            s[1] += diff.size
    rows = []
    for q, _ in layers:
        name, node = q.output[0], producer(ref_q[q.output[0]])
        w = worst[name]
        rows.append({"layer": node.name, "op": _op_of(model, q), "kernel": pieces[name][1], "module": module_of(node),
                     "max_steps": float(w.max()), "mean_steps": round(sums[name][0] / max(sums[name][1], 1), 4),
                     "worst_channel": int(w.argmax()), "sqnr_db": None, "flagged": bool(w.max() > FLAG_STEPS)})
    return rows


_FLOAT = "__edgekit_float"


def _grids(model) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Quantized tensor name -> (scale, zero point on the reference's int8 grid, the file's own zero point)
    of the per-tensor QuantizeLinear that writes it. The file stores activations as uint8 (zero point
    + 128, u8_activations.py): the same values, compared with the reference's int8 ones shifted back."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) == 3 and n.input[1] in inits and n.input[2] in inits:
            scale, zp = numpy_helper.to_array(inits[n.input[1]]), numpy_helper.to_array(inits[n.input[2]])
            if scale.size == 1 and zp.dtype in (np.int8, np.uint8):
                signed = (zp.astype(np.int16) - (128 if zp.dtype == np.uint8 else 0)).astype(np.int8)
                out[n.output[0]] = (scale.reshape(()), signed.reshape(()), zp.reshape(()))
    return out


def _piece(model, q, ins: set[str], grids: dict):
    """The layer ending in ``q`` as a model of its own, with the file's Q/DQ boundaries kept around it:
    each int8 input arrives as float (``<name>__edgekit_float``) and is quantized on its own grid, the
    output is dequantized. Inside, onnxruntime then sees the pattern it sees in the whole file (a
    graph input or output of int8 would stop its s8->u8 rewrite, and with it the integer kernel)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    piece = onnx.utils.Extractor(model).extract_model(sorted(ins), [q.output[0]])
    g, out = piece.graph, q.output[0]
    nodes, inputs = [], []
    for vi in g.input:
        if vi.name not in grids:
            inputs.append(helper.make_tensor_value_info(f"{vi.name}{_FLOAT}", vi.type.tensor_type.elem_type, None))
            nodes.append(helper.make_node("Identity", [f"{vi.name}{_FLOAT}"], [vi.name]))
            continue
        inputs.append(helper.make_tensor_value_info(f"{vi.name}{_FLOAT}", TensorProto.FLOAT, None))
        nodes.append(helper.make_node("QuantizeLinear", [f"{vi.name}{_FLOAT}", f"{vi.name}__s", f"{vi.name}__z"], [vi.name]))
    for name in [*(vi.name for vi in g.input if vi.name in grids), out]:
        g.initializer.extend([numpy_helper.from_array(grids[name][0], f"{name}__s"), numpy_helper.from_array(grids[name][2], f"{name}__z")])
    nodes = [*nodes, *g.node, helper.make_node("DequantizeLinear", [out, f"{out}__s", f"{out}__z"], [f"{out}{_FLOAT}"])]
    del g.node[:], g.input[:], g.output[:]
    g.node.extend(nodes)
    g.input.extend(inputs)
    g.output.append(helper.make_tensor_value_info(f"{out}{_FLOAT}", TensorProto.FLOAT, None))
    return piece


def _dequantize(q: np.ndarray, grid) -> np.ndarray:
    scale, zp = grid[:2]
    return ((q.astype(np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)


def _quantize(x: np.ndarray, grid) -> np.ndarray:
    scale, zp = grid[:2]
    return np.clip(np.round(x / np.float32(scale)) + int(zp), -128, 127).astype(np.int8)


def _layer_inputs(model, q) -> set[str]:
    """The tensors the layer ending in QuantizeLinear ``q`` reads: earlier QuantizeLinear outputs and
    graph inputs reached backwards from its input (weights and constants come with the piece)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {t.name for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    stack, seen, inputs = [q.input[0]], set(), set()
    while stack:
        t = stack.pop()
        if not t or t in seen or t in constants:
            continue
        seen.add(t)
        node = producers.get(t)
        if t in graph_inputs or (node is not None and node.op_type == "QuantizeLinear"):
            inputs.add(t)
        elif node is not None:
            stack.extend(node.input)
    return inputs


def _compile(piece):
    """(onnxruntime session of one layer, compiled as the runner compiles: all optimizations, 1 thread;
    the compute kernel it fused the layer into, read back from the optimized copy it writes)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-onnx-layer-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # not its warning on serializing an optimized model
        opts.optimized_model_filepath = str(Path(tmp) / "piece.onnx")
        session = ort.InferenceSession(piece.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    compute = [op for op in ops if op not in ("QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Identity")]
    return session, compute[-1] if compute else "QuantizeLinear"


def _op_of(model, q) -> str:
    """The file's op whose output ``q`` quantizes."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(q.input[0])
    return node.op_type if node is not None else "input"
