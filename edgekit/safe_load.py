"""Reading untrusted bundle files (from pull requests) without running code from them.

Contract
--------
``load_program(path, *, what, extra_files=None) -> torch.export.ExportedProgram``
    Loads a ``.pt2`` written by ``torch.export.save``; executes nothing from the file. ``what`` names
    the file in messages; ``extra_files`` works like ``torch.export.load``'s (every extra file of the
    archive is stored into it). Raises ``UserError`` only:
    * ``E-BUNDLE-UNSAFE``: the file needs code execution to load, or calls an operator outside the
      allow-list (``PT2_NAMESPACES``, ``operator.getitem``, ``torch.cond``) or one of ``FILE_OPS``;
    * ``E-BUNDLE-INVALID``: missing, unreadable, not a ``torch.export.save`` archive, or corrupt.
``check_torchscript(path, *, what) -> list[str]``
    Inspects a TorchScript zip (``.ptl`` from ``_save_for_lite_interpreter``, ``.pt`` from
    ``torch.jit.save``) with ``zipfile`` and a restricted unpickler only (``torch.jit.load`` already
    runs ``__setstate__`` code). Returns the sorted operator names of its bytecode tables and its
    TorchScript source; raises ``E-BUNDLE-UNSAFE`` for an operator outside ``TS_NAMESPACES``, one of
    ``FILE_OPS``, a torchbind class outside ``TORCHBIND_CLASSES`` or an unexpected pickle global, and
    ``E-ARTIFACT-CORRUPT`` for anything that is not a readable TorchScript zip of bounded size.

Why a plain ``torch.export.load`` is not enough (torch 2.13, read from its source):
1. ``serde.serialize.deserialize_torch_artifact`` (sample inputs) retries a refused pickle with
   ``weights_only=False``; ``pt2_archive._package._load_state_dict/_load_constants`` load pickled
   payloads (``use_pickle``) with ``weights_only=False`` outright. ``torch.load`` lets the environment
   variable ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` override even an explicit ``weights_only=False``; it is
   the only switch torch offers, so ``_weights_only_torch_load`` sets it for the duration of the
   call (under a lock; another thread's ``torch.load`` meanwhile is forced weights-only too, which
   is stricter, never laxer).
2. Other payloads bypass ``torch.load`` entirely: ``constants/opaque_obj_*`` go to ``pickle.loads``,
   ``constants/custom_obj_*`` to the torchbind unpickler, ``data/aotinductor/`` is a compiled
   library that gets ``dlopen``-ed. These members are refused before torch sees the archive.
3. The graph JSON is not inert: ``deserialize_operator`` resolves node targets by ``getattr`` from
   the ``torch``/``operator``/``math`` modules (``torch.os.system`` resolves), sizes are parsed with
   ``sympy.sympify`` (which ``eval``s its string), and ``guards_code`` strings are ``exec``-ed by
   ``ExportedProgram.module()``. ``_check_graph_json`` checks targets, ``expr_str`` grammar, guards
   and input kinds *before* deserialization; ``_check_loaded_program`` re-checks the FX graphs
   (nested ones too) after it.
The checked bytes are the loaded bytes (the file is read once, into memory).
"""
from __future__ import annotations

import ast
import importlib
import io
import json
import logging
import os
import pickle
import re
import threading
import tokenize
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgekit.errors import UserError

if TYPE_CHECKING:
    import torch

# Operators that read or write files. Found by scanning torch._C._jit_get_all_schemas() (torch 2.13,
# torchao 0.18 loaded) for a str argument named like file/path/filename: aten::from_file(filename)
# maps a file into a tensor (shared=True writes back to it) and aten::save(items, filename) writes
# one. debugprims::load_tensor also reads a file, but its namespace is never allowed.
FILE_OPS = ("aten::from_file", "aten::save")

PT2_NAMESPACES = ("aten", "prims", "quantized_decomposed", "quantized", "torchao")
_PT2_HOPS = ("cond",)  # higher-order ops allowed in a .pt2 (their subgraphs are checked too)
_QUANT_NAMESPACES = {"quantized_decomposed", "torchao"}  # registered by importing torchao's PT2E
TS_NAMESPACES = ("aten", "prim", "quantized", "_quantized", "prepacked", "quantized_decomposed")
# torchbind classes of PyTorch Mobile's own packed weights (quantized::*, prepacked::* ops)
TORCHBIND_CLASSES = ("quantized.Conv2dPackedParamsBase", "quantized.Conv3dPackedParamsBase",
                     "quantized.LinearPackedParamsBase", "quantized.EmbeddingPackedParamsBase",
                     "xnnpack.Conv2dOpContext", "xnnpack.LinearOpContext", "xnnpack.TransposeConv2dOpContext")

MAX_MEMBER = 64 << 20  # a pickle, code or JSON member (uncompressed); also any compressed .pt2 member
MAX_SCANNED = 256 << 20  # all pickles and code of one TorchScript zip together
MAX_PT2 = 8 << 30  # a whole .pt2 (it is read into memory)
_MAX_MEMBERS = 100_000

_UNSAFE_FIX = "re-export the bundle with edgekit; never load this file outside edgekit's checks"
_INVALID_FIX = "pass a file saved with torch.export.save, or re-export the bundle"
_CORRUPT_FIX = "re-export the artifact (a TorchScript zip written by torch.jit.save or _save_for_lite_interpreter)"


def _unsafe(what: str, why: str) -> UserError:
    return UserError("E-BUNDLE-UNSAFE", f"{what} {why}", _UNSAFE_FIX)


# ---------------------------------------------------------------- zip reading (both formats)

def _open_zip(source, what: str, code: str, fix: str) -> tuple[zipfile.ZipFile, dict[str, zipfile.ZipInfo]]:
    """-> (zip, {name relative to the archive's single top folder: info}). torch's zip reader takes the
    top folder of the first entry and looks records up under it; members elsewhere or duplicate
    names (zipfile returns the last, torch may read the first) are refused."""
    try:
        zf = zipfile.ZipFile(source)
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UserError(code, f"{what} is not a readable zip archive ({type(exc).__name__}: {exc})", fix) from exc
    infos = zf.infolist()
    if not infos or len(infos) > _MAX_MEMBERS:
        raise UserError(code, f"{what} has {len(infos)} zip members", fix)
    top = infos[0].filename.split("/", 1)[0] + "/"
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if not info.filename.startswith(top) or info.filename[len(top):] in members:
            raise UserError(code, f"{what} has a stray or duplicate zip member {info.filename!r}", fix)
        members[info.filename[len(top):]] = info
    return zf, members


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, code: str, fix: str) -> bytes:
    if info.file_size > MAX_MEMBER:
        raise UserError(code, f"{what}: member {info.filename} claims {info.file_size} bytes (limit {MAX_MEMBER})", fix)
    try:
        with zf.open(info) as f:
            data = f.read(MAX_MEMBER + 1)
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, NotImplementedError) as exc:
        raise UserError(code, f"{what}: cannot read member {info.filename} ({type(exc).__name__}: {exc})", fix) from exc
    if len(data) > MAX_MEMBER:
        raise UserError(code, f"{what}: member {info.filename} is larger than {MAX_MEMBER} bytes", fix)
    return data


def _walk(obj: Any) -> Iterator[Any]:
    """Every value inside nested dicts/lists/tuples/unpickled placeholders (iterative: a deep nesting
    cannot overflow)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, _Placeholder):
            stack.extend(vars(item).values())


# ---------------------------------------------------------------- .pt2: checks before torch sees it

_PT2_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
              "models/model.json", "data/sample_inputs/model.pt",
              "data/weights/model_weights_config.json", "data/constants/model_constants_config.json"}
_PT2_PAYLOAD = re.compile(r"data/weights/weight_\d+|data/constants/tensor_\d+|extra/.+")
_PT2_CODE = re.compile(r"data/aotinductor/.*|data/constants/(custom|opaque)_obj_.*|.*\.(so|dll|dylib|pyd)")
_PAYLOAD_CONFIGS = {"data/weights/model_weights_config.json": re.compile(r"weight_\d+"),
                    "data/constants/model_constants_config.json": re.compile(r"tensor_\d+")}


def _read_pt2(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_PT2:
            raise UserError("E-BUNDLE-INVALID", f"{what} ({path}) is {size} bytes (limit {MAX_PT2})", _INVALID_FIX)
        return path.read_bytes()
    except OSError as exc:
        raise UserError("E-BUNDLE-INVALID", f"cannot read {what} ({path}): {exc.strerror or exc}",
                        _INVALID_FIX) from exc


def _check_pt2_members(members: dict[str, zipfile.ZipInfo], what: str) -> None:
    for name, info in members.items():
        if _PT2_CODE.fullmatch(name):
            raise _unsafe(what, f"needs code execution to load (member {name}: compiled code or a plain pickle)")
        if name not in _PT2_FIXED and not _PT2_PAYLOAD.fullmatch(name):
            raise UserError("E-BUNDLE-INVALID", f"{what} has an unexpected member {name}", _INVALID_FIX)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_MEMBER:
            raise UserError("E-BUNDLE-INVALID", f"{what}: compressed member {name} claims {info.file_size} bytes",
                            _INVALID_FIX)
    if "models/model.json" not in members:
        raise UserError("E-BUNDLE-INVALID", f"{what} has no models/model.json (not a torch.export.save file)",
                        _INVALID_FIX)


def _read_json(zf, members, name: str, what: str):
    raw = _read_member(zf, members[name], what, "E-BUNDLE-INVALID", _INVALID_FIX)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise UserError("E-BUNDLE-INVALID", f"{what}: {name} is not valid JSON ({exc})", _INVALID_FIX) from exc


def _check_payload_config(config, name: str, pattern: re.Pattern, what: str) -> None:
    """Each weight/constant must be a plain tensor file (weight_N, tensor_N): never a custom/opaque object."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UserError("E-BUNDLE-INVALID", f"{what}: {name} has no config table", _INVALID_FIX)
    for fqn, meta in entries.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path_name, str) or not pattern.fullmatch(path_name):
            raise _unsafe(what, f"needs code execution to load ({fqn} is stored as {path_name!r}, not a tensor)")


# Names sympy.sympify may see in an expr_str: shape symbols (s0, u3) and the functions torch's
# deserializer and printer use. No brackets, attributes or other names: nothing to eval (see _expr_problem).
_SYMPY_NAMES = {"FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
                "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
                "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
                "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
                "oo", "zoo", "nan", "True", "False", "floor", "ceiling", "sqrt"}
_EXPR_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%(),<>=!.']{0,4096}")  # ASCII only: Python NFKC-folds identifiers
_SYMBOL = re.compile(r"[a-z]+\d+")
# torch 2.13 writes dynamic sizes in sympy's srepr form: Mul(Integer(32), Symbol('s39', positive=True, integer=True))
_SREPR_NAMES = {"Symbol", "Integer", "Rational", "Float", "Mul", "Add", "Pow"}
_SYMBOL_FLAGS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero"}
_EXPR_NODES = (ast.Expression, ast.Call, ast.Name, ast.Load, ast.Constant, ast.keyword, ast.BinOp, ast.UnaryOp,
               ast.Compare, ast.BoolOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub,
               ast.UAdd, ast.Not, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.And, ast.Or)


def _expr_problem(expr) -> str | None:
    """What makes a serialized shape expression more than sympy arithmetic on shape symbols, or None.
    sympify eval-s it, so only calls of sympy's arithmetic by name, numbers, and symbol names (as
    names or as Symbol('s0', flag=True)) may appear: no attributes, subscripts, lambdas or other names."""
    if not isinstance(expr, str) or not _EXPR_CHARS.fullmatch(expr):
        return "characters outside a shape expression"
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return "not an expression"
    for node in ast.walk(tree):
        if not isinstance(node, _EXPR_NODES):
            return f"a {type(node).__name__}"
        if isinstance(node, ast.Name) and node.id not in _SYMPY_NAMES | _SREPR_NAMES and not _SYMBOL.fullmatch(node.id):
            return f"the name {node.id}"
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _SYMPY_NAMES | _SREPR_NAMES):
            return "a call of something other than sympy arithmetic"
        if isinstance(node, ast.keyword) and (node.arg not in _SYMBOL_FLAGS or not isinstance(node.value, ast.Constant)
                                              or node.value.value not in (True, False)):
            return f"the keyword {node.arg}"
        if isinstance(node, ast.Constant) and not (type(node.value) in (int, float, bool) or (
                isinstance(node.value, str) and _SYMBOL.fullmatch(node.value))):
            return f"the constant {str(node.value)[:20]!r}"
    strings = [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    symbol_args = [c.args[0] for c in ast.walk(tree) if isinstance(c, ast.Call) and c.func.id == "Symbol" and c.args]
    if any(s not in symbol_args for s in strings):
        return "a string outside Symbol('name')"
    return None


def _check_sym_expr(expr, what: str) -> None:
    if _expr_problem(expr) is not None:
        raise _unsafe(what, f"needs code execution to load (shape expression {str(expr)[:80]!r} would be eval-ed)")


def _target_op(target: str) -> tuple[str, str] | None:
    """'torch.ops.ns.op[.overload]' -> (ns, op); None for anything else."""
    m = re.fullmatch(r"torch\.ops\.(\w+)\.(\w+)(?:\.\w+)?", target)
    return (m.group(1), m.group(2)) if m else None


def _check_target(target, node: str, what: str) -> str | None:
    """Refuse a serialized call target outside the allow-list; -> its namespace (None for getitem)."""
    if target == "_operator.getitem":
        return None
    parsed = _target_op(target) if isinstance(target, str) else None
    if parsed and parsed[0] == "higher_order" and parsed[1] in _PT2_HOPS:
        return None
    if parsed and f"{parsed[0]}::{parsed[1]}" in FILE_OPS:
        raise _unsafe(what, f"calls the file operator {parsed[0]}::{parsed[1]} (node {node})")
    if not parsed or parsed[0] not in PT2_NAMESPACES:
        raise _unsafe(what, f"calls {str(target)[:120]!r} (node {node}), which is not an operator of "
                            f"{', '.join(PT2_NAMESPACES)}")
    return parsed[0]


_GRAPH_INPUT_KINDS = {"as_tensor", "as_sym_int", "as_int", "as_float", "as_bool", "as_none"}


def _check_graph_json(model, what: str) -> set[str]:
    """Checks of models/model.json before deserialization; -> the operator namespaces it uses."""
    if not isinstance(model, dict) or model.get("guards_code", []) != []:
        raise _unsafe(what, "needs code execution to load (guards_code is Python source that module() exec-s)")
    namespaces: set[str] = set()
    for item in _walk(model):
        if not isinstance(item, dict):
            continue
        if "target" in item:  # a graph node (the only schema type with a target), at any nesting depth
            namespaces.add(_check_target(item["target"], str(item.get("name"))[:80], what))
        if "as_operator" in item:  # an operator passed as an argument is resolved the same way
            namespaces.add(_check_target(item["as_operator"], "argument", what))
        if "expr_str" in item:
            _check_sym_expr(item["expr_str"], what)
        if "as_custom_obj" in item or item.get("custom_obj_values"):
            raise _unsafe(what, "needs code execution to load (it holds a torchbind/opaque custom object)")
        if "nodes" in item and "inputs" in item:  # a graph: a string input would be pasted into guard code
            kinds = {next(iter(i), None) if isinstance(i, dict) else None for i in item["inputs"] or []}
            if kinds - _GRAPH_INPUT_KINDS:
                raise _unsafe(what, f"has graph inputs of kinds {sorted(map(str, kinds - _GRAPH_INPUT_KINDS))}, "
                                    "which ExportedProgram.module() pastes into generated code")
    return namespaces - {None}


def _read_extra_files(zf, members, what: str) -> dict[str, str]:
    """The archive's extra/ files, decoded as torch.export.load does (its own copy is left unused:
    torch.export.load replaces an empty extra_files dict by a new one)."""
    extras = {}
    for name, info in members.items():
        if name.startswith("extra/"):
            raw = _read_member(zf, info, what, "E-BUNDLE-INVALID", _INVALID_FIX)
            try:
                extras[name[len("extra/"):]] = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError("E-BUNDLE-INVALID", f"{what}: {name} is not UTF-8 text", _INVALID_FIX) from exc
    return extras


def _precheck_pt2(data: bytes, what: str) -> tuple[set[str], dict[str, str]]:
    """Everything checkable from the archive bytes; -> (operator namespaces of the graph, extra files)."""
    zf, members = _open_zip(io.BytesIO(data), what, "E-BUNDLE-INVALID", _INVALID_FIX)
    with zf:
        _check_pt2_members(members, what)
        for name, pattern in _PAYLOAD_CONFIGS.items():
            if name in members:
                _check_payload_config(_read_json(zf, members, name, what), name, pattern, what)
        namespaces = _check_graph_json(_read_json(zf, members, "models/model.json", what), what)
        return namespaces, _read_extra_files(zf, members, what)


# ---------------------------------------------------------------- .pt2: the load itself

_ENV_LOCK = threading.Lock()
_FORCE, _FORCE_NO = "TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def _weights_only_torch_load():
    """Every torch.load in this thread and others is weights-only, even with weights_only=False
    (torch.serialization.load reads the variable on each call); the old environment is restored."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in (_FORCE, _FORCE_NO)}
        os.environ[_FORCE] = "1"
        os.environ.pop(_FORCE_NO, None)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class _ErrorCatcher(logging.Handler):
    """torch.export.load logs the real error of its first attempt, then raises a generic one."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record):
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _register_quant_ops(what: str) -> None:
    try:
        importlib.import_module("torchao.quantization.pt2e")  # registers the quantized_decomposed ops
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", f"{what} uses quantized_decomposed operators, which need the Python "
                        "module 'torchao'", "pip install -c constraints.txt 'edgekit[ptl]'") from exc


def _load_error(exc: Exception, logged: list[BaseException], what: str) -> UserError:
    """A failed torch.export.load -> E-BUNDLE-UNSAFE when weights-only loading refused a pickle."""
    cause = logged[-1] if logged else exc
    text = f"{exc}\n{cause}"
    if isinstance(exc, pickle.UnpicklingError) or "weights only load failed" in text.lower():
        found = re.search(r"GLOBAL (\S+) (?:was not an allowed|whose module)", text)
        detail = (f"a pickle calls {found.group(1)}" if found
                  else f"a pickle is refused by weights-only loading: {text[:200]}")
        return _unsafe(what, f"needs code execution to load ({detail})")
    reason = f"{type(cause).__name__}: {str(cause).strip()[:300]}"
    return UserError("E-BUNDLE-INVALID", f"cannot load {what}: {reason}", _INVALID_FIX)


def _load_weights_only(data: bytes, what: str) -> torch.export.ExportedProgram:
    import torch

    catcher, logger = _ErrorCatcher(), logging.getLogger("torch.export")
    logger.addHandler(catcher)
    try:
        with _weights_only_torch_load():
            return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch.export.load raises many types; none may escape as a traceback
        raise _load_error(exc, catcher.errors, what) from exc
    finally:
        logger.removeHandler(catcher)


# ---------------------------------------------------------------- .pt2: checks of the loaded program

def _callable_name(target) -> str:
    return getattr(target, "__qualname__", None) or type(target).__name__


def _check_node(node, what: str) -> None:
    import operator

    import torch

    if node.op in ("placeholder", "output", "get_attr"):
        return
    target = node.target
    if node.op == "call_function" and isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = target._schema.name if isinstance(target, torch._ops.OpOverload) else target._qualified_op_name
        if name in FILE_OPS:
            raise _unsafe(what, f"calls the file operator {name} (node {node.name})")
        if name.split("::")[0] in PT2_NAMESPACES:
            return
    elif node.op == "call_function" and (target is operator.getitem or (
            isinstance(target, torch._ops.HigherOrderOperator) and target.name() in _PT2_HOPS)):
        return
    raise _unsafe(what, f"node {node.name} ({node.op}) calls {_callable_name(target)!r}, which is not an "
                        f"operator of {', '.join(PT2_NAMESPACES)}")


def _check_example_inputs(program, what: str) -> None:
    """module() pastes input paths into generated guard code: only tensors under identifier keys."""
    import torch
    from torch.utils import _pytree as pytree

    if program.example_inputs is None:
        return
    for path, leaf in pytree.tree_flatten_with_path(program.example_inputs)[0]:
        keys_ok = all(not isinstance(k, pytree.MappingKey) or (isinstance(k.key, str) and k.key.isidentifier())
                      for k in path)
        if not keys_ok or not isinstance(leaf, torch.Tensor):
            raise UserError("E-BUNDLE-INVALID", f"{what}: its sample inputs hold {type(leaf).__name__} at "
                            f"{pytree.keystr(path)[:80]}, expected tensors", _INVALID_FIX)


def _check_loaded_program(program, what: str) -> None:
    import torch

    if program._guards_code:
        raise _unsafe(what, "needs code execution to load (guards_code is Python source that module() exec-s)")
    _check_example_inputs(program, what)
    for module in program.graph_module.modules():  # the root graph and every nested (cond branch) graph
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                _check_node(node, what)


def load_program(path: Path, *, what: str, extra_files: dict | None = None) -> torch.export.ExportedProgram:
    """Load a torch.export .pt2 without executing anything from it (see the module docstring)."""
    data = _read_pt2(Path(path), what)
    namespaces, extras = _precheck_pt2(data, what)
    if namespaces & _QUANT_NAMESPACES:
        _register_quant_ops(what)
    program = _load_weights_only(data, what)
    _check_loaded_program(program, what)
    if extra_files is not None:
        extra_files.update(extras)
    return program


# ---------------------------------------------------------------- TorchScript zips (.ptl / .pt)

# The globals TorchScript's own pickler writes (data.pkl, constants.pkl, bytecode.pkl, *.debug_pkl),
# seen in real fp32, static-INT8 and dynamic-INT8 .ptl files. They are never resolved: each becomes a
# placeholder class, so unpickling builds inert tuples and strings.
_TS_GLOBALS = {
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_qtensor"},
    "torch.jit._pickle": {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
                          "build_tensor_from_id", "restore_type_tag"},
    "torch": {"per_tensor_affine", "per_channel_affine", "per_tensor_symmetric", "per_channel_symmetric",
              "per_channel_affine_float_qparams",
              "device"},  # torch.zeros(shape) in a scripted forward records torch.device("cpu") (EdgeNeXt)
    "collections": {"OrderedDict"},
    "builtins": {"set"}, "__builtin__": {"set"},
}


class _Placeholder:
    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


def _torchbind_allowed(ns: str, cls: str) -> bool:
    return f"{ns}.{cls}" in TORCHBIND_CLASSES


def _ts_global_allowed(module: str, name: str) -> bool:
    if module.startswith("__torch__.torch.classes."):  # a torchbind class: its C++ __setstate__ runs at load
        return _torchbind_allowed(module[len("__torch__.torch.classes."):], name)
    if module == "__torch__" or module.startswith("__torch__."):  # a TorchScript class: its code is scanned
        return True
    if module == "torch" and re.fullmatch(r"[A-Za-z0-9]*Storage", name):
        return True
    return name in _TS_GLOBALS.get(module, ())


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, what: str, member: str):
        super().__init__(io.BytesIO(data))
        self.what, self.member = what, member

    def find_class(self, module, name):
        if not _ts_global_allowed(module, name):
            raise _unsafe(self.what, f"references {module}.{name} in {self.member}, which is not a TorchScript "
                                     "tensor, list builder or allowed torchbind class")
        return type(name, (_Placeholder,), {"global_name": f"{module}.{name}"})

    def persistent_load(self, pid):
        return _Placeholder(pid)


def _unpickle(data: bytes, what: str, member: str):
    try:
        return _TorchScriptUnpickler(data, what, member).load()
    except UserError:
        raise
    except Exception as exc:  # a malformed pickle raises many types
        raise UserError("E-ARTIFACT-CORRUPT", f"{what}: {member} is not a readable pickle "
                        f"({type(exc).__name__}: {str(exc)[:200]})", _CORRUPT_FIX) from exc


def _bytecode_ops(obj, what: str, member: str) -> set[str]:
    """Names in the lite interpreter's ("operators", ((name, overload, nargs), ...)) tables."""
    ops = set()
    for item in _walk(obj):
        if isinstance(item, tuple) and len(item) == 2 and item[0] == "operators":
            for entry in item[1] if isinstance(item[1], (tuple, list)) else [None]:
                if not isinstance(entry, (tuple, list)) or not entry or not isinstance(entry[0], str):
                    raise UserError("E-ARTIFACT-CORRUPT", f"{what}: malformed operator table in {member}", _CORRUPT_FIX)
                ops.add(entry[0])
    return ops


_CLASS_REF = re.compile(r"torch\.classes\.(\w+)\.(\w+)")


def _check_class_refs(strings, what: str, member: str) -> None:
    for text in strings:
        for ns, cls in _CLASS_REF.findall(text):
            if not _torchbind_allowed(ns, cls):
                raise _unsafe(what, f"uses the torchbind class {ns}.{cls} ({member}), which is not allowed")


def _dotted_chains(text: str) -> Iterator[list[str]]:
    """Each maximal `a.b.c` name chain in Python-syntax source (comments and strings skipped, line
    breaks inside brackets ignored); an attribute of an expression (`f(x).save`) yields ["", "save"]."""
    chain: list[str] = []
    prev = None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.NL, tokenize.COMMENT):
            continue
        if tok.type == tokenize.NAME and prev == "." and chain:
            chain.append(tok.string)
        elif tok.type == tokenize.NAME:
            if chain:
                yield chain
            chain = [tok.string] if prev != "." else ["", tok.string]
        elif not (tok.type == tokenize.OP and tok.string == "." and chain):
            if chain:
                yield chain
            chain = []
        prev = tok.string if tok.type == tokenize.OP else None
    if chain:
        yield chain


_NAMESPACE_HEADS = ((["__torch__", "torch", "classes"], "class", "{}.{}"), (["torch", "classes"], "class", "{}.{}"),
                    (["torch", "ops"], "op", "{}::{}"), (["ops"], "op", "{}::{}"))


def _chain_ref(chain: list[str]) -> tuple[str, str] | None:
    """How TorchScript's source importer resolves a name chain: torch.X (torch.autograd.X), math.X
    -> ("op", "aten::X"); ops.ns.X, torch.ops.ns.X -> ("op", "ns::X"); torch.classes.ns.C,
    __torch__.torch.classes.ns.C -> ("class", "ns.C"); None for other names. A chain that stops at a
    namespace (`getattr(torch, "from_file")`, `getattr(ops.aten, ...)`) -> ("namespace", chain)."""
    for head, kind, fmt in _NAMESPACE_HEADS:
        if chain[:len(head)] == head[:len(chain)]:
            rest = chain[len(head):]
            return (kind, fmt.format(*rest[:2])) if len(rest) >= 2 else ("namespace", ".".join(chain))
    if chain[0] in ("torch", "math"):
        return ("op", f"aten::{chain[-1]}") if len(chain) >= 2 else ("namespace", chain[0])
    return None


def _source_ops(text: str, what: str, member: str) -> set[str]:
    try:
        chains = list(_dotted_chains(text))
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise UserError("E-ARTIFACT-CORRUPT", f"{what}: {member} is not TorchScript source ({exc})",
                        _CORRUPT_FIX) from exc
    file_names = {op.split("::")[1]: op for op in FILE_OPS}
    for chain in chains:  # also method-call forms (`x.save(...)`): any use of the name
        for name in chain:
            if name in file_names:
                raise _unsafe(what, f"calls the file operator {file_names[name]} ({member})")
    refs = [ref for ref in map(_chain_ref, chains) if ref]
    for kind, name in refs:
        if kind == "namespace":
            raise _unsafe(what, f"uses the operator namespace {name} as a value ({member}): a dynamic lookup")
        if kind == "class" and not _torchbind_allowed(*name.split(".")):
            raise _unsafe(what, f"uses the torchbind class {name} ({member}), which is not allowed")
    return {name for kind, name in refs if kind == "op"}


def _check_ts_ops(ops: set[str], what: str) -> None:
    for op in sorted(ops):
        if op in FILE_OPS:
            raise _unsafe(what, f"calls the file operator {op}")
        if op.split("::")[0] not in TS_NAMESPACES or "::" not in op:
            raise _unsafe(what, f"calls the operator {op}, which is not in {', '.join(TS_NAMESPACES)}")


def _scan_member(zf, name: str, info, what: str) -> set[str]:
    """-> operator names used by one pickle or code member (checks its globals and class refs)."""
    data = _read_member(zf, info, what, "E-ARTIFACT-CORRUPT", _CORRUPT_FIX)
    if name.endswith(".py"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError("E-ARTIFACT-CORRUPT", f"{what}: {name} is not UTF-8 source", _CORRUPT_FIX) from exc
        return _source_ops(text, what, name)
    obj = _unpickle(data, what, name)
    _check_class_refs((s for s in _walk(obj) if isinstance(s, str)), what, name)
    return _bytecode_ops(obj, what, name)


def check_torchscript(path: Path, *, what: str) -> list[str]:
    """Statically check a TorchScript zip; -> sorted operator names (see the module docstring)."""
    zf, members = _open_zip(Path(path), what, "E-ARTIFACT-CORRUPT", _CORRUPT_FIX)
    with zf:
        scanned = {n: i for n, i in members.items()
                   if n.endswith((".pkl", ".debug_pkl")) or (n.startswith("code/") and n.endswith(".py"))}
        if "data.pkl" not in members or not any(n.startswith("code/") for n in scanned):
            raise UserError("E-ARTIFACT-CORRUPT", f"{what} is a zip but not a TorchScript archive "
                            "(no data.pkl and code/)", _CORRUPT_FIX)
        if sum(i.file_size for i in scanned.values()) > MAX_SCANNED:
            raise UserError("E-ARTIFACT-CORRUPT", f"{what}: its pickles and code exceed {MAX_SCANNED} bytes",
                            _CORRUPT_FIX)
        ops: set[str] = set()
        for name, info in sorted(scanned.items()):
            ops |= _scan_member(zf, name, info, what)
    _check_ts_ops(ops, what)
    return sorted(ops)
