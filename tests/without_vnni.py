"""onnxruntime on an x86 CPU without VNNI, emulated: the run happens under ``qemu-x86_64-static -cpu
Haswell`` (AVX2 and FMA, no AVX-512, no VNNI; qemu-user-static comes with install.sh), so
onnxruntime's MLAS picks the kernels such a CPU runs, whatever the host has. Those kernels have a
fault of their own (u8 x s8 pair sums saturate in int16), which the test host may not show.
Measured: a 6-layer onnx file runs in about 4 s."""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

QEMU = shutil.which("qemu-x86_64-static")
CPU = "Haswell"

_SCRIPT = """
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = opts.inter_op_num_threads = 1
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
feeds = dict(np.load(sys.argv[2]))
np.savez(sys.argv[3], *session.run(None, feeds))
"""


def available() -> bool:
    return platform.machine() == "x86_64" and QEMU is not None


def run_onnx(model, feeds: dict[str, np.ndarray], tmp_path: Path) -> list[np.ndarray]:
    """Outputs of ``model`` (an onnx.ModelProto or a path) on ``feeds``, in onnxruntime on the
    emulated CPU (all graph optimizations, 1 thread: as the runner compiles it)."""
    path = Path(model) if isinstance(model, (str, Path)) else tmp_path / "emulated.onnx"
    if not isinstance(model, (str, Path)):
        path.write_bytes(model.SerializeToString())
    np.savez(tmp_path / "feeds.npz", **feeds)
    subprocess.run([QEMU, "-cpu", CPU, sys.executable, "-c", _SCRIPT, str(path), str(tmp_path / "feeds.npz"),
                    str(tmp_path / "outs.npz")], check=True, capture_output=True, timeout=600)
    outs = np.load(tmp_path / "outs.npz")
    return [outs[f"arr_{i}"] for i in range(len(outs.files))]
