"""What the emulated aarch64 user space gets installed (edgekit.arm.setup): the host's version of each
runtime, except the wheels a target pins exactly (TargetInfo.arm_exact_wheels). No qemu needed."""
from __future__ import annotations

import importlib.metadata
from dataclasses import replace
from types import SimpleNamespace

import pytest

from edgekit.arm import setup
from edgekit.converters import get
from edgekit.errors import InternalError


def _targets(monkeypatch, *infos):
    monkeypatch.setattr(setup, "_arm_targets", lambda: [SimpleNamespace(info=i) for i in infos])


def test_exact_pin_is_not_replaced_by_the_host_version(monkeypatch):
    host_torch = importlib.metadata.version("torch")
    assert host_torch != "2.9.1"
    onnx = get("onnx").info
    ptl = replace(get("ptl").info, arm_exact_wheels=("torch==2.9.1",))
    _targets(monkeypatch, onnx, ptl)
    pins = setup.wheels()
    assert pins["torch"] == "2.9.1"  # the pin, not the host's 2.13
    assert pins["onnxruntime"] == importlib.metadata.version("onnxruntime")  # the host's
    assert setup.exact_wheels() == {"torch": "2.9.1"}
    assert "torch" in setup._runtime_imports()  # the build's check imports it under qemu
    assert setup.guest_versions(SimpleNamespace(info=ptl)) == {"torch": "2.9.1"}
    assert setup.guest_versions(SimpleNamespace(info=onnx)) == {}


def test_exact_pins_change_the_environment(monkeypatch, tmp_path):
    onnx = get("onnx").info
    _targets(monkeypatch, onnx)
    without = setup.env_dir(tmp_path)
    _targets(monkeypatch, onnx, replace(get("ptl").info, arm_exact_wheels=("torch==2.9.1",)))
    assert setup.env_dir(tmp_path) != without


def test_conflicting_or_malformed_exact_pins_are_a_bug(monkeypatch):
    ptl = get("ptl").info
    _targets(monkeypatch, replace(ptl, arm_exact_wheels=("torch==2.9.1",)),
             replace(ptl, name="other", arm_exact_wheels=("torch==2.9.0",)))
    with pytest.raises(InternalError, match="2.9.1 and 2.9.0"):
        setup.exact_wheels()
    _targets(monkeypatch, replace(ptl, arm_exact_wheels=("torch>=2.9",)))
    with pytest.raises(InternalError, match="dist==version"):
        setup.exact_wheels()


def test_exact_pins_install_without_their_dependencies(monkeypatch, tmp_path):
    """torch's and executorch's metadata name sympy, pytest, coremltools, CUDA libraries (pip evaluates
    markers for the x86_64 host), ...: the exact pins are installed with --no-deps, the rest with theirs."""
    calls = []
    monkeypatch.setattr(setup, "_run", lambda cmd, what, **kw: calls.append(cmd))
    site = tmp_path / "site"
    (site / "torch" / "include").mkdir(parents=True)
    setup._pip_install(site, tmp_path, {"numpy": "2.4.6", "torch": "2.9.1", "executorch": "1.0.1"},
                       {"torch": "2.9.1", "executorch": "1.0.1"})
    first, second = calls
    assert "numpy==2.4.6" in first and "--no-deps" not in first and not any("torch" in a for a in first)
    assert "--no-deps" in second and {"torch==2.9.1", "executorch==1.0.1"} <= set(second) and "numpy==2.4.6" not in second
    constraints = (tmp_path / "constraints.txt").read_text()
    assert "\ntorch==" not in "\n" + constraints and "\nnumpy==" not in "\n" + constraints
    assert not (site / "torch" / "include").exists()  # C++ headers: nothing in the guest builds extensions


def test_built_in_targets_pin_torch_2_9_1_for_arm():
    """ptl and executorch run in the guest on torch 2.9.1 (2.10.0: SIGILL on ARMv8.0; 2.11+: CUDA-only
    on PyPI for aarch64); executorch 1.0.1 is the release built against it."""
    assert get("ptl").info.arm and get("ptl").info.arm_exact_wheels == ("torch==2.9.1",)
    et = get("executorch").info
    assert et.arm and et.arm_exact_wheels == ("torch==2.9.1", "executorch==1.0.1") and et.arm_missing is None


def test_sigill_message_and_guest_versions_in_the_arm_table(tmp_path):
    """A SIGILL names the features the emulated CPU lacks; the ARM table lists error rows and the guest
    runtime versions that differ from the host's."""
    from pathlib import Path

    from edgekit.arm.setup import ArmEnv
    from edgekit.arm.verify import arm_markdown, illegal_instruction

    env = ArmEnv(tmp_path, Path("/nonexistent"), {"cpu_features": {"cortex-a53": ["fp", "asimd"],
                                                                  "cortex-a76": ["fp", "asimd", "asimddp"]}})
    assert "cortex-a53 lacks asimddp" in illegal_instruction(env, "cortex-a53")
    guest = {"torch": "2.9.1", "executorch": "1.0.1"}
    report = {"targets": {
        "executorch@cortex-a53:int8": {"status": "error", "error": {"code": "E-RUNTIME-CRASH", "message": "SIGILL (x)"},
                                       "arm": {"cpu": "cortex-a53", "guest_versions": guest}},
        "executorch@cortex-a76:int8": {"status": "pass", "metrics": {"max_abs": 1.1},
                                       "arm": {"cpu": "cortex-a76", "vs_host": {"max_abs": 0.0}, "guest_versions": guest}}}}
    table = arm_markdown(report)
    assert "| executorch | cortex-a53 | error |" in table and "| executorch | cortex-a76 | pass | 1.10e+00 | 0.00e+00 |" in table
    assert "executorch: torch 2.9.1, executorch 1.0.1" in table
    assert "- executorch@cortex-a53:int8: E-RUNTIME-CRASH SIGILL (x)" in table
