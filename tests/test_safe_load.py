"""edgekit.safe_load: untrusted .pt2 / TorchScript files load (or are inspected) without running code.

Each attack test first shows that the attack is real (plain torch runs the payload, which only
touches a marker file inside tmp_path), then that safe_load refuses it and the marker stays absent.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks import Payload, ReadsFile, payload_pickle, rewrite_zip

from edgekit.errors import UserError
from edgekit.safe_load import FILE_OPS, check_torchscript, load_program

SPEC_KEY = "edgekit/spec.json"


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))




def edit_json(fn):
    def edit(data: bytes) -> bytes:
        obj = json.loads(data)
        fn(obj)
        return json.dumps(obj).encode()
    return edit


def refused(fn, code: str = "E-BUNDLE-UNSAFE") -> str:
    with pytest.raises(UserError) as info:
        fn()
    assert info.value.code == code, str(info.value)
    return str(info.value)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(saved .pt2, the float module, an input)."""
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 3, 8, 8)
    path = tmp_path_factory.mktemp("pt2") / "reference.pt2"
    program = torch.export.export(model, (x,), strict=False)
    torch.export.save(program, str(path), extra_files={SPEC_KEY: '{"name": "tiny"}'})
    return path, model, x


def test_a_real_program_loads_and_computes_the_same_outputs(tiny):
    path, model, x = tiny
    extra = {SPEC_KEY: ""}
    program = load_program(path, what="reference.pt2", extra_files=extra)
    assert json.loads(extra[SPEC_KEY]) == {"name": "tiny"}
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # set only during the load
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("where", ["sample inputs", "pickled weight"])
def test_a_reduce_pickle_is_refused_and_never_runs(tiny, tmp_path, where):
    path, _, _ = tiny
    marker = tmp_path / "pwned"
    if where == "sample inputs":  # torch retries this pickle with weights_only=False
        edits = {"data/sample_inputs/model.pt": lambda _: payload_pickle(marker)}
    else:  # torch loads use_pickle payloads with weights_only=False outright
        config = "data/weights/model_weights_config.json"
        weight = json.loads(zipfile.ZipFile(path).read(f"reference/{config}"))["config"]["conv.weight"]["path_name"]

        def pickled(cfg):
            cfg["config"]["conv.weight"]["use_pickle"] = True
        edits = {config: edit_json(pickled), f"data/weights/{weight}": lambda _: payload_pickle(marker)}
    bad = rewrite_zip(path, tmp_path / "bad.pt2", edits)

    message = refused(lambda: load_program(bad, what="reference.pt2"))
    assert "reference.pt2" in message and "system" in message
    assert not marker.exists()
    with pytest.raises(Exception):  # the attack is real: plain torch.export.load runs the payload
        torch.export.load(str(bad))
    assert marker.exists()


def _first_size(model: dict, expr: str) -> None:
    values = model["graph_module"]["graph"]["tensor_values"]
    values[next(iter(values))]["sizes"][0] = {"as_expr": {"expr_str": expr, "hint": {"as_int": 2}}}


@pytest.mark.parametrize("expr", ["s0 + 1", "FloorDiv(s77, 2)*u0", "Max(1, s0) >= 2",
                                  "Mul(Integer(32), Symbol('s39', positive=True, integer=True))"])  # torch 2.13's srepr
def test_plain_shape_expressions_pass_the_grammar(expr):
    from edgekit import safe_load

    safe_load._check_sym_expr(expr, "x")


@pytest.mark.parametrize("expr", ["s0.__class__", "s0 + __import__", "ｅｖａｌ(ｃｈｒ(49))", "lambda: 1", "s0[0]",
                                  "'a'", "Symbol('__import__')", "Symbol('s0', evaluate=s1)", "Integer('s0')",
                                  "Symbol('s0').func", "Function('f')(s0)", "Mul(Symbol('s0'), 'x')"])
def test_other_shape_expressions_are_refused(expr):
    from edgekit import safe_load

    refused(lambda: safe_load._check_sym_expr(expr, "x"))


@pytest.mark.parametrize("vector", ["sympify", "guards_code"])
def test_code_in_the_graph_json_is_refused_before_deserialization(tiny, tmp_path, vector):
    path, _, x = tiny
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    if vector == "sympify":  # sizes are parsed by sympy.sympify, which eval-s
        edit = edit_json(lambda m: _first_size(m, f"{code} + 2"))
    else:  # guards_code is exec-ed by ExportedProgram.module()
        edit = edit_json(lambda m: m.__setitem__("guards_code", [f"{code} == 0"]))
    bad = rewrite_zip(path, tmp_path / "bad.pt2", {"models/model.json": edit})

    refused(lambda: load_program(bad, what="reference.pt2"))
    assert not marker.exists()
    torch.export.load(str(bad)).module()(x)  # the attack is real (guards run on the first call)
    assert marker.exists()


def _retarget(new_target: str):
    def edit(model):
        node = next(n for n in model["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.relu.default")
        node["target"] = new_target
    return edit_json(edit)


@pytest.mark.parametrize("target, named", [("torch.ops.aten.from_file.default", "aten::from_file"),
                                           ("torch.ops.aten.save.default", "aten::save"),
                                           ("torch.os.system", "torch.os.system"),
                                           ("torch.ops.debugprims.load_tensor.default", "load_tensor")])
def test_a_node_outside_the_allow_list_is_refused_naming_it(tiny, tmp_path, target, named):
    path, _, _ = tiny
    bad = rewrite_zip(path, tmp_path / "bad.pt2", {"models/model.json": _retarget(target)})
    message = refused(lambda: load_program(bad, what="reference.pt2"))
    assert named in message and "node relu" in message


def test_file_ops_are_the_ones_with_a_filename_argument():
    """The scan the FILE_OPS comment describes: a str argument named like a file or path."""
    found = {s.name for s in torch._C._jit_get_all_schemas()
             if any(str(a.type) == "str" and re.search("file|path", a.name, re.I) for a in s.arguments)}
    assert found == set(FILE_OPS)


class Branchy(nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: torch.relu(t) + 1, lambda t: t * 2, (x,))


def test_nested_graphs_load_and_are_checked(tmp_path):
    x = torch.randn(5)
    path = tmp_path / "cond.pt2"
    torch.export.save(torch.export.export(Branchy(), (x,), strict=False), str(path))
    program = load_program(path, what="cond.pt2")
    torch.testing.assert_close(program.module()(x), Branchy()(x))
    torch.testing.assert_close(program.module()(-x.abs()), Branchy()(-x.abs()))

    def poison(model):  # a node inside the true branch's subgraph
        cond = next(n for n in model["graph_module"]["graph"]["nodes"] if "cond" in n["target"])
        branch = next(i["arg"]["as_graph"]["graph"] for i in cond["inputs"] if "as_graph" in i["arg"])
        branch["nodes"][0]["target"] = "torch.ops.aten.from_file.default"
    bad = rewrite_zip(path, tmp_path / "bad.pt2", {"models/model.json": edit_json(poison)})
    assert "aten::from_file" in refused(lambda: load_program(bad, what="cond.pt2"))


@pytest.mark.parametrize("change, named", [("from_file", "aten::from_file"), ("system", "system"),
                                           ("guards", "guards_code")])
def test_the_loaded_graph_is_checked_again(tiny, change, named):
    """Second line of defence: the JSON pre-check stops such files first, so it is called directly."""
    from edgekit import safe_load

    program = load_program(tiny[0], what="reference.pt2")
    relu = next(n for n in program.graph.nodes if n.target is torch.ops.aten.relu.default)
    if change == "guards":
        program._guards_code = ["True"]
    else:
        relu.target = torch.ops.aten.from_file.default if change == "from_file" else os.system
    assert named in refused(lambda: safe_load._check_loaded_program(program, "reference.pt2"))


@pytest.mark.parametrize("member", ["data/aotinductor/model/model.so", "data/constants/opaque_obj_0"])
def test_members_that_torch_runs_as_code_are_refused(tiny, tmp_path, member):
    path, _, _ = tiny
    bad = rewrite_zip(path, tmp_path / "bad.pt2", {}, add={member: b"\x7fELF"})
    assert member in refused(lambda: load_program(bad, what="reference.pt2"))


def test_a_torchao_pt2e_quantized_reference_loads(tmp_path):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(2, 3, 8, 8)
    captured = torch.export.export(model, (x,), strict=False).module()
    prepared = prepare_pt2e(captured, XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    prepared(x)
    quantized = convert_pt2e(prepared, fold_quantize=False)
    path = tmp_path / "quantized.pt2"
    torch.export.save(torch.export.export(quantized, (x,), strict=False), str(path))

    program = load_program(path, what="quantized.pt2")
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("quantized_decomposed.") for t in targets)
    torch.testing.assert_close(program.module()(x), quantized(x))


def _garbage(tmp_path: Path, kind: str, source: Path) -> Path:
    bad = tmp_path / f"bad_{kind}"
    if kind == "missing":
        return bad
    if kind == "garbage":
        bad.write_bytes(os.urandom(64))
    elif kind == "truncated":
        bad.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    elif kind == "plain zip":
        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("a/hello.txt", "hi")
    elif kind == "duplicate member":
        with warnings.catch_warnings(), zipfile.ZipFile(source) as zin, zipfile.ZipFile(bad, "w") as zout:
            warnings.simplefilter("ignore")
            for info in zin.infolist():
                zout.writestr(info.filename, zin.read(info))
            zout.writestr(zin.infolist()[-1].filename, b"x")
    return bad


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "plain zip", "duplicate member"])
def test_broken_files_give_user_errors_never_tracebacks(tiny, tiny_ptl, tmp_path, kind):
    refused(lambda: load_program(_garbage(tmp_path, kind, tiny[0]), what="reference.pt2"), "E-BUNDLE-INVALID")
    refused(lambda: check_torchscript(_garbage(tmp_path, kind, tiny_ptl), what="model.ptl"), "E-ARTIFACT-CORRUPT")


# ---------------------------------------------------------------- TorchScript

def _frozen(model: nn.Module, x: torch.Tensor):
    return torch.jit.freeze(torch.jit.trace(model, (x,)).eval())


@pytest.fixture(scope="module")
def tiny_ptl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ptl") / "model.ptl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _frozen(Tiny().eval(), torch.randn(1, 3, 8, 8))._save_for_lite_interpreter(str(path))
    return path


def test_a_real_ptl_and_pt_pass_and_list_their_aten_ops(tiny_ptl, tmp_path):
    ops = check_torchscript(tiny_ptl, what="model.ptl")
    assert {"aten::_convolution", "aten::relu", "aten::mean", "aten::linear"} <= set(ops) and ops == sorted(ops)
    pt = tmp_path / "model.pt"
    torch.jit.save(_frozen(Tiny().eval(), torch.randn(1, 3, 8, 8)), str(pt))
    assert "aten::_convolution" in check_torchscript(pt, what="model.pt")



def test_a_ptl_calling_from_file_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "written_by_model"
    path = tmp_path / "evil.ptl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(ReadsFile(str(target)))._save_for_lite_interpreter(str(path))
    assert "aten::from_file" in refused(lambda: check_torchscript(path, what="evil.ptl"))
    assert not target.exists()
    from torch.jit.mobile import _load_for_lite_interpreter

    _load_for_lite_interpreter(str(path))(torch.zeros(4))  # the attack is real: running it creates the file
    assert target.exists()


def _code_member(path: Path) -> str:
    return next(n.split("/", 1)[1] for n in zipfile.ZipFile(path).namelist() if "/code/" in n and n.endswith(".py"))


@pytest.mark.parametrize("call, named", [("torch.from_file('/tmp/x', True, 4)", "aten::from_file"),
                                         ("torch.ops.aten.save([x], '/tmp/x')", "aten::save"),
                                         ("ops.debugprims.load_tensor('x', [1], 6, 0, Device('cpu'))", "debugprims"),
                                         ("torch.classes._TorchScriptTesting._Foo(1, 2)", "_TorchScriptTesting._Foo"),
                                         ("getattr(torch, 'from_' + 'file')", "namespace torch"),
                                         ("(ops\n        .debugprims.load_tensor)", "debugprims"),
                                         ("torch.zeros([1]).save('/tmp/x')", "aten::save")])
def test_source_that_disagrees_with_the_bytecode_is_checked(tiny_ptl, tmp_path, call, named):
    """torch.jit.load compiles code/, the lite interpreter runs bytecode.pkl: both are checked."""
    member = _code_member(tiny_ptl)
    edit = {member: lambda src: src.decode().replace("return ", f"_evil = {call}\n    return ", 1).encode()}
    bad = rewrite_zip(tiny_ptl, tmp_path / "bad.ptl", edit)
    assert named in refused(lambda: check_torchscript(bad, what="model.ptl"))


def test_a_bytecode_operator_table_is_checked(tiny_ptl, tmp_path):
    swap = {"bytecode.pkl": lambda b: b.replace(b"aten::relu", b"aten::save")}  # same length: pickle stays valid
    bad = rewrite_zip(tiny_ptl, tmp_path / "bad.ptl", swap)
    assert "aten::save" in refused(lambda: check_torchscript(bad, what="model.ptl"))


def test_a_pickle_global_outside_torchscript_is_refused(tiny_ptl, tmp_path):
    import pickle

    bad = rewrite_zip(tiny_ptl, tmp_path / "bad.ptl", {"data.pkl": lambda _: pickle.dumps(Payload("true"), 2)})
    assert "system" in refused(lambda: check_torchscript(bad, what="model.ptl"))


def test_a_zip_bomb_member_is_refused_unread(tiny_ptl, tmp_path):
    bad = tmp_path / "bomb.ptl"
    with zipfile.ZipFile(tiny_ptl) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            big = info.filename.endswith("/bytecode.pkl")
            zout.writestr(info.filename, b"\0" * (65 << 20) if big else zin.read(info))
    message = refused(lambda: check_torchscript(bad, what="model.ptl"), "E-ARTIFACT-CORRUPT")
    assert "bytecode.pkl" in message and "limit" in message


class QTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

    def forward(self, x):
        return self.dequant(self.fc(self.relu(self.conv(self.quant(x))).mean((2, 3))))


def test_quantized_qnnpack_ptl_files_pass(tmp_path):
    old, torch.backends.quantized.engine = torch.backends.quantized.engine, "qnnpack"
    try:
        x = torch.randn(2, 3, 8, 8)
        model = QTiny().eval()
        model.qconfig = torch.ao.quantization.get_default_qconfig("qnnpack")
        torch.ao.quantization.fuse_modules(model, [["conv", "relu"]], inplace=True)
        prepared = torch.ao.quantization.prepare(model)
        prepared(x)
        static = _frozen(torch.ao.quantization.convert(prepared), x)
        dynamic = torch.jit.freeze(torch.jit.script(torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(4, 3)).eval(), {nn.Linear}, dtype=torch.qint8)).eval())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            static._save_for_lite_interpreter(str(tmp_path / "static.ptl"))
            dynamic._save_for_lite_interpreter(str(tmp_path / "dynamic.ptl"))
    finally:
        torch.backends.quantized.engine = old
    assert {"quantized::conv2d_relu", "quantized::linear"} <= set(check_torchscript(tmp_path / "static.ptl", what="s"))
    assert "quantized::linear_dynamic" in check_torchscript(tmp_path / "dynamic.ptl", what="d")
