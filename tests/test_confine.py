"""The runner subprocess is confined (edgekit.confine): what a malicious artifact would try, run as
the runner itself through ``run_artifact``'s launcher (``python -c CODE`` ignores the appended
``-m edgekit.isolate SCRATCH``; CODE finds SCRATCH in sys.argv[-1] and answers through result.json,
the same round trip as a real run). Each test fails if the confinement is removed; they skip only
where bubblewrap cannot confine here, and test_ci_keeps_confinement makes that loud in CI."""
from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekit import confine
from edgekit.isolate import run_artifact

ARTIFACT = {"target": "onnx", "precision": "fp32", "path": "x.onnx", "files": ["x.onnx"], "meta": {}}
INPUTS = [np.zeros((1, 1, 3), np.float32)]

# Runs `body` in the runner; body fills the dict `found`, which comes back as outcome.extra.
PROBE = """\
import json, os, sys
scratch = sys.argv[-1]
found = {}
def attempt(fn):
    try:
        r = fn()
        return "ok" if r is None else r
    except BaseException as exc:
        return f"{type(exc).__name__}: {exc}"
%s
import numpy as np
np.savez(os.path.join(scratch, "outputs.npz"), out0=np.zeros((1, 1), np.float32))
with open(os.path.join(scratch, "result.json"), "w") as f:
    json.dump({"latency_ms": 0.0, "error": None, "extra": found}, f)
"""


@pytest.fixture
def confined(monkeypatch):
    monkeypatch.delenv(confine.DISABLE_VAR, raising=False)
    ok, why = confine.available()
    if not ok:
        pytest.skip(f"bubblewrap cannot confine here: {why}")


@pytest.fixture
def bundle(tmp_path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "x.onnx").write_bytes(bytes(16))
    return d


@pytest.fixture
def outside() -> Path:
    """A folder on the host that is neither the bundle nor below /tmp (so the child sees it, read-only)."""
    d = Path(tempfile.mkdtemp(prefix="edgekit-confine-test-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def probe(root: Path, body: str, **kw):
    code = PROBE % textwrap.dedent(body)
    out = run_artifact("onnx", ARTIFACT, root, INPUTS, launcher=[sys.executable, "-c", code], **kw)
    assert out.error is None, (out.error, out.log)
    return out


def test_bundle_is_read_only(confined, bundle):
    out = probe(bundle, f"""
        import ctypes
        root = {str(bundle)!r}
        found["new"] = attempt(lambda: open(os.path.join(root, "evil.txt"), "w").write("x"))
        found["overwrite"] = attempt(lambda: open(os.path.join(root, "x.onnx"), "r+b").write(b"evil"))
        found["chmod"] = attempt(lambda: os.chmod(os.path.join(root, "x.onnx"), 0o777))
        # MS_REMOUNT | MS_BIND: as root, without dropped capabilities this made the bind writable
        libc = ctypes.CDLL(None, use_errno=True)
        found["remount"] = libc.mount(None, root.encode(), None, 32 | 4096, None)
        found["after_remount"] = attempt(lambda: open(os.path.join(root, "evil2.txt"), "w").write("x"))
    """)
    assert out.confined
    for key in ("new", "overwrite", "chmod", "after_remount"):
        assert "Read-only file system" in str(out.extra[key]), out.extra
    assert out.extra["remount"] == -1
    assert sorted(p.name for p in bundle.iterdir()) == ["x.onnx"]
    assert (bundle / "x.onnx").read_bytes() == bytes(16)


def test_nothing_outside_scratch_is_writable(confined, bundle, outside, tmp_path):
    home_file = Path.home() / f"edgekit-confine-test-{os.getpid()}.txt"
    in_tmp = tmp_path / "elsewhere" / "evil.txt"  # below /tmp on the host; the child's /tmp is its own
    try:
        out = probe(bundle, f"""
            found["outside"] = attempt(lambda: open({str(outside / "evil.txt")!r}, "w").write("x"))
            found["home"] = attempt(lambda: open({str(home_file)!r}, "w").write("x"))
            os.makedirs({str(in_tmp.parent)!r}, exist_ok=True)
            found["tmp"] = attempt(lambda: open({str(in_tmp)!r}, "w").write("x"))
            found["scratch"] = attempt(lambda: open(os.path.join(scratch, "mine.txt"), "w").write("x"))
            found["home_env"] = os.environ["HOME"].startswith(scratch)
        """)
        for key in ("outside", "home"):
            assert "Read-only file system" in str(out.extra[key]), out.extra
        assert out.extra["scratch"] == 1 and out.extra["home_env"]
        assert not (outside / "evil.txt").exists() and not home_file.exists() and not in_tmp.exists()
    finally:
        home_file.unlink(missing_ok=True)


def test_torch_from_file_shared_cannot_write_the_host(confined, bundle, outside):
    pytest.importorskip("torch")
    victim = outside / "victim.bin"
    victim.write_bytes(bytes(16))
    created = outside / "created.bin"
    out = probe(bundle, f"""
        import torch
        def write(path):
            t = torch.from_file(path, shared=True, size=16, dtype=torch.uint8)
            t.fill_(255)
            del t
        found["existing"] = attempt(lambda: write({str(victim)!r}))
        found["new"] = attempt(lambda: write({str(created)!r}))
        found["bundle"] = attempt(lambda: write({str(bundle / "x.onnx")!r}))
    """, timeout_s=120)
    assert all(v != "ok" for v in out.extra.values()), out.extra
    assert victim.read_bytes() == bytes(16) and (bundle / "x.onnx").read_bytes() == bytes(16)
    assert not created.exists()


def test_no_network_not_even_host_loopback(confined, bundle):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        out = probe(bundle, f"""
            import socket
            found["loopback"] = attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5).close())
            found["outside"] = attempt(lambda: socket.create_connection(("192.0.2.1", 80), timeout=5).close())
            found["interfaces"] = [name for _, name in socket.if_nameindex()]
        """)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    assert "ConnectionRefusedError" in out.extra["loopback"]
    assert out.extra["outside"] != "ok"
    assert out.extra["interfaces"] == ["lo"]


def test_host_processes_are_invisible(confined, bundle):
    me = os.getpid()
    out = probe(bundle, f"""
        found["kill"] = attempt(lambda: os.kill({me}, 0))
        found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    """)
    assert "ProcessLookupError" in out.extra["kill"]
    assert me not in out.extra["pids"] and len(out.extra["pids"]) < 10


def test_secrets_are_out_of_reach(confined, bundle, outside, monkeypatch):
    # Environment: an allow-list, not the parent's environment.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cret")
    monkeypatch.setenv("GITHUB_TOKEN", "s3cret")
    # Files: credentials under $HOME and the token a CI checkout keeps in .git/config.
    monkeypatch.setenv("HOME", str(outside))
    (outside / ".ssh").mkdir()
    (outside / ".ssh" / "id_ed25519").write_text("s3cret")
    repo = outside / "checkout"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_text("[http]\n\textraheader = AUTHORIZATION: basic s3cret\n")
    (repo / "bundle").mkdir()
    out = probe(repo / "bundle", f"""
        found["env"] = {{k: v for k, v in os.environ.items() if "s3cret" in v}}
        found["ssh"] = attempt(lambda: open({str(outside / ".ssh" / "id_ed25519")!r}).read())
        found["git"] = attempt(lambda: open({str(repo / ".git" / "config")!r}).read())
    """)
    assert out.extra["env"] == {}
    assert "s3cret" not in out.extra["ssh"] and "s3cret" not in out.extra["git"], out.extra


def test_a_real_runtime_runs_confined(confined, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "x.onnx")
    art = {**ARTIFACT, "meta": {"inputs": ["x"], "input_dtypes": ["float32"], "outputs": ["y"]}}
    x = np.array([[[-1.0, 0.5, 2.0]], [[3.0, -4.0, 0.0]]], np.float32)
    out = run_artifact("onnx", art, tmp_path, [x], timeout_s=120)
    assert out.error is None, (out.error, out.log)
    assert out.confined and out.confinement_note == confine.CONFINED_NOTE
    np.testing.assert_array_equal(out.outputs[0], np.maximum(x, 0))


def test_opt_out_is_said(bundle, outside, monkeypatch):
    monkeypatch.setenv(confine.DISABLE_VAR, "1")
    out = probe(bundle, f"""
        found["outside"] = attempt(lambda: open({str(outside / "written.txt")!r}, "w").write("x"))
    """)
    assert not out.confined and "disabled by EDGEKIT_NO_CONFINE" in out.confinement_note
    assert out.extra["outside"] == 1 and (outside / "written.txt").exists()  # really unconfined


def test_ci_keeps_confinement():
    if not os.environ.get("CI") or shutil.which("bwrap") is None:
        pytest.skip("only in CI (CI set) with bwrap installed")
    ok, why = confine.available()
    assert ok, f"bwrap is installed but cannot confine the runner in CI: {why}"


def test_scratch_under_masked_tmp_is_bound_last(tmp_path):
    """Mount order: the scratch folder and the bundle live below /tmp, which the sandbox masks."""
    scratch, bundle = tmp_path / "scratch", tmp_path / "bundle"
    scratch.mkdir()
    bundle.mkdir()
    cmd = confine.wrap(["true"], confine.Confinement(scratch, (bundle,)))
    at = {a: cmd.index(a) for a in ("--tmpfs", "--bind")}
    assert cmd[at["--tmpfs"] + 1] == "/tmp" and cmd[at["--bind"] + 1:at["--bind"] + 3] == [str(scratch)] * 2
    assert at["--tmpfs"] < cmd.index(str(bundle)) < at["--bind"]  # bundle re-bound read-only below the mask
    assert cmd[cmd.index(str(bundle)) - 1] == "--ro-bind" and cmd[-2:] == ["--", "true"]
