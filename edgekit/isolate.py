"""Run an artifact in its host runtime inside a spawned subprocess.

A segfault, an abort or a hang (bounded by a timeout) in a native runtime becomes a RunOutcome with
an error, and the caller goes on with the other targets. The child imports only edgekit, numpy and
the target's own runtime (for TFLite: never TensorFlow).

Protocol: the parent writes request.json and inputs.npz into a scratch folder; the child writes
outputs.npz and result.json there. Inputs are stacked per model input: array k has shape
(N, *input_shape); outputs likewise. The scratch folder is named ``edgekit-run-<pid>-*`` after the
parent's pid, so ``clean_stale_runs`` can remove the ones a killed parent left behind.

Confinement (edgekit.confine): the child runs under bubblewrap with a read-only view of the file
system, the scratch folder as its only writable place, no network, no view of host processes and a
minimal environment. Where that is not possible the run goes on unconfined and the outcome says so
(``RunOutcome.confined``, ``RunOutcome.confinement_note``); ``EDGEKIT_NO_CONFINE=1`` disables it.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekit import confine

DEFAULT_TIMEOUT_S = 600.0
RUN_PREFIX = "edgekit-run-"
# Temp folders named <prefix><pid>-* by edgekit processes; clean_stale_runs removes those of dead pids.
STALE_PREFIXES = (RUN_PREFIX, "edgekit-inspect-", "edgekit-probe-")


@dataclass
class RunOutcome:
    outputs: list[np.ndarray] | None  # stacked per output, or None on error
    latency_ms: float | None  # median per-sample latency, 1 thread unless said otherwise
    error: dict | None = None  # {"code", "message", "fix"}
    log: str = ""  # tail of the child's stderr (runtime messages, e.g. XNNPACK delegate lines)
    runtime_s: float = 0.0
    extra: dict = field(default_factory=dict)
    confined: bool = False  # the child ran under bubblewrap (edgekit.confine)
    # Confined: what the confinement is. Unconfined: why not (bwrap missing or not working here, or
    # "disabled by EDGEKIT_NO_CONFINE"); to be shown on the console and in the report.
    confinement_note: str = ""


def run_artifact(target: str, artifact: dict, root: Path, inputs: list[np.ndarray], *,
                 threads: int = 1, strict: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S, warmup: int = 1,
                 launcher: Sequence[str] | None = None, extra_env: dict[str, str] | None = None,
                 per_layer: int = 0) -> RunOutcome:
    """Run every sample through the artifact in a fresh interpreter; never raises for runtime faults.

    launcher: the interpreter command (default: this Python); e.g. an aarch64 Python under qemu-user,
    which then needs the edgekit sources on PYTHONPATH via extra_env.
    per_layer: also compute the converter's per-layer fidelity on the first N samples (0: no).
    """
    _clean_once()
    if confine.disabled():
        confined, note = False, confine.DISABLED_NOTE
    else:
        confined, note = confine.available()  # note: the bwrap executable, or why it cannot confine here
    bwrap, note = (note, confine.CONFINED_NOTE) if confined else ("", note)
    with tempfile.TemporaryDirectory(prefix=f"{RUN_PREFIX}{os.getpid()}-") as tmp:
        tmp = Path(tmp)
        outcome = _run(target, artifact, Path(root).resolve(), inputs, tmp, threads, strict, timeout_s, warmup,
                       [*(launcher or [sys.executable])], extra_env, per_layer, bwrap)
        outcome.confined, outcome.confinement_note = confined, note
        return outcome


def _run(target: str, artifact: dict, root: Path, inputs: list[np.ndarray], tmp: Path, threads: int, strict: bool,
         timeout_s: float, warmup: int, launcher: list[str], extra_env: dict[str, str] | None, per_layer: int,
         bwrap: str) -> RunOutcome:
    np.savez(tmp / "inputs.npz", **{f"in{k}": a for k, a in enumerate(inputs)})
    (tmp / "request.json").write_text(json.dumps({
        "target": target, "artifact": artifact, "root": str(root),
        "threads": threads, "strict": strict, "warmup": warmup, "per_layer": per_layer,
    }))
    env = confine.child_env(tmp, extra_env)
    # One thread for every runtime's pool and for BLAS, so host checks are reproducible.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [*launcher, "-m", "edgekit.isolate", str(tmp)]
    if bwrap:
        # The bundle and whatever the launcher runs stay readable when they lie below a folder the
        # sandbox masks (/tmp): an ARM environment there is a tree of relative symlinks, so its
        # whole top folder is bound (read-only), not only the paths named on the command line.
        tools = [p for p in (*launcher, *env.get("PYTHONPATH", "").split(os.pathsep), *_own_code()) if os.path.isabs(p)]
        needed = (root, *(_top_below_mask(q) for p in tools for q in (Path(p).absolute(), Path(p).resolve())))
        cmd = confine.wrap(cmd, confine.Confinement(tmp, needed, confine.default_hidden(root, Path.cwd())), bwrap)
    t0 = time.perf_counter()
    try:
        # cwd: the scratch folder, so `-m` does not put the caller's folder (maybe an untrusted checkout) on sys.path
        proc = subprocess.run(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stderr or b"")[-4000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-4000:]
        return RunOutcome(None, None, _crash(target, f"timed out after {timeout_s:.0f} s"), str(log),
                          time.perf_counter() - t0)
    elapsed = time.perf_counter() - t0
    log = _clip(proc.stderr)
    result_file = tmp / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        rc = proc.returncode
        if bwrap and rc > 128 and rc - 128 in signal.valid_signals():
            rc = -(rc - 128)  # bwrap exits with 128 + N when the command is killed by signal N
        how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        return RunOutcome(None, None, _crash(target, f"runtime process {how}"), log, elapsed)
    # What the child wrote is untrusted: regular files only (a symlink could point the parent at a host
    # file, a FIFO would block it), and a malformed result is a coded error, not an exception.
    try:
        with _open_regular(result_file) as f:
            result = json.loads(f.read())
        if result.get("error"):
            error = result["error"]
            if not (isinstance(error, dict) and all(isinstance(error.get(k), str) for k in ("code", "message"))):
                raise ValueError("malformed error")
            return RunOutcome(None, None, error, log, elapsed)
        with _open_regular(tmp / "outputs.npz") as f, np.load(f, allow_pickle=False) as z:
            outputs = [z[f"out{k}"] for k in range(len(z.files))]
        latency, extra = result["latency_ms"], result.get("extra", {})
        if not isinstance(latency, (int, float)) or not isinstance(extra, dict):
            raise ValueError("malformed result")
    except Exception as exc:  # noqa: BLE001 - whatever the child wrote, the parent goes on
        return RunOutcome(None, None, _crash(target, f"runtime process wrote an unreadable result "
                                                     f"({type(exc).__name__}: {str(exc)[:200]})"), log, elapsed)
    return RunOutcome(outputs, float(latency), None, log, elapsed, extra)


def _open_regular(path: Path):
    """A file the child wrote, opened without following a symlink and only when it is a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path.name} is not a regular file")
    return os.fdopen(fd, "rb")


def _own_code() -> list[str]:
    """Where the child imports edgekit and its targets from (a checkout or virtual environment below
    /tmp is masked in the sandbox otherwise: the child failed with "No module named 'edgekit'")."""
    import edgekit
    import edgekit.converters

    return [str(Path(edgekit.__file__).parent), str(Path(edgekit.converters.__file__).parent), sys.prefix, sys.base_prefix]


def _top_below_mask(path: Path) -> Path:
    """/tmp/a/b/c -> /tmp/a (for each folder confine masks); other paths unchanged."""
    for mask in confine.MASKED_DIRS:
        if path.is_relative_to(mask) and path != Path(mask):
            return Path(mask) / path.relative_to(mask).parts[0]
    return path


def clean_stale_runs(folder: Path | None = None) -> list[Path]:
    """Remove the scratch folders (``edgekit-run-<pid>-*``, ``edgekit-inspect-<pid>-*``) in the temp
    folder whose creating process is gone (killed before it could clean up); returns what it removed.
    Touches nothing else: not other names, not symlinks, not folders of another user or of a live pid."""
    folder = Path(folder or tempfile.gettempdir())
    pattern = re.compile("^(?:" + "|".join(re.escape(p) for p in STALE_PREFIXES) + r")(\d+)-[^/]+$")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or int(m.group(1)) <= 0 or int(m.group(1)) == os.getpid():
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(m.group(1)), 0)
            continue  # alive (or reused by another live process): keep
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(Path(entry.path))
        except OSError:  # PermissionError: a live process of another user; anything else: leave it
            continue
    return removed


@functools.cache
def _clean_once() -> None:
    clean_stale_runs()


def _clip(text: str, keep: int = 4000) -> str:
    """Head and tail of a runtime's log: delegate lines come first, crash messages last."""
    return text if len(text) <= 2 * keep else f"{text[:keep]}\n[... {len(text) - 2 * keep} characters ...]\n{text[-keep:]}"


def _crash(target: str, how: str) -> dict:
    return {"code": "E-RUNTIME-CRASH", "message": f"the {target} runtime failed: {how}",
            "fix": "see the log in report.json; run `edgekit verify` again to check it is reproducible"}


def _child(tmp: Path) -> int:
    """Entry point of the spawned process."""
    from edgekit.errors import UserError

    req = json.loads((tmp / "request.json").read_text())
    stage = "load"
    try:
        from edgekit.converters import get
        from edgekit.converters.base import Artifact

        conv = get(req["target"])
        conv.check_available(runtime_only=True)
        run = conv.runner(Artifact.from_dict(req["artifact"]), Path(req["root"]), threads=req["threads"],
                          strict=req.get("strict", True))
        with np.load(tmp / "inputs.npz") as z:
            inputs = [z[f"in{k}"] for k in range(len(z.files))]
        stage = "run"
        n = inputs[0].shape[0]
        for _ in range(req["warmup"]):
            run([a[0] for a in inputs])
        times, outs = [], []
        for i in range(n):
            t = time.perf_counter()
            out = run([a[i] for a in inputs])
            times.append((time.perf_counter() - t) * 1e3)
            outs.append([np.asarray(o, dtype=np.float32) for o in out])
        stacked = {f"out{k}": np.stack([o[k] for o in outs]) for k in range(len(outs[0]))}
        np.savez(tmp / "outputs.npz", **stacked)
        result = {"latency_ms": float(np.median(times)), "error": None, "extra": {}}
        if req.get("per_layer"):
            stage = "per-layer"
            samples = [tuple(a[i] for a in inputs) for i in range(min(n, req["per_layer"]))]
            layers = conv.per_layer(Artifact.from_dict(req["artifact"]), Path(req["root"]), samples)
            if layers is not None:
                result["extra"]["per_layer"] = layers
    except UserError as exc:
        result = {"error": exc.to_dict()}
    except Exception as exc:  # a runtime's own exception: reported, not raised across the process
        message = f"{type(exc).__name__}: {exc}".strip()[:2000]
        if stage == "per-layer":  # the outputs are fine; only the layer-by-layer view failed
            result["extra"]["per_layer_error"] = message
            np.savez(tmp / "outputs.npz", **stacked)
            error = None
        elif stage == "load":
            error = {"code": "E-ARTIFACT-CORRUPT", "message": f"cannot load {req['artifact']['path']}: {message}",
                     "fix": "re-export the bundle; if it persists, report the message"}
        else:
            error = {"code": "E-RUNTIME-FAILED", "message": f"running {req['artifact']['path']} raised {message}",
                     "fix": "check the inputs match the manifest; re-export; if it persists, report the message"}
        result = result if error is None else {"error": error}
    (tmp / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1])))
