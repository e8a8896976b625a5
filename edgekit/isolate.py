"""Run an artifact in its host runtime inside a spawned subprocess.

A segfault, an abort or a hang (bounded by a timeout) in a native runtime becomes a RunOutcome with
an error, and the caller goes on with the other targets. The child imports only edgekit, numpy and
the target's own runtime (for TFLite: never TensorFlow).

Protocol: the parent writes request.json and inputs.npz into a scratch folder; the child writes
outputs.npz and result.json there. Inputs are stacked per model input: array k has shape
(N, *input_shape); outputs likewise.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_TIMEOUT_S = 600.0


@dataclass
class RunOutcome:
    outputs: list[np.ndarray] | None  # stacked per output, or None on error
    latency_ms: float | None  # median per-sample latency, 1 thread unless said otherwise
    error: dict | None = None  # {"code", "message", "fix"}
    log: str = ""  # tail of the child's stderr (runtime messages, e.g. XNNPACK delegate lines)
    runtime_s: float = 0.0
    extra: dict = field(default_factory=dict)


def run_artifact(target: str, artifact: dict, root: Path, inputs: list[np.ndarray], *,
                 threads: int = 1, strict: bool = True, timeout_s: float = DEFAULT_TIMEOUT_S, warmup: int = 1,
                 launcher: Sequence[str] | None = None, extra_env: dict[str, str] | None = None,
                 per_layer: int = 0) -> RunOutcome:
    """Run every sample through the artifact in a fresh interpreter; never raises for runtime faults.

    launcher: the interpreter command (default: this Python); e.g. an aarch64 Python under qemu-user,
    which then needs the edgekit sources on PYTHONPATH via extra_env.
    per_layer: also compute the converter's per-layer fidelity on the first N samples (0: no).
    """
    with tempfile.TemporaryDirectory(prefix="edgekit-run-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "inputs.npz", **{f"in{k}": a for k, a in enumerate(inputs)})
        (tmp / "request.json").write_text(json.dumps({
            "target": target, "artifact": artifact, "root": str(Path(root).resolve()),
            "threads": threads, "strict": strict, "warmup": warmup, "per_layer": per_layer,
        }))
        env = {**os.environ, **(extra_env or {})}
        # One thread for every runtime's pool and for BLAS, so host checks are reproducible.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(threads)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([*(launcher or [sys.executable]), "-m", "edgekit.isolate", str(tmp)], env=env,
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            log = (exc.stderr or b"")[-4000:] if isinstance(exc.stderr, bytes) else (exc.stderr or "")[-4000:]
            return RunOutcome(None, None, _crash(target, f"timed out after {timeout_s:.0f} s"), str(log),
                              time.perf_counter() - t0)
        elapsed = time.perf_counter() - t0
        log = _clip(proc.stderr)
        result_file = tmp / "result.json"
        if proc.returncode != 0 or not result_file.exists():
            rc = proc.returncode
            how = f"killed by signal {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
            return RunOutcome(None, None, _crash(target, f"runtime process {how}"), log, elapsed)
        result = json.loads(result_file.read_text())
        if result.get("error"):
            return RunOutcome(None, None, result["error"], log, elapsed)
        with np.load(tmp / "outputs.npz") as z:
            outputs = [z[f"out{k}"] for k in range(len(z.files))]
        return RunOutcome(outputs, result["latency_ms"], None, log, elapsed, result.get("extra", {}))


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
