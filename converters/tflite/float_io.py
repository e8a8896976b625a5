"""Float model I/O for an INT8 ``.tflite``: a pure-Python flatbuffer rewrite.

litert-torch 0.10 writes full-INT8 files whose graph inputs and outputs are int8 tensors and has no
switch for float I/O without TensorFlow. ``add_float_io`` edits the flatbuffer instead: for every
int8/uint8 input of the primary subgraph a new float32 tensor becomes the graph input and a QUANTIZE
op (float32 -> the old int8 tensor, whose scale and zero point stay as they are) is put first; for
every int8/uint8 output a DEQUANTIZE op (int8 -> a new float32 tensor) is put last and the float
tensor becomes the output. The SignatureDefs of the primary subgraph keep their names and point at
the new tensors; the float tensors take the old tensor names (the int8 ones get ``_int8``), so apps
and runners that look tensors up by signature name or tensor name need no change. Everything else
(the int8 graph, buffers, metadata, other subgraphs) is written back as it was, so the file computes
exactly dequantize(int8 file(quantize(x))) with the runtime's own QUANTIZE/DEQUANTIZE kernels.

Only the TFLite flatbuffer schema module (generated Python shipped in ai-edge-litert, or in
litert-converter) and the ``flatbuffers`` runtime are used: no TensorFlow, no interpreter.

Facts this is built on (ai-edge-litert 2.3.0 schema, flatbuffers 25.12):
- op versions: QUANTIZE float->uint8 is v1, float->int8 v2; DEQUANTIZE uint8->float v1, int8 v2.
- the Python object API does not honour the schema's ``force_align: 16`` on ``Buffer.data``; this
  module packs buffer data 16-byte aligned itself (what TFLite's own writer does).
- models over 2 GB keep buffers outside the flatbuffer (``Buffer.offset``/``size``, absolute file
  offsets). They are re-laid out after the new flatbuffer, in their original order, 16-aligned.
"""
from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from edgekit.errors import UserError, missing_dependency

FILE_IDENTIFIER = b"TFL3"
_ALIGN = 16
_PLACEHOLDER_OFFSET = 1 << 62  # forces the offset field to be written, with its final width
_FLATBUFFER_LIMIT = 2**31 - 1


def _schema():
    """The generated TFLite schema module (object API); ai-edge-litert's copy first."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from litert_converter import schema_py_generated as schema
        except ImportError:
            raise missing_dependency("tflite", "ai_edge_litert", "tflite") from None
    return schema


def _type_names(schema) -> dict[int, str]:
    return {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


class _AlignedBuffer:
    """Stands in for a ``BufferT`` when packing: data 16-byte aligned, external offset kept."""

    def __init__(self, schema, data, offset: int, size: int):
        self.schema, self.data, self.offset, self.size = schema, data, offset, size

    def Pack(self, builder):  # noqa: N802 (the object API's method name)
        s = self.schema
        vec = None
        if self.data is not None:
            payload = np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), _ALIGN)
            builder.head -= len(payload)
            builder.Bytes[builder.head:builder.head + len(payload)] = payload
            vec = builder.EndVector()
        s.BufferStart(builder)
        if vec is not None:
            s.BufferAddData(builder, vec)
        s.BufferAddOffset(builder, self.offset)
        s.BufferAddSize(builder, self.size)
        return s.BufferEnd(builder)


def _opcode_index(schema, model, builtin: int, version: int) -> int:
    """Index of the operator code ``builtin`` (added if absent; its version raised if too low)."""
    for k, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and not code.customCode:
            code.version = max(code.version, version)
            return k
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    model.operatorCodes = list(model.operatorCodes or []) + [code]
    return len(model.operatorCodes) - 1


def _per_tensor_qparams(tensor, where: str, path: Path) -> tuple[float, int]:
    q = tensor.quantization
    scale = [] if q is None or q.scale is None else list(np.atleast_1d(q.scale))
    zp = [0] if q is None or q.zeroPoint is None else list(np.atleast_1d(q.zeroPoint))
    if len(scale) != 1 or len(zp) != 1:
        raise UserError("E-ARTIFACT-CORRUPT",
                        f"{path.name}: the 8-bit {where} tensor {_text(tensor.name)!r} has {len(scale)} scales "
                        "(float I/O needs one scale and zero point per model input/output)",
                        "export with per-tensor quantized model inputs/outputs, or keep the recipe's io='int8'")
    return float(scale[0]), int(zp[0])


def _float_twin(schema, model, tensor):
    """A float32 tensor of the same shape and name, with its own empty buffer."""
    twin = schema.TensorT()
    twin.shape = None if tensor.shape is None else np.array(tensor.shape, dtype=np.int32)
    twin.shapeSignature = None if tensor.shapeSignature is None else np.array(tensor.shapeSignature, dtype=np.int32)
    twin.hasRank = tensor.hasRank
    twin.type = schema.TensorType.FLOAT32
    twin.name = tensor.name
    model.buffers.append(schema.BufferT())
    twin.buffer = len(model.buffers) - 1
    tensor.name = _text(tensor.name) + "_int8"
    return twin


def _rewrite(schema, model, path: Path) -> dict:
    """Edit the unpacked model in place; return what changed."""
    names = _type_names(schema)
    eight_bit = {schema.TensorType.INT8: 2, schema.TensorType.UINT8: 1}  # dtype -> QUANTIZE/DEQUANTIZE version
    graph = model.subgraphs[0]
    sig_names = {}
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for kind, maps in (("input", sig.inputs), ("output", sig.outputs)):
                for m in maps or []:
                    sig_names.setdefault((kind, m.tensorIndex), _text(m.name))
    changed = {"inputs": [], "outputs": []}
    unchanged = []
    remap = {"input": {}, "output": {}}
    front, back = [], []
    graph.inputs = np.array([] if graph.inputs is None else graph.inputs, dtype=np.int32)  # writable copies
    graph.outputs = np.array([] if graph.outputs is None else graph.outputs, dtype=np.int32)
    for kind, indices in (("input", graph.inputs), ("output", graph.outputs)):
        for pos, idx in enumerate(indices.tolist()):
            if idx in remap[kind]:  # the same tensor listed twice: one float twin serves both
                indices[pos] = remap[kind][idx]
                continue
            tensor = graph.tensors[idx]
            entry = {"signature_name": sig_names.get((kind, idx)), "tensor": _text(tensor.name),
                     "old_dtype": names.get(tensor.type, str(tensor.type))}
            if tensor.type not in eight_bit:
                unchanged.append({"kind": kind, **entry})
                continue
            scale, zp = _per_tensor_qparams(tensor, kind, path)
            version = eight_bit[tensor.type]
            twin = _float_twin(schema, model, tensor)
            graph.tensors.append(twin)
            new = len(graph.tensors) - 1
            op = schema.OperatorT()
            if kind == "input":
                op.opcodeIndex = _opcode_index(schema, model, schema.BuiltinOperator.QUANTIZE, version)
                op.inputs, op.outputs = np.array([new], np.int32), np.array([idx], np.int32)
                front.append(op)
            else:
                op.opcodeIndex = _opcode_index(schema, model, schema.BuiltinOperator.DEQUANTIZE, version)
                op.inputs, op.outputs = np.array([idx], np.int32), np.array([new], np.int32)
                back.append(op)
            indices[pos] = new
            remap[kind][idx] = new
            changed[kind + "s"].append({**entry, "int8_tensor": _text(tensor.name), "scale": scale, "zero_point": zp})
    graph.operators = front + list(graph.operators or []) + back
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex == 0:
            for kind, maps in (("input", sig.inputs), ("output", sig.outputs)):
                for m in maps or []:
                    m.tensorIndex = remap[kind].get(m.tensorIndex, m.tensorIndex)
    return {**changed, "unchanged": unchanged}


def _pack(schema, model, raw: bytes) -> bytes:
    """Serialise the model: aligned buffer data; external buffers appended after the flatbuffer."""
    import flatbuffers

    external = []  # (index, bytes) in their original file order
    packed = []
    for k, b in enumerate(model.buffers or []):
        if b.offset == 1 and b.size:  # the converters' "not yet written" placeholder
            raise UserError("E-ARTIFACT-CORRUPT", f"buffer {k} of the model was never written (offset placeholder)",
                            "re-export the model; the file is incomplete")
        if b.offset > 1:
            if b.offset + b.size > len(raw):
                raise UserError("E-ARTIFACT-CORRUPT", f"buffer {k} points past the end of the file",
                                "re-export the model; the file is truncated")
            external.append((k, raw[b.offset:b.offset + b.size]))
            packed.append(_AlignedBuffer(schema, None, _PLACEHOLDER_OFFSET, b.size))
        else:
            packed.append(_AlignedBuffer(schema, b.data, b.offset, b.size))
    original, model.buffers = model.buffers, packed

    def build() -> bytes:
        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    try:
        head = build()
        if external:
            # offsets are absolute; the offset fields are fixed-width, so the flatbuffer keeps its size
            at = _round_up(len(head))
            for k, data in sorted(external, key=lambda e: original[e[0]].offset):
                packed[k].offset = at
                at = _round_up(at + len(data))
            again = build()
            if len(again) != len(head):
                raise RuntimeError("flatbuffer size changed when writing external buffer offsets")
            head = again
    finally:
        model.buffers = original
    if len(head) > _FLATBUFFER_LIMIT:
        raise UserError("E-EXPORT-FAILED", f"the rewritten flatbuffer is {len(head)} bytes, over the 2 GB limit",
                        "keep the recipe's io='int8' for this model")
    if not external:
        return head
    out = bytearray(head)
    for k, data in sorted(external, key=lambda e: packed[e[0]].offset):
        out.extend(b"\0" * (packed[k].offset - len(out)))
        out.extend(data)
    return bytes(out)


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _load(schema, raw: bytes, path: Path):
    if len(raw) < 8 or not schema.Model.ModelBufferHasIdentifier(raw, 0):
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} is not a TFLite flatbuffer (no 'TFL3' identifier)",
                        "pass a .tflite file written by a TFLite converter")
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))
    except (IndexError, ValueError, UnicodeDecodeError) as exc:  # a truncated table or vector
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} cannot be read as a TFLite model ({exc})",
                        "re-export the model; the file is truncated or corrupt") from exc
    if not model.subgraphs:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} has no subgraph", "re-export the model")
    return model


def _write(dst: Path, data: bytes, mode: int) -> None:
    from edgekit.atomic import atomic_file

    with atomic_file(dst, mode) as f:
        f.write(data)


def add_float_io(src: Path, dst: Path) -> dict:
    """Write ``dst``: ``src`` with float32 graph inputs/outputs in place of its int8/uint8 ones.

    Returns ``{"changed": bool, "inputs": [...], "outputs": [...], "unchanged": [...],
    "bytes_before": n, "bytes_after": n}``; each changed entry names the signature name, the tensor,
    the old dtype and its scale/zero point; ``unchanged`` lists the I/O left alone (e.g. int32 token
    ids, float tensors). A file with no 8-bit I/O is copied byte for byte (``changed`` False).
    ``src`` and ``dst`` may be the same path (the file is replaced atomically)."""
    src, dst = Path(src), Path(dst)
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise UserError("E-ARTIFACT-CORRUPT", f"cannot read {src} ({exc.strerror})", "pass an existing .tflite file") from exc
    schema = _schema()
    model = _load(schema, raw, src)
    result = _rewrite(schema, model, src)
    changed = bool(result["inputs"] or result["outputs"])
    data = _pack(schema, model, raw) if changed else raw
    if changed or src.resolve() != dst.resolve():
        _write(dst, data, stat.S_IMODE(src.stat().st_mode))
    return {"changed": changed, **result, "bytes_before": len(raw), "bytes_after": len(data)}
