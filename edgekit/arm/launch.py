"""Run edgekit's isolated runner on an emulated ARM CPU: the aarch64 Python of an ArmEnv under
qemu-user, with the real aarch64 wheels of the runtimes.

    cmd, env = launcher(prepare(), "cortex-a76")
    outcome = run_artifact("tflite", artifact.to_dict(), bundle, inputs, launcher=cmd, extra_env=env)
    assert xnnpack_active(outcome.log)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from edgekit.errors import UserError

from .setup import CPUS, HWCAP_CODE, PYTHON, REFUSED_CPUS, SETUP_COMMAND, ArmEnv

XNNPACK_LINE = "Created TensorFlow Lite XNNPACK delegate"


def check_cpu(cpu: str) -> str:
    if cpu in REFUSED_CPUS:
        raise UserError("E-ARGS", f"emulated CPU {cpu!r} is refused: {REFUSED_CPUS[cpu]}",
                        f"pick a named CPU: {', '.join(CPUS)}")
    if cpu not in CPUS:
        raise UserError("E-ARGS", f"unknown emulated CPU {cpu!r}", f"pick one of {', '.join(CPUS)}")
    return cpu


def launcher(env: ArmEnv, cpu: str) -> tuple[list[str], dict[str, str]]:
    """Command prefix and extra environment for ``isolate.run_artifact(..., launcher=, extra_env=)``.

    -P keeps the current directory off sys.path: run from a checkout, it would otherwise shadow the
    staged package with the repository's edgekit/, which has no converters/ inside.
    """
    view = env.view(check_cpu(cpu))
    path = os.pathsep.join([str(stage_sources(env.cache)), str(env.site)])
    return ([str(env.qemu), "-L", str(view), str(view / "usr" / "bin" / PYTHON), "-P", "-s"],
            {"QEMU_CPU": cpu, "PYTHONPATH": path})


def stage_sources(cache: Path) -> Path:
    """A folder to put on the guest's PYTHONPATH in which ``edgekit`` and ``edgekit.converters`` import.

    An editable install maps edgekit.converters to the repository's converters/ (package-dir
    mapping), which a plain PYTHONPATH cannot express; a wheel has it inside edgekit/. Either way the
    staged edgekit/ holds one symlink per source entry plus ``converters``, so edits show at once.
    It holds no other host site-packages: the guest must not see the host's x86 torch or numpy.
    """
    import edgekit
    import edgekit.converters

    src = Path(edgekit.__file__).resolve().parent
    conv = Path(edgekit.converters.__file__).resolve().parent
    stage = cache / "stage" / hashlib.sha256(f"{src}\n{conv}".encode()).hexdigest()[:10]
    pkg = stage / "edgekit"
    pkg.mkdir(parents=True, exist_ok=True)
    want = {e.name: e for e in src.iterdir() if e.name != "__pycache__"}
    want["converters"] = conv
    for name, target in want.items():
        link = pkg / name
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            tmp = pkg / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)  # atomic: a concurrent run sees the old or the new link
    for link in pkg.iterdir():
        if link.is_symlink() and link.name not in want:
            link.unlink(missing_ok=True)
    return stage


def xnnpack_active(log: str) -> bool:
    """Whether the TFLite interpreter in the child created the XNNPACK delegate (from its stderr)."""
    return XNNPACK_LINE in log


def cpu_features(env: ArmEnv, cpu: str) -> dict:
    """The emulated CPU as a program in the guest sees it: HWCAP features (what qemu emulates),
    and the Features and CPU part lines of /proc/cpuinfo (the fake file XNNPACK's cpuinfo reads)."""
    cmd, extra = launcher(env, cpu)
    code = HWCAP_CODE + (
        "info = open('/proc/cpuinfo').read().split('\\n\\n')[0]\n"
        "f = {k.strip(): v.strip() for k, v in (l.split(':', 1) for l in info.splitlines() if ':' in l)}\n"
        "print(json.dumps({'hwcap': hwcap, 'cpuinfo': f['Features'].split(), 'part': f['CPU part']}))\n")
    proc = subprocess.run([*cmd, "-c", code], env={**os.environ, **extra}, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise UserError("E-RUNTIME-CRASH", f"the aarch64 python under qemu ({cpu}) failed: {proc.stderr.strip()[-500:]}",
                        f"rebuild the ARM environment: delete {env.home} and run `{SETUP_COMMAND}`")
    return json.loads(proc.stdout)
