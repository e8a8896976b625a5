"""The static check of a ``.mlpackage``: everything a host without Core ML can establish about it.

The package may come from an untrusted bundle: nothing here runs it or hands it to a native loader.
Manifest.json is read as JSON, model.mlmodel is parsed as protobuf (coremltools' generated classes),
and the weight file is read only at the blob headers the program names. Checks (all collected,
then raised at once as E-ARTIFACT-CORRUPT; the findings are returned for ``meta["static_check"]``):

1. layout: Manifest.json names a root model inside the package; the package holds exactly the
   artifact's hashed files, no symlinks;
2. the spec loads, is an ML Program (specification version >= 7, iOS 16) with a ``main`` function;
3. inputs and outputs: the ModelSpec's names in order, fixed shapes equal to the ModelSpec's,
   dtypes float32 (int64/int32 token ids: int32), the program's function agrees with the description;
4. weight precision: every conv/linear weight is a float32 constant (fp32), a float16 constant (fp16)
   or int8 data behind a constexpr dequantize op (dynamic); no stored tensor of the other float type;
5. weight file: its header counts exactly the blobs the program names, each blob's header has the
   sentinel, dtype and byte size its tensor declares and lies inside the file, nothing trails them.
"""
from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path, PurePosixPath

from edgekit.errors import UserError

MAX_PACKAGE_MANIFEST = 1 << 20
MAX_SPEC_BYTES = 256 << 20
MIN_SPEC_VERSION = 7  # iOS 16 / macOS 13: ML Program with constexpr ops
# ModelSpec dtype -> the dtype the model description must declare
DESC_DTYPES = {"float32": "FLOAT32", "float16": "FLOAT16", "int64": "INT32", "int32": "INT32"}
WEIGHT_INPUTS = {"conv": ("weight",), "conv_transpose": ("weight",), "linear": ("weight",)}
INT8_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
# the precision -> the dtype every conv/linear weight must have, the float dtype no stored tensor may have
RULES = {"fp32": ("FLOAT32", "FLOAT16"), "fp16": ("FLOAT16", "FLOAT32"), "dynamic": ("INT8", "FLOAT32")}
# MIL dtype -> (blob storage dtype code, bytes per element); measured on coremltools 9.0 packages
BLOB_DTYPES = {"FLOAT16": (1, 2), "FLOAT32": (2, 4), "UINT8": (3, 1), "INT8": (4, 1)}
BLOB_SENTINEL = 0xDEADBEEF
BLOB_ALIGN = 64


def static_check(root: Path, package: str, spec, precision: str, files: tuple[str, ...] | None = None) -> dict:
    """Check ``root/package`` against the ModelSpec and the precision; -> the findings (JSON-safe).
    Raises E-ARTIFACT-CORRUPT naming every failed check."""
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2, Model_pb2

    fails: list[str] = []
    pkg = Path(root) / package
    found: dict = {"package": package, "precision": precision, "checks": []}
    model_rel = _layout(Path(root), pkg, package, files, fails, found)
    model = None
    if model_rel is not None:
        model = _parse(pkg / model_rel, Model_pb2, fails)
    if model is None:
        _raise(package, fails)
    mil_name = MIL_pb2.DataType.Name
    arr_name = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name
    found["specification_version"] = model.specificationVersion
    kind = model.WhichOneof("Type")
    found["model_type"] = kind
    if kind != "mlProgram":
        fails.append(f"the model is a {kind}, not an mlProgram")
        _raise(package, fails)
    if model.specificationVersion < MIN_SPEC_VERSION:
        fails.append(f"specification version {model.specificationVersion} < {MIN_SPEC_VERSION} (iOS 16)")
    found["checks"].append("spec loads: mlProgram")
    _interface(model, spec, arr_name, fails, found)
    main = model.mlProgram.functions.get("main")
    if main is None or main.opset not in main.block_specializations:
        fails.append("the ML Program has no main function block")
        _raise(package, fails)
    found["opset"] = main.opset
    block = main.block_specializations[main.opset]
    names_in = [i.name for i in main.inputs]
    if names_in != [t.name for t in spec.inputs]:
        fails.append(f"the program's main function takes {names_in}, the ModelSpec {[t.name for t in spec.inputs]}")
    if sorted(block.outputs) != sorted(o.name for o in spec.outputs):
        fails.append(f"the program returns {list(block.outputs)}, the ModelSpec names {[o.name for o in spec.outputs]}")
    ops = list(_walk(block))
    found["ops"] = dict(sorted(Counter(op.type for op in ops).items()))
    _weights(ops, precision, mil_name, fails, found)
    _blobs(pkg / model_rel, ops, mil_name, fails, found)
    found["package_bytes"] = sum(p.stat().st_size for p in pkg.rglob("*") if p.is_file() and not p.is_symlink())
    if fails:
        _raise(package, fails)
    return found


def _raise(package: str, fails: list[str]):
    raise UserError("E-ARTIFACT-CORRUPT", f"{package} fails the static check: {'; '.join(fails)}",
                    "re-export the bundle (a package must match its ModelSpec and precision)")


def _inside(base: Path, rel) -> Path | None:
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "~")) or "\\" in rel or "\x00" in rel:
        return None
    if any(part in ("..", "") for part in PurePosixPath(rel).parts):
        return None
    return base / rel


def _layout(root: Path, pkg: Path, package: str, files, fails: list[str], found: dict) -> str | None:
    """The root model's path inside the package (``Data/...``), or None (with the reason in fails)."""
    if pkg.is_symlink() or not pkg.is_dir():
        fails.append("the package folder is missing (or a symlink)")
        return None
    on_disk, links = set(), []
    for p in pkg.rglob("*"):
        if p.is_symlink():
            links.append(p.relative_to(root).as_posix())
        elif p.is_file():
            on_disk.add(p.relative_to(root).as_posix())
    if links:
        fails.append(f"symlinks inside the package: {', '.join(sorted(links)[:5])}")
    if files is not None:
        extra, missing = sorted(on_disk - set(files)), sorted(set(files) - on_disk)
        if extra:
            fails.append(f"files the manifest does not hash: {', '.join(extra[:5])}")
        if missing:
            fails.append(f"hashed files missing: {', '.join(missing[:5])}")
    found["files"] = len(on_disk)
    manifest = pkg / "Manifest.json"
    if not manifest.is_file() or manifest.is_symlink() or manifest.stat().st_size > MAX_PACKAGE_MANIFEST:
        fails.append("Manifest.json is missing, a symlink or too large")
        return None
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
        entry = doc["itemInfoEntries"][doc["rootModelIdentifier"]]
        rel = "Data/" + entry["path"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        fails.append(f"Manifest.json does not name a root model: {type(exc).__name__}: {str(exc)[:120]}")
        return None
    if _inside(pkg, rel) is None or not (pkg / rel).is_file() or (pkg / rel).is_symlink():
        fails.append(f"Manifest.json's root model {rel!r:.120} is not a file inside the package")
        return None
    found["checks"].append("package layout")
    return rel


def _parse(path: Path, Model_pb2, fails: list[str]):
    if path.stat().st_size > MAX_SPEC_BYTES:
        fails.append(f"{path.name} is larger than {MAX_SPEC_BYTES >> 20} MiB")
        return None
    model = Model_pb2.Model()
    try:
        model.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends: a damaged file
        fails.append(f"{path.name} does not parse as a Core ML spec: {type(exc).__name__}: {str(exc)[:120]}")
        return None
    return model


def _interface(model, spec, arr_name, fails: list[str], found: dict) -> None:
    """Inputs/outputs of the model description against the ModelSpec."""
    desc = model.description
    for kind, got, want in (("input", desc.input, spec.inputs), ("output", desc.output, spec.outputs)):
        described = []
        for f in got:
            arr = f.type.multiArrayType if f.type.WhichOneof("Type") == "multiArrayType" else None
            described.append({"name": f.name, "shape": list(arr.shape) if arr else None,
                              "dtype": arr_name(arr.dataType) if arr else f.type.WhichOneof("Type")})
            if arr is not None and arr.WhichOneof("ShapeFlexibility"):
                fails.append(f"{kind} {f.name!r} has a flexible shape; the ModelSpec's is fixed")
        found[f"{kind}s"] = described
        names = [d["name"] for d in described]
        if names != [t.name for t in want]:
            fails.append(f"{kind} names {names} differ from the ModelSpec's {[t.name for t in want]}")
            continue
        for d, t in zip(described, want):
            expect = "FLOAT32" if kind == "output" else DESC_DTYPES.get(t.dtype)
            if d["dtype"] != expect:
                fails.append(f"{kind} {t.name!r} is {d['dtype']}, expected {expect} (ModelSpec {t.dtype})")
            if d["shape"] is not None and d["shape"] and d["shape"] != list(t.shape):  # outputs may leave it to the program
                fails.append(f"{kind} {t.name!r} has shape {d['shape']}, the ModelSpec {list(t.shape)}")
            if kind == "input" and not d["shape"]:
                fails.append(f"input {t.name!r} declares no shape")
    found["checks"].append("inputs/outputs match the ModelSpec")


def _walk(block):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def _weights(ops, precision: str, mil_name, fails: list[str], found: dict) -> None:
    """The dtype of every conv/linear weight, by the op that produces it."""
    producer = {out.name: op for op in ops for out in op.outputs}
    by_dtype, wrong, int8_ops, weight_ops = Counter(), [], 0, 0
    for op in ops:
        for key in WEIGHT_INPUTS.get(op.type, ()):
            arg = op.inputs.get(key)
            src = producer.get(arg.arguments[0].name) if arg is not None and arg.arguments else None
            if src is None or not (src.type == "const" or src.type.startswith("constexpr_")):
                continue  # an activation, not a stored weight
            weight_ops += 1
            if src.type in INT8_OPS:
                data = src.attributes.get("quantized_data") or src.attributes.get("data")
                dtype = mil_name(data.type.tensorType.dataType) if data is not None else "?"
            elif src.type == "const":
                dtype = mil_name(src.outputs[0].type.tensorType.dataType)
            else:
                dtype = src.type  # another compression (palettized, sparse): not what edgekit wrote
            by_dtype[dtype] += 1
            if dtype != RULES[precision][0]:
                wrong.append(f"{op.type} {_op_name(op)}: {dtype}")
    int8_ops = sum(op.type in INT8_OPS for op in ops)
    stored = Counter()
    for op in ops:
        for name, v in op.attributes.items():
            if v.WhichOneof("value") == "blobFileValue":
                stored[mil_name(v.type.tensorType.dataType)] += _elements(v) or 0
    found["weights"] = {"weight_ops": weight_ops, "weight_tensors_by_dtype": dict(sorted(by_dtype.items())),
                        "int8_ops": int8_ops, "stored_elements_by_dtype": dict(sorted(stored.items()))}
    want, other = RULES[precision]
    before = len(fails)
    if wrong:
        fails.append(f"{len(wrong)} of {weight_ops} conv/linear weights are not {want} for {precision}: {', '.join(wrong[:5])}")
    if precision == "dynamic" and not int8_ops:
        fails.append("no int8 weights (no constexpr dequantize op) in a dynamic (weight-only int8) package")
    if precision != "dynamic" and int8_ops:
        fails.append(f"{int8_ops} int8 constexpr ops in an {precision} package")
    if stored.get(other):
        fails.append(f"{stored[other]} {other} weight elements stored in an {precision} package")
    if len(fails) == before:
        found["checks"].append(f"conv/linear weights are {want}")


def _op_name(op) -> str:
    v = op.attributes.get("name")
    return v.immediateValue.tensor.strings.values[0] if v is not None and v.immediateValue.tensor.strings.values else "?"


def _elements(value) -> int | None:
    dims = value.type.tensorType.dimensions
    if any(d.WhichOneof("dimension") != "constant" for d in dims):
        return None
    n = 1
    for d in dims:
        n *= d.constant.size
    return n


def _blobs(model_path: Path, ops, mil_name, fails: list[str], found: dict) -> None:
    """Each weight-file blob the program names: header sentinel, dtype, size, inside the file."""
    refs: dict[str, dict[int, tuple[str, int | None]]] = {}
    for op in ops:
        for v in op.attributes.values():
            if v.WhichOneof("value") == "blobFileValue":
                refs.setdefault(v.blobFileValue.fileName, {})[v.blobFileValue.offset] = (mil_name(v.type.tensorType.dataType), _elements(v))
    report, before = {}, len(fails)
    for name, blobs in refs.items():
        rel = name.removeprefix("@model_path/") if name.startswith("@model_path/") else None
        path = _inside(model_path.parent, rel)
        if path is None or not path.is_file() or path.is_symlink():
            fails.append(f"weight file {name!r:.120} is not a file inside the package")
            continue
        size = path.stat().st_size
        bad, end = [], BLOB_ALIGN
        with open(path, "rb") as f:
            head = f.read(8)
            count, version = struct.unpack("<II", head) if len(head) == 8 else (-1, -1)
            for offset, (dtype, elements) in sorted(blobs.items()):
                f.seek(offset)
                meta = f.read(24)
                if offset < BLOB_ALIGN or len(meta) < 24:
                    bad.append(f"blob at {offset}: outside the file")
                    continue
                sentinel, code, nbytes, data = struct.unpack("<IIQQ", meta)
                expect = BLOB_DTYPES.get(dtype)
                if sentinel != BLOB_SENTINEL:
                    bad.append(f"blob at {offset}: no blob header")
                elif expect and code != expect[0]:
                    bad.append(f"blob at {offset}: stored dtype code {code}, the program says {dtype}")
                elif expect and elements is not None and nbytes != elements * expect[1]:
                    bad.append(f"blob at {offset}: {nbytes} bytes for {elements} {dtype} elements")
                elif data < offset + 24 or data + nbytes > size:
                    bad.append(f"blob at {offset}: data [{data}, {data + nbytes}) outside the file ({size} bytes)")
                end = max(end, data + nbytes)
        if count != len(blobs):
            bad.append(f"the header counts {count} blobs, the program names {len(blobs)}")
        if size > -(-end // BLOB_ALIGN) * BLOB_ALIGN:
            bad.append(f"{size - end} bytes after the last blob")
        fails.extend(f"{path.name}: {b}" for b in bad[:8])
        report[rel] = {"bytes": size, "blobs": len(blobs), "format_version": version}
    found["weight_files"] = report
    if refs and len(fails) == before:
        found["checks"].append("weight file holds exactly the named blobs")
