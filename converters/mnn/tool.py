"""MNN's converter, called through its Python binding in a child process of our own.

What is called: ``_tools.mnnconvert(argv)``, the compiled converter inside the MNN wheel (the
``mnnconvert`` console script is ``MNN.tools.mnnconvert:main``, which calls exactly this and then
tries to upload a usage log). edgekit never runs the console scripts and never imports
``MNN.tools``: importing ``MNN/tools/utils/log.py`` runs ``os.system("pip install -U
aliyun-log-python-sdk")`` with whatever pip is on PATH and then contacts Alibaba's log service. The
compiled ``_tools`` module imports no process-spawning function (no system/popen/exec/fork), but
links an HTTP client; so the child runs confined like a runtime (``edgekit.confine``: no network,
read-only file system, writable scratch only) wherever bubblewrap works here.

Why a child process and not the exporting process itself:
- MNN's converter aborts the whole process on some graphs (``std::out_of_range`` from a QDQ ONNX
  graph: SIGABRT), which would kill the pipeline; in a child it becomes E-EXPORT-FAILED;
- it writes ``.__convert_external_data.bin`` into the current directory, and prints to fd 1 from C++:
  the child's working directory is the scratch folder and its output is captured.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import UnsupportedOpError, UserError

TIMEOUT_S = 1800
CHILD = Path(__file__).with_name("_tool_child.py")
BIZ_CODE = "edgekit"  # MNN's model flag (bizCode), stored in the file
# Converter options edgekit always passes (recorded in the artifact meta): GELU exact (erf); the
# default maps GELU to its tanh approximation (4e-4 relative error on tiny_transformer), and the ONNX
# graph is first rewritten so that MNN sees erf (onnx_rewrite.py). The file keeps the ONNX input
# layout by MNN's default (keepInputFormat=true); do not pass ``--keepInputFormat`` as a bare flag:
# cxxopts then reads it as false, and the file silently computes garbage from NCHW inputs.
BASE_OPTIONS = ("--bizCode", BIZ_CODE, "--useGeluApproximation", "0")


def convert_onnx(src: Path, dst: Path, options: tuple[str, ...] = ()) -> list[str]:
    """argv of one ONNX -> .mnn call (absolute paths: the child runs in its scratch folder)."""
    return ["MNNConvert", "-f", "ONNX", "--modelFile", _abs(src), "--MNNModel", _abs(dst), *BASE_OPTIONS, *options]


def convert_mnn(src: Path, dst: Path, options: tuple[str, ...] = ()) -> list[str]:
    """argv of one .mnn -> .mnn call (applies a compression params file to an MNN model)."""
    return ["MNNConvert", "-f", "MNN", "--modelFile", _abs(src), "--MNNModel", _abs(dst), "--bizCode", BIZ_CODE, *options]


def _abs(path: Path) -> str:
    return str(Path(path).resolve())


@dataclass
class ToolRun:
    log: str  # the converter's console output
    probe: list | None  # [op name, op type] of every op the runtime ran on the result, or None
    confinement: str  # how the child ran (edgekit.confine's note)


def run(steps: list[list[str]], scratch: Path, probe: Path | None = None, onnx_graph=None) -> ToolRun:
    """Run the converter calls in order in one confined child (working directory: ``scratch``), then
    the op probe on ``probe`` if given. Raises E-OP-UNSUPPORTED naming the op (and its ONNX node,
    looked up in ``onnx_graph``) or E-EXPORT-FAILED."""
    from edgekit import confine

    scratch = Path(scratch).resolve()
    request = scratch / "request.json"
    request.write_text(json.dumps({"steps": steps, "probe": str(probe) if probe else None}))
    cmd = [sys.executable, "-I", str(CHILD), str(request)]
    env = confine.child_env(scratch / "env")
    env["OMP_NUM_THREADS"] = "1"
    confined, bwrap = (False, confine.DISABLED_NOTE) if confine.disabled() else confine.available()
    note = confine.CONFINED_NOTE if confined else bwrap
    if confined:
        needed = tuple(dict.fromkeys(Path(p) for p in (sys.executable, sys.prefix, sys.base_prefix, CHILD.parent)))
        cmd = confine.wrap(cmd, confine.Confinement(scratch, _unmasked(needed), confine.default_hidden(scratch)), bwrap)
    try:
        proc = subprocess.run(cmd, cwd=scratch, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise UserError("E-EXPORT-FAILED", f"MNN's converter did not finish in {TIMEOUT_S} s",
                        "export mnn for a smaller model, or drop the target mnn") from exc
    log = (proc.stdout + proc.stderr).strip()
    result_file = scratch / "result.json"
    result = json.loads(result_file.read_text()) if proc.returncode == 0 and result_file.is_file() else None
    if result is None or result["done"] < len(steps):
        rc = proc.returncode
        if confined and rc > 128 and rc - 128 in signal.valid_signals():
            rc = -(rc - 128)  # bwrap exits with 128 + N when its command is killed by signal N
        raise _failure(rc, log, onnx_graph)
    return ToolRun(log, result.get("probe"), note)


def _unmasked(paths) -> tuple[Path, ...]:
    """Folders the confined child must read: what lies below /tmp or /run (masked by the sandbox) is
    bound again read-only, whole top folder (a virtual environment in /tmp may be a tree of relative
    symlinks); everything else is visible anyway."""
    from edgekit.confine import MASKED_DIRS

    out = []
    for p in paths:
        for q in (Path(p).absolute(), Path(p).resolve()):
            for mask in MASKED_DIRS:
                if q.is_relative_to(mask) and q != Path(mask):
                    out.append(Path(mask) / q.relative_to(mask).parts[0])
    return tuple(dict.fromkeys(out))


def _failure(returncode: int, log: str, onnx_graph) -> UserError:
    missing = re.findall(r"These Op Not Support: ((?:\S+::\S+\s*)+)", log)
    if missing:
        ops = [o.split("::", 1)[1] for o in missing[0].split()]
        node = next((n.name for n in onnx_graph.node if n.op_type == ops[0]), None) if onnx_graph is not None else None
        return UnsupportedOpError("mnn", ops[0], node, f"drop the target mnn, or replace {ops[0]} in the model "
                                  "with ops MNN's ONNX converter supports")
    tail = "\n".join(log.splitlines()[-12:])
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        how = f"was killed by signal {name}"
    else:
        how = f"exited with code {returncode}" if returncode else "wrote no model"
    return UserError("E-EXPORT-FAILED", f"MNN's converter {how}: {tail[-800:]}",
                     "report it with the model; export the other targets, or the model to onnx")


def write_log(log: str) -> None:
    """The converter's log on stderr: the pipeline keeps a target's console output in its report."""
    if log:
        print(log, file=sys.stderr)


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("MNN")
    except PackageNotFoundError:
        return "not installed"


def available() -> None:
    """E-DEP-MISSING unless the MNN wheel and its converter module ``_tools`` (a top-level module the
    wheel installs next to the ``MNN`` package: checked to be that one) are installed."""
    import importlib.util

    from edgekit.errors import missing_dependency

    tools, mnn = importlib.util.find_spec("_tools"), importlib.util.find_spec("MNN")
    if tools is None or mnn is None or tools.origin is None or mnn.origin is None:
        raise missing_dependency("mnn", "MNN", "mnn")
    if Path(tools.origin).parent != Path(mnn.origin).parent.parent:
        raise UserError("E-DEP-MISSING", f"the module _tools at {tools.origin} is not MNN's converter (MNN is at "
                        f"{Path(mnn.origin).parent})", "reinstall MNN: pip install -c constraints.txt 'edgekit[mnn]'")

