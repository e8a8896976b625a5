"""Read a .tflite flatbuffer: every operator with its builtin name, version, tensor types and
quantization, per subgraph. No interpreter is involved: this is the file as a phone receives it.

The reader is the flatbuffers code LiteRT generates from the public TFLite schema
(``ai_edge_litert.schema_py_generated``, shipped inside the ai-edge-litert wheel), on top of the
``flatbuffers`` package; both come with edgekit's ``tflite`` extra and are imported lazily.

Schema facts used here: an OperatorCode holds the builtin code twice (``deprecated_builtin_code``,
an int8 kept for old readers, and ``builtin_code``, an int32 added when codes passed 127); the real
code is the larger of the two. Buffer 0 is the empty sentinel: a tensor whose buffer has data (or a
non-zero offset into the file's external data area) is a constant.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from edgekit.errors import UserError, missing_dependency

_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    dtype: str  # schema TensorType name in lower case: "float32", "int8", ...
    shape: tuple[int, ...]
    constant: bool
    scales: int = 0  # number of quantization scales: 0 none, 1 per-tensor, >1 per-channel
    zero_points: tuple[int, ...] = ()  # first few zero points (per-tensor: one)
    scale: float | None = None  # the first scale
    quantized_dimension: int = 0

    @property
    def quantization(self) -> str:
        if self.scales == 0:
            return "none"
        return "per-tensor" if self.scales == 1 else f"per-channel(axis {self.quantized_dimension}, {self.scales})"

    def label(self) -> str:
        q = "" if self.scales == 0 else f" q:{self.quantization}"
        return f"{self.dtype}{list(self.shape)}{' const' if self.constant else ''}{q}"


@dataclass(frozen=True)
class OpInfo:
    index: int  # position in the subgraph's operator list (= execution order, = interpreter node id)
    builtin: str  # "CONV_2D", or "CUSTOM:<name>"
    version: int
    inputs: tuple[int, ...]  # tensor indices; -1 = optional input left out
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class SubgraphInfo:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    ops: tuple[OpInfo, ...]
    tensors: tuple[TensorInfo, ...]

    def tensor(self, i: int) -> TensorInfo | None:
        return self.tensors[i] if 0 <= i < len(self.tensors) else None

    def op_inputs(self, op: OpInfo) -> list[TensorInfo]:
        return [self.tensors[i] for i in op.inputs if i >= 0]

    def op_outputs(self, op: OpInfo) -> list[TensorInfo]:
        return [self.tensors[i] for i in op.outputs if i >= 0]


@dataclass(frozen=True)
class TFLiteModel:
    path: str
    schema_version: int
    subgraphs: tuple[SubgraphInfo, ...]

    @property
    def main(self) -> SubgraphInfo:
        return self.subgraphs[0]

    def to_dict(self) -> dict:
        out = []
        for sg in self.subgraphs:
            ops = []
            for op in sg.ops:
                ops.append({"index": op.index, "op": op.builtin, "version": op.version,
                            "inputs": [_tensor_dict(t) for t in sg.op_inputs(op)],
                            "outputs": [_tensor_dict(t) for t in sg.op_outputs(op)]})
            out.append({"index": sg.index, "name": sg.name, "ops": ops,
                        "inputs": [_tensor_dict(sg.tensors[i]) for i in sg.inputs],
                        "outputs": [_tensor_dict(sg.tensors[i]) for i in sg.outputs]})
        return {"schema_version": self.schema_version, "subgraphs": out}


def _tensor_dict(t: TensorInfo) -> dict:
    d = asdict(t)
    d["shape"] = list(t.shape)
    d["zero_points"] = list(t.zero_points)
    d["quantization"] = t.quantization
    return d


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise missing_dependency("tflite", "ai_edge_litert", "tflite") from None
    return schema


@lru_cache(maxsize=1)
def _enum_names() -> tuple[dict[int, str], dict[int, str]]:
    schema = _schema()

    def names(cls) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}

    return names(schema.BuiltinOperator), {k: v.lower() for k, v in names(schema.TensorType).items()}


def read_tflite(path: Path) -> TFLiteModel:
    """Parse a .tflite file; a file that is not one is E-ARTIFACT-CORRUPT."""
    path = Path(path)
    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "pass the path of an exported .tflite")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != _IDENTIFIER:
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} is not a TFLite flatbuffer (no 'TFL3' identifier)",
                        "re-export the file; it is truncated or of another format")
    schema = _schema()
    try:
        return _parse(schema, buf, str(path))
    except (IndexError, ValueError, TypeError, AttributeError) as exc:  # out-of-range offsets of a damaged file
        raise UserError("E-ARTIFACT-CORRUPT", f"{path.name} cannot be parsed as a TFLite model ({type(exc).__name__})",
                        "re-export the file; it is truncated or corrupt") from exc


def _parse(schema, buf: bytes, path: str) -> TFLiteModel:
    ops_by_code, types = _enum_names()
    model = schema.Model.GetRootAs(buf, 0)
    codes = []
    for j in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(j)
        code = max(int(oc.BuiltinCode()), int(oc.DeprecatedBuiltinCode()))
        name = ops_by_code.get(code, f"BUILTIN_{code}")
        if name == "CUSTOM":
            custom = oc.CustomCode()
            name = f"CUSTOM:{custom.decode() if custom else '?'}"
        codes.append((name, int(oc.Version())))
    constant_buffers = set()
    for j in range(model.BuffersLength()):
        b = model.Buffers(j)
        if j > 0 and (b.DataLength() > 0 or b.Offset() > 1):
            constant_buffers.add(j)
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = tuple(_tensor(sg.Tensors(i), i, types, constant_buffers) for i in range(sg.TensorsLength()))
        ops = []
        for k in range(sg.OperatorsLength()):
            op = sg.Operators(k)
            name, version = codes[op.OpcodeIndex()]
            ops.append(OpInfo(k, name, version,
                              tuple(int(op.Inputs(i)) for i in range(op.InputsLength())),
                              tuple(int(op.Outputs(i)) for i in range(op.OutputsLength()))))
        raw_name = sg.Name()
        subgraphs.append(SubgraphInfo(
            s, raw_name.decode() if raw_name else f"subgraph_{s}",
            tuple(int(sg.Inputs(i)) for i in range(sg.InputsLength())),
            tuple(int(sg.Outputs(i)) for i in range(sg.OutputsLength())),
            tuple(ops), tensors))
    if not subgraphs:
        raise ValueError("no subgraph")
    return TFLiteModel(path, int(model.Version()), tuple(subgraphs))


def _tensor(t, index: int, types: dict[int, str], constant_buffers: set[int]) -> TensorInfo:
    name = t.Name()
    shape = tuple(int(t.Shape(i)) for i in range(t.ShapeLength()))
    q = t.Quantization()
    scales, zps, scale, qdim = 0, (), None, 0
    if q is not None and q.ScaleLength() > 0:
        scales = q.ScaleLength()
        scale = float(q.Scale(0))
        zps = tuple(int(q.ZeroPoint(i)) for i in range(min(q.ZeroPointLength(), 4)))
        qdim = int(q.QuantizedDimension())
    return TensorInfo(index, name.decode() if name else f"t{index}", types.get(int(t.Type()), f"type{t.Type()}"),
                      shape, int(t.Buffer()) in constant_buffers, scales, zps, scale, qdim)
