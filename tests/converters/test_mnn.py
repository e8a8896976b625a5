"""MNN target: edgekit's ONNX file through MNN's converter (called as a function in a confined child
process, never MNN's pip-installing, log-uploading scripts) to a .mnn run by MNN's Module runtime.

On tiny_cnn with real photos: FP32 equals torch within 1e-4; fp16 stores half weights and equals its
weight simulation; INT8 runs MNN's integer convolutions with edgekit's ranges, within one output
step of its quantized reference, and a wrong weight scale written into the file is caught; linear
layers on 3-D inputs (MatMul + bias Add in the ONNX file) are int8 convolutions too; a damaged
file is a coded error; an export starts no pip and opens no network socket; the CLI exports and
verifies a bundle."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from converter_checks import stack
from edgekit.data import load_samples
from edgekit.errors import UnsupportedOpError, UserError
from edgekit.isolate import run_artifact
from edgekit.models import BUILTIN
from edgekit.parity import compare
from edgekit.quant import QuantRecipe
from edgekit.quant.reference import load_quantized_reference, run_program

pytest.importorskip("MNN")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from edgekit.converters.mnn import CONVERTER, FP16_TOLERANCE, INT8_TOLERANCE, tool  # noqa: E402

N_PHOTOS = 8


@pytest.fixture(scope="module")
def photos():
    lm = BUILTIN["tiny_cnn"]()
    return lm, load_samples(lm.default_data, lm.spec)


@pytest.fixture(scope="module")
def fp32(tiny_export):
    return tiny_export("mnn", "tiny_cnn")


@pytest.fixture(scope="module")
def int8(photos, tmp_path_factory):
    """tiny_cnn INT8, calibrated on the first 32 photos; the quantized reference's outputs on the rest."""
    lm, data = photos
    out = tmp_path_factory.mktemp("mnn_int8")
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), out, lm.example_inputs, calibration=data.head(32))
    held = [list(s) for s in data.samples[32:]]
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), held)[0]
    return art, out, held, ref


def _run(art, root, samples) -> np.ndarray:
    run = CONVERTER.runner(art, root)
    return np.stack([run(s)[0] for s in samples])


def _op_types(path: Path) -> list[str]:
    """The type string MNN's Session API reports for every op it runs (``Convolution [ DT_INT8 ]``)."""
    import MNN

    interp = MNN.Interpreter(str(path))
    session = interp.createSession({"numThread": 1, "precision": "high"})
    for t in interp.getSessionInputAll(session).values():
        shape = list(t.getShape())
        t.copyFrom(MNN.Tensor(shape, MNN.Halide_Type_Float, np.zeros(shape, np.float32), MNN.Tensor_DimensionType_Caffe))
    types = []
    interp.runSessionWithCallBackInfo(session, lambda ts, info: True,
                                      lambda ts, info: types.append(info.getType().strip()) or True)
    return types


def test_capability_row():
    info = CONVERTER.info
    assert (info.name, info.rank, info.title, info.suffix, info.extra) == ("mnn", 70, "MNN (Alibaba)", ".mnn", "mnn")
    assert info.precisions == ("fp32", "fp16", "int8") and set(info.tolerances) == set(info.precisions)
    assert info.runtime_modules == ("MNN",) and info.packages == ("MNN",)
    assert info.arm and info.arm_wheels == ("MNN==3.6.1",) and info.relaxed_defaults
    assert info.tolerances["int8"].max_steps is not None
    CONVERTER.check_available()
    assert CONVERTER.versions() == {"MNN": "3.6.1"}


def test_fp32_file_names_and_parity_on_photos(fp32, photos):
    lm, artifact, out = fp32
    assert (artifact.target, artifact.precision, artifact.path, artifact.files) == \
        ("mnn", "fp32", "tiny_cnn-fp32.mnn", ("tiny_cnn-fp32.mnn",))
    assert sorted(p.name for p in out.iterdir()) == [artifact.path]  # no scratch folder, no ONNX left behind
    assert json.loads(json.dumps(artifact.meta)) == artifact.meta
    assert artifact.meta["file_bytes"] == (out / artifact.path).stat().st_size
    assert "--fp16" not in artifact.meta["converter"]["argv"][0]
    samples = [list(s) for s in photos[1].samples[:N_PHOTOS]]
    got = _run(artifact, out, samples)
    with torch.no_grad():
        want = np.stack([lm.module(*[torch.from_numpy(a) for a in s]).numpy() for s in samples])
    assert got.shape == want.shape == (N_PHOTOS, 1, 10) and got.dtype == np.float32
    assert np.abs(got - want).max() < 1e-4
    res = run_artifact("mnn", artifact.to_dict(), out, stack(samples))  # the isolated (confined) runner
    assert res.error is None, (res.error, res.log)
    assert np.abs(res.outputs[0] - want).max() < 1e-4


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_damaged_file_is_a_coded_error(fp32, tmp_path, damage):
    lm, artifact, out = fp32
    data = (out / artifact.path).read_bytes()
    (tmp_path / artifact.path).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"")
    with pytest.raises(UserError) as err:
        CONVERTER.runner(artifact, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT"
    # without the recorded size, MNN's own flatbuffer check refuses it too
    blind = type(artifact)(artifact.target, artifact.precision, artifact.path, artifact.files,
                           {k: v for k, v in artifact.meta.items() if k != "file_bytes"})
    with pytest.raises(UserError) as err:
        CONVERTER.runner(blind, tmp_path)
    assert err.value.code == "E-ARTIFACT-CORRUPT" and "cannot load" in err.value.what
    image = np.zeros((1, *lm.spec.inputs[0].shape), np.float32)
    for art in (artifact, blind):
        res = run_artifact("mnn", art.to_dict(), tmp_path, [image])
        assert res.outputs is None and res.error["code"] == "E-ARTIFACT-CORRUPT", res.error


def test_fp16_stores_half_weights_and_matches_its_simulation(fp32, photos, tmp_path):
    lm, fp32_art, fp32_out = fp32
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(scheme="fp16"), tmp_path, lm.example_inputs)
    assert art.files == ("tiny_cnn-fp16.mnn.reference.pt2", "tiny_cnn-fp16.mnn") and art.meta["reference"] == art.files[0]
    assert "--fp16" in art.meta["converter"]["argv"][0]
    assert art.meta["onnx_rewrites"]["fp16_weights_rounded_to_nearest"] == 6  # 5 convs + the classifier
    saved = fp32_art.meta["file_bytes"] - art.meta["file_bytes"]
    assert saved >= 0.9 * 2 * art.meta["weight_only_params"]  # 2 bytes saved per weight
    samples = [list(s) for s in photos[1].samples[:N_PHOTOS]]
    ref = run_program(load_quantized_reference(tmp_path / art.meta["reference"]).module(), samples)[0]
    got = _run(art, tmp_path, samples)
    res = compare("mnn", "fp16", [ref], [got], lm.spec.output_names, FP16_TOLERANCE, True)
    assert res.status == "pass", res.failures
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # measured 5e-7: nearest-rounded half weights


def test_int8_file_runs_integer_kernels(int8, fp32):
    art, out, _, _ = int8
    assert art.files == ("tiny_cnn-int8.mnn.reference.pt2", "tiny_cnn-int8.mnn")
    assert sorted(p.name for p in out.iterdir()) == sorted(art.files)
    assert art.meta["int8_convolutions"] == 6 and art.meta["output_scales"][0] > 0
    assert "--compressionParamsFile" in art.meta["converter"]["argv"][1]
    types = _op_types(out / art.path)  # what MNN's runtime itself says it runs
    assert types.count("Convolution [ DT_INT8 ]") == 5 and types.count("ConvolutionDepthwise [ DT_INT8 ]") == 1
    assert not [t for t in types if t.startswith("Convolution") and "DT_INT8" not in t]
    # int8 weights: 3,408 float weights (13.6 kB) become bytes (+ 256-byte value tables per layer)
    assert art.meta["file_bytes"] <= fp32[1].meta["file_bytes"] - 6000


def test_int8_within_one_step_of_its_reference(int8, photos):
    art, out, held, ref = int8
    got = _run(art, out, held)
    step = art.meta["output_scales"][0]
    assert np.abs(got - ref).max() / step <= 1.0 + 1e-3  # measured: 0 steps (identical outputs)
    lm = photos[0]
    res = compare("mnn", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert res.status == "pass", res.failures
    fp32 = run_program(lm.module, held)[0]
    assert (got.argmax(-1) == fp32.argmax(-1)).mean() >= 0.9


def test_int8_wrong_weight_scale_in_the_file_is_caught(int8, photos, tmp_path):
    """The first conv's per-channel weight scales sit in the .mnn as the reference's float32 values:
    channel 0's scaled x1.25 still loads and runs, and only the comparison with the reference catches it."""
    art, out, held, ref = int8
    gm = load_quantized_reference(out / art.meta["reference"]).module()
    dq = next(n for n in gm.graph.nodes if n.op == "call_function" and "dequantize_per_channel" in str(n.target))
    scales = gm.get_buffer(dq.args[1].target).numpy().astype(np.float32)
    data = (out / art.path).read_bytes()
    assert data.count(scales.tobytes()) == 1
    wrong = scales.copy()
    wrong[0] *= 1.25
    (tmp_path / art.path).write_bytes(data.replace(scales.tobytes(), wrong.tobytes()))
    shutil.copy(out / art.meta["reference"], tmp_path / art.meta["reference"])
    got = _run(art, tmp_path, held)
    res = compare("mnn", "int8", [ref], [got], photos[0].spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert res.outputs[0].max_steps > 2.0
    assert np.abs(got - _run(art, out, held)).max() > 0


def test_unlisted_precision_is_refused(tmp_path, photos):
    lm = photos[0]
    with pytest.raises(UserError) as err:
        CONVERTER.export(lm.module, lm.spec, QuantRecipe(scheme="dynamic"), tmp_path, lm.example_inputs)
    assert err.value.code == "E-TARGET-PRECISION" and "mnn" in err.value.what
    assert list(tmp_path.iterdir()) == []


def _graph(nodes, inits, x_shape, y_shape):
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_converter_abort_and_unknown_op_are_coded_errors(tmp_path):
    """MNN's converter aborts (SIGABRT) on a QDQ Gemm: E-EXPORT-FAILED, and this process lives on; an
    op it does not know is E-OP-UNSUPPORTED naming the op and the node."""
    from onnx import helper, numpy_helper

    arrays = {"wq": np.ones((10, 64), np.int8), "ws": np.full(10, 0.01, np.float32), "wz": np.zeros(10, np.int8),
              "b": np.zeros(10, np.float32), "s": np.array(0.1, np.float32), "z": np.array(0, np.int8)}
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items()]
    qdq = _graph([helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                  helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
                  helper.make_node("Gemm", ["d", "w", "b"], ["y"], name="linear", transB=1)], inits, [1, 64], [1, 10])
    hardmax = _graph([helper.make_node("Hardmax", ["x"], ["y"], name="pick")], [], [1, 4], [1, 4])
    for name, model in (("qdq", qdq), ("hardmax", hardmax)):
        (tmp_path / name).mkdir()
        onnx.save(model, str(tmp_path / name / "m.onnx"))
    with pytest.raises(UserError) as err:
        tool.run([tool.convert_onnx(tmp_path / "qdq" / "m.onnx", tmp_path / "qdq" / "m.mnn")], tmp_path / "qdq")
    assert err.value.code == "E-EXPORT-FAILED" and "SIGABRT" in err.value.what
    with pytest.raises(UnsupportedOpError) as err:
        tool.run([tool.convert_onnx(tmp_path / "hardmax" / "m.onnx", tmp_path / "hardmax" / "m.mnn")],
                 tmp_path / "hardmax", onnx_graph=hardmax.graph)
    assert (err.value.target, err.value.op, err.value.node) == ("mnn", "Hardmax", "pick")


class _Linears3d(torch.nn.Module):
    """Linear layers on a (1, 16, 32) input, as in a transformer block: torch.onnx writes each as
    DequantizeLinear(W) -> Transpose -> MatMul (-> Add(bias)), never as Gemm."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(32, 48), torch.nn.Linear(48, 24, bias=False)
        self.fc3 = torch.nn.Linear(24, 10)

    def forward(self, x):
        gelu = torch.nn.functional.gelu
        return self.fc3(gelu(self.fc2(gelu(self.fc1(x))))).mean(1)


def test_int8_linears_on_3d_inputs_run_integer_kernels(tmp_path):
    """Each 3-D linear (weight Transpose folded; MatMul + bias Add = one layer named by the Add's
    output, as MNN fuses it) is an int8 convolution of MNN's file with the reference's per-channel
    weight scales, and the file stays within one step of its reference (measured 0.5). Before, no
    layer was found and the export failed with E-TARGET-PRECISION."""
    from edgekit.data import samples_from
    from edgekit.model_source import load_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    data = [rng.standard_normal((1, 16, 32)).astype(np.float32) for _ in range(24)]
    lm = load_model(_Linears3d().eval(), (torch.from_numpy(data[0]),))
    art = CONVERTER.export(lm.module, lm.spec, QuantRecipe(), tmp_path, lm.example_inputs,
                           calibration=samples_from(data[:16], lm.spec))
    assert art.meta["int8_convolutions"] == 3
    assert not [n for n in art.meta["quant_notes"] if "stay float" in n or "made only" in n], art.meta["quant_notes"]
    types = _op_types(tmp_path / art.path)
    assert types.count("Convolution [ DT_INT8 ]") == 3
    assert not [t for t in types if t.startswith("Convolution") and "DT_INT8" not in t]
    gm = load_quantized_reference(tmp_path / art.meta["reference"]).module()
    scales = [gm.get_buffer(n.args[1].target).numpy().astype(np.float32) for n in gm.graph.nodes
              if n.op == "call_function" and "dequantize_per_channel" in str(n.target)]
    data_bytes = (tmp_path / art.path).read_bytes()
    assert len(scales) == 3 and all(data_bytes.count(s.tobytes()) == 1 for s in scales)  # in output-channel order
    held = [(d,) for d in data[16:]]
    ref = run_program(gm, held)[0]
    got = _run(art, tmp_path, held)
    assert np.abs(got - ref).max() / art.meta["output_scales"][0] <= 1.0 + 1e-3
    res = compare("mnn", "int8", [ref], [got], lm.spec.output_names, INT8_TOLERANCE, True, art.meta["output_scales"])
    assert res.status == "pass", res.failures


# An audit hook for the export process (loaded through PYTHONPATH as sitecustomize): records every
# process start and socket use at the Python level, and the MNN modules the process imported.
_AUDIT = """
    import atexit, json, os, sys
    _events = []
    _WATCH = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "subprocess.Popen", "socket.",
              "urllib.Request", "http.client.connect")

    def _hook(event, args):
        if event.startswith(_WATCH):
            _events.append([event, " ".join(str(a) for a in args)[:2000]])

    sys.addaudithook(_hook)

    def _dump():
        mods = sorted(m for m in sys.modules if m.split(".")[0] in ("MNN", "_tools", "aliyun"))
        with open(os.environ["EDGEKIT_TEST_AUDIT"], "w") as f:
            json.dump({"events": _events, "modules": mods}, f)

    atexit.register(_dump)
"""


def _works(cmd) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_cli_export_starts_no_pip_opens_no_socket_and_verifies(tmp_path):
    """`python -m edgekit.cli export tiny_cnn --targets mnn` with a recording `pip` first on PATH, an
    audit hook in the exporting process, strace over every process it starts (the MNN converter child
    included: native code is invisible to audit hooks), and no network namespace: exit 0, no pip,
    no inet socket; then `edgekit verify` of the bundle exits 0."""
    hook, fake_bin, out = tmp_path / "hook", tmp_path / "bin", tmp_path / "bundle"
    hook.mkdir()
    fake_bin.mkdir()
    (hook / "sitecustomize.py").write_text(textwrap.dedent(_AUDIT))
    pip_log = tmp_path / "pip-calls.txt"
    for name in ("pip", "pip3", f"pip{sys.version_info[0]}.{sys.version_info[1]}"):
        (fake_bin / name).write_text(f'#!/bin/sh\necho "$0 $*" >> "{pip_log}"\nexit 1\n')
        (fake_bin / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(hook),
           "EDGEKIT_TEST_AUDIT": str(tmp_path / "audit.json")}
    cmd = [sys.executable, "-m", "edgekit.cli", "export", "tiny_cnn", "--targets", "mnn", "--quiet", "--out", str(out)]
    if _works(["unshare", "--user", "--map-root-user", "--net", "true"]):
        cmd = ["unshare", "--user", "--map-root-user", "--net", *cmd]
    trace = tmp_path / "strace.txt"
    traced = _works(["strace", "-f", "--seccomp-bpf", "-o", os.devnull, "true"])
    if traced:
        cmd = ["strace", "-f", "--seccomp-bpf", "-s", "512", "-e", "trace=execve,socket,connect", "-o", str(trace), *cmd]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["mnn"]["status"] == "pass" and report["targets"]["mnn"]["metrics"]["max_abs"] < 1e-4

    assert not pip_log.exists(), pip_log.read_text()
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert not [m for m in audit["modules"] if m.startswith(("MNN.tools", "aliyun"))]
    assert not [e for e in audit["events"] if e[0] == "os.system" or re.search(r"\bpip[0-9.]*\b", e[1])]
    assert not [e for e in audit["events"] if e[0] in ("socket.connect", "socket.getaddrinfo", "http.client.connect")]
    assert any("_tool_child.py" in e[1] for e in audit["events"] if e[0] == "subprocess.Popen")  # MNN really ran
    if traced:
        lines = trace.read_text().splitlines()
        assert any("_tool_child.py" in ln for ln in lines if "execve(" in ln)
        assert not [ln for ln in lines if "execve(" in ln and re.search(r'execve\("[^"]*/pip[0-9.]*"', ln)]
        assert not [ln for ln in lines if re.search(r"socket\(AF_INET6?,|connect\(\d+, \{sa_family=AF_INET6?,", ln)]

    verify = subprocess.run([sys.executable, "-m", "edgekit.cli", "verify", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=600)
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
