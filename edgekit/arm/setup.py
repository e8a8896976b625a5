"""Build, once, the aarch64 user space that edgekit's ARM checks run in under qemu-user.

Layout of one environment (a folder under the cache, named after a hash of the recipe):

    root/                 Debian bookworm arm64: debootstrap's first stage plus python3.11 and its libs
    root/opt/site/        aarch64 wheels of numpy and of each ARM-capable target's runtime
                          (TargetInfo.arm_wheels: ai-edge-litert, ncnn, onnxruntime, openvino, MNN; the
                          host's versions), and TargetInfo.arm_exact_wheels at exactly their pinned
                          versions, without their declared dependencies (torch 2.9.1 and executorch
                          1.0.1: the host's torch has no CPU build for aarch64 on PyPI)
    views/<cpu>/          what qemu's -L points at for one emulated CPU: relative symlinks into root/
                          and a fake ARM proc/cpuinfo for that CPU (qemu 7.2 does not emulate one;
                          with the host's x86 file the TFLite interpreter segfaulted here, and
                          STACK.md saw XNNPACK silently unused)
    stamp.json            versions of everything above, build time and size

Everything is built in a temporary folder next to the final one and renamed at the end, so a failed
or interrupted build leaves nothing half-made. Run ``python -m edgekit.arm`` to build it.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.errors import InternalError, UserError

SETUP_COMMAND = "edgekit arm setup"
SUITE = "bookworm"
PYTHON = "python3.11"
# debootstrap resolves these to python3.11 plus every library it needs (18 packages on bookworm);
# they land in debootstrap/base, which the first stage downloads but does not unpack.
DEBS = ("python3.11-minimal", "libpython3.11-stdlib")
# The runtimes' wheels, pinned to the versions the host runs (these when it has none), so ARM and
# host runs differ only by the machine; a host upgrade changes the recipe, hence a new environment.
# numpy 2.x has cp311 manylinux_2_27/2_28 aarch64 wheels that run on Debian's Python 3.11.2.
# The targets' runtimes come from their TargetInfo.arm_wheels; numpy is every runner's.
BASE_WHEELS = {"numpy": "2.4.6"}
# Every manylinux tag bookworm's glibc (2.36) runs, newest first: pip takes --platform tags literally
# (pip 23 does not add the older glibc tags), and the wheels carry different ones: numpy, ai-edge-litert,
# ncnn, onnxruntime 2_27/2_28; openvino 2026.4.1 only manylinux_2_35; MNN 3.6.1 manylinux2014 (2_17).
GLIBC_MINOR = 36
PLATFORMS = (*(f"manylinux_2_{v}_aarch64" for v in range(GLIBC_MINOR, 16, -1)), "manylinux2014_aarch64")
TOOLS = {"qemu-aarch64-static": "qemu-user-static", "debootstrap": "debootstrap"}
# What a view takes from root/. qemu -L looks every absolute path up in the view first and uses the
# host's only when it is not there, so /tmp, /dev, /home, /root (bundles, the run's scratch folder)
# must stay the host's.
GUEST_DIRS = ("bin", "etc", "lib", "opt", "sbin", "usr")
# What no runner in the guest needs, removed from opt/site after the install: torch's C++ headers
# (61 MB, for building extensions). torchgen and torch/bin/torch_shm_manager stay: torch imports the
# one and checks for the other.
GUEST_UNUSED = ("torch/include",)
LAYOUT = 3  # bump when the layout changes: the recipe hash changes, so the environment is rebuilt

# Emulated CPUs: qemu -cpu name -> (MIDR part number, what it stands for). All ARM Ltd (0x41).
# qemu 7.2 (Debian bookworm) has no cortex-a55. "max" and "a64fx" are refused: they have SVE, and
# int8 results were garbage with "max" (see STACK.md).
CPUS: dict[str, tuple[int, str]] = {
    "cortex-a35": (0xD04, "ARMv8.0 little core"),
    "cortex-a53": (0xD03, "ARMv8.0 little core, most common low-end phone CPU"),
    "cortex-a57": (0xD07, "ARMv8.0 big core"),
    "cortex-a72": (0xD08, "ARMv8.0 big core (Raspberry Pi 4)"),
    "cortex-a76": (0xD0B, "ARMv8.2 big core with dot product (mid/high-end phones)"),
    "neoverse-n1": (0xD0C, "ARMv8.2 server core (Graviton2, Ampere Altra)"),
}
REFUSED_CPUS = {
    "max": "qemu's 'max' CPU enables SVE/SME, with which int8 results were garbage",
    "a64fx": "a64fx has 512-bit SVE, which no phone has",
}
DEFAULT_CPU = "cortex-a53"  # also written to root/proc/cpuinfo for a plain `qemu -L root`

# Linux arm64 AT_HWCAP / AT_HWCAP2 bit names (arch/arm64/include/uapi/asm/hwcap.h), as /proc/cpuinfo
# prints them.
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
         "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
          "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres").split()
# Guest code setting ``hwcap``: the CPU features qemu reports to programs, named like the kernel does.
HWCAP_CODE = f"""
import ctypes, json
getauxval = ctypes.CDLL(None).getauxval
getauxval.restype = ctypes.c_ulong
hwcap = []
for at, table in ((16, {HWCAP!r}), (26, {HWCAP2!r})):
    bits = getauxval(at)
    hwcap += [n for i, n in enumerate(table) if bits >> i & 1]
"""


@dataclass(frozen=True)
class ArmEnv:
    """A built aarch64 environment (see the module docstring for its layout)."""

    home: Path
    qemu: Path
    versions: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def root(self) -> Path:
        return self.home / "root"

    @property
    def site(self) -> Path:
        return self.root / "opt" / "site"

    def view(self, cpu: str) -> Path:
        return self.home / "views" / cpu

    @property
    def cache(self) -> Path:
        return self.home.parent


def default_cache() -> Path:
    base = os.environ.get("EDGEKIT_CACHE")
    return Path(base) / "arm" if base else Path.home() / ".cache" / "edgekit" / "arm"


def _arm_targets() -> list:
    from edgekit.converters import all_converters

    return [c for c in all_converters() if c.info.arm]


def wheels() -> dict[str, str]:
    """dist -> version of every wheel the emulated user space gets: numpy and each ARM-capable
    target's runtime, at the host's version (so ARM and host runs differ only by the machine), and
    the targets' exact pins (``exact_wheels``) at their own versions."""
    pins = dict(BASE_WHEELS)
    for conv in _arm_targets():
        for req in conv.info.arm_wheels:
            dist, _, version = req.partition("==")
            pins[dist] = version
    out = {}
    for dist, version in pins.items():
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = version
    exact = exact_wheels()
    return {d: v for d, v in out.items() if _norm(d) not in {_norm(e) for e in exact}} | exact


def exact_wheels() -> dict[str, str]:
    """dist -> version of the wheels ARM-capable targets pin exactly (TargetInfo.arm_exact_wheels):
    the host's version has no usable aarch64 build, so the guest runs this one, installed without
    its declared dependencies. Two targets pinning one dist to different versions is a bug."""
    pins: dict[str, tuple[str, str]] = {}
    for conv in _arm_targets():
        for req in conv.info.arm_exact_wheels:
            dist, sep, version = req.partition("==")
            if not sep or not version:
                raise InternalError(f"target {conv.info.name}: arm_exact_wheels entry {req!r} is not 'dist==version'")
            seen = pins.setdefault(_norm(dist), (dist, version))
            if seen[1] != version:
                raise InternalError(f"targets pin {dist} to both {seen[1]} and {version} in arm_exact_wheels")
    return dict(pins.values())


def guest_versions(target) -> dict[str, str]:
    """dist -> version of a target's exact pins that differ from the host's (what its ARM rows run)."""
    out = {}
    for req in target.info.arm_exact_wheels:
        dist, _, version = req.partition("==")
        if _host_version(dist) != version:
            out[dist] = version
    return out


def _host_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _norm(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _runtime_imports() -> list[str]:
    """The module each ARM-capable runner imports (the first of its alternatives), and the import
    name of each exactly pinned wheel (torch, executorch), for the check."""
    exact = {_norm(d).replace("-", "_") for d in exact_wheels()}
    return sorted({m.split("|")[0] for c in _arm_targets() for m in c.info.runtime_modules} | exact)


def _masked_modules() -> tuple[str, ...]:
    """Modules the build check masks (as absent) before importing the runtimes (TargetInfo.arm_masked:
    e.g. a runtime's telemetry, which an import alone would start)."""
    return tuple(sorted({m for c in _arm_targets() for m in c.info.arm_masked}))


def recipe() -> dict:
    return {"layout": LAYOUT, "suite": SUITE, "arch": "arm64", "debs": list(DEBS), "wheels": wheels(),
            "platforms": list(PLATFORMS), "cpus": sorted(CPUS)}


def env_dir(cache_dir: Path | None = None) -> Path:
    key = hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir or default_cache()) / f"{SUITE}-arm64-{key}"


def find(cache_dir: Path | None = None) -> ArmEnv:
    """The built environment; E-DEP-MISSING naming the setup command when it or qemu is missing."""
    home = env_dir(cache_dir)
    qemu = shutil.which("qemu-aarch64-static")
    if qemu is None:
        raise UserError("E-DEP-MISSING", "ARM emulation needs qemu-aarch64-static, which is not installed",
                        f"run `{SETUP_COMMAND}` (installs qemu-user-static and builds the aarch64 root)")
    stamp = home / "stamp.json"
    if not stamp.is_file():
        raise UserError("E-DEP-MISSING", f"the aarch64 root for ARM emulation is not built (no {stamp})",
                        f"run `{SETUP_COMMAND}` (once; about a minute and 1 GB)")
    return ArmEnv(home, Path(qemu), json.loads(stamp.read_text()))


def prepare(cache_dir: Path | None = None, progress: Callable[[str], None] = print) -> ArmEnv:
    """Build the environment if needed (once; returns at once when it is there) and return it."""
    home = env_dir(cache_dir)
    if (home / "stamp.json").is_file() and shutil.which("qemu-aarch64-static"):
        return find(cache_dir)
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the stamp
        _install_tools(progress)
        for stale in home.parent.glob(".build-*"):  # left by a killed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if not (home / "stamp.json").is_file():
            _build(home, progress)
    return find(cache_dir)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise UserError("E-DEP-MISSING", f"{what} failed (exit {proc.returncode}): {tail}",
                        f"run `{' '.join(map(str, cmd))}` by hand to see why, then `{SETUP_COMMAND}`")
    return proc


def _install_tools(progress) -> None:
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise UserError("E-DEP-MISSING", f"ARM emulation needs {', '.join(missing)}",
                        f"run `sudo {' '.join(cmd)}`, then `{SETUP_COMMAND}`")
    progress(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(cmd, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env)
        _run(cmd, "apt-get install", env=env)


def debian_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses on this machine for ``suite`` (deb822 .sources or one-line .list)."""
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
             *sorted((apt / "sources.list.d").glob("*.sources"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", block, re.M))
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        else:
            for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
                if m.group(2) == suite:
                    return m.group(1)
    return "http://deb.debian.org/debian"


def _build(home: Path, progress) -> None:
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home.parent))
    try:
        root = tmp / "root"
        mirror = debian_mirror()
        progress(f"debootstrap --foreign {SUITE} arm64 from {mirror}")
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={','.join(DEBS)}",
              SUITE, str(root), mirror], "debootstrap")
        debs = _unpack_base(root)
        progress(f"unpacked {len(debs)} debs ({', '.join(DEBS)} and their libraries)")
        (root / "proc").unlink()  # the first stage's absolute symlink to the host's /proc
        (root / "proc").mkdir()
        (root / "proc" / "cpuinfo").write_text(_cpuinfo(DEFAULT_CPU, []))
        pins = wheels()
        progress(f"pip install --target opt/site {' '.join(f'{k}=={v}' for k, v in pins.items())} (aarch64 wheels; "
                 f"without dependencies: {' '.join(f'{k}=={v}' for k, v in exact_wheels().items()) or 'none'})")
        installed = _pip_install(root / "opt" / "site", tmp, pins, exact_wheels())
        qemu = shutil.which("qemu-aarch64-static")
        features = {}
        for cpu in sorted(CPUS):
            features[cpu] = _make_view(tmp, cpu, qemu)
        progress("probed the CPU features of " + ", ".join(sorted(CPUS)))
        check = (f"import sys; sys.modules.update(dict.fromkeys({_masked_modules()!r}));"
                 f"import importlib.metadata as m, numpy, {', '.join(_runtime_imports())}, json;"
                 f"print(json.dumps({{d: m.version(d) for d in {sorted(pins)!r}}} | {{'python': sys.version.split()[0]}}))")
        # the last line: MNN prints the CPU features it found ("The device supports: ...") on import
        seen = json.loads(_guest(qemu, tmp / "views" / DEFAULT_CPU, tmp / "root" / "opt" / "site", DEFAULT_CPU,
                                 check).strip().splitlines()[-1])
        size = sum(p.lstat().st_size for p in tmp.rglob("*"))
        # the guest runs these versions, not the host's (TargetInfo.arm_exact_wheels)
        exact = {d: {"guest": v, "host": _host_version(d)} for d, v in exact_wheels().items()}
        stamp = {"recipe": recipe(), "mirror": mirror, "debs": debs, "wheels": installed, "guest": seen,
                 "exact_wheels": exact,
                 "cpu_features": features, "qemu": _qemu_version(qemu),
                 "build_seconds": round(time.perf_counter() - t0, 1), "size_mb": round(size / 2**20)}
        (tmp / "stamp.json").write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
        os.rename(tmp, home)
        progress(f"ARM environment ready in {stamp['build_seconds']} s, {stamp['size_mb']} MB: {home}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack_base(root: Path) -> dict[str, str]:
    """Unpack what the first stage only downloaded (python3.11 and its libraries), in name order."""
    base = sorted((root / "debootstrap" / "base").read_text().split())
    paths = dict(line.split() for line in (root / "debootstrap" / "debpaths").read_text().splitlines() if line.strip())
    versions = {}
    for pkg in base:
        deb = root / paths[pkg].lstrip("/")
        # Not `dpkg-deb -x`: five of these debs still ship ./lib/..., and plain extraction replaces the
        # merged-/usr symlink root/lib with a directory (the dynamic loader then goes missing).
        _run(["sh", "-c", 'dpkg-deb --fsys-tarfile "$0" | tar -x --keep-directory-symlink -C "$1"', str(deb), str(root)],
             f"unpacking {deb.name}")
        versions[pkg] = deb.name.split("_")[1]
    for deb in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        deb.unlink()  # ~37 MB nobody needs once unpacked
    return versions


def _pip_install(site: Path, tmp: Path, pins: dict[str, str], exact: dict[str, str]) -> dict[str, str]:
    """The host-version pins with their dependencies, then the exact pins without theirs: torch's and
    executorch's metadata name sympy, networkx, jinja2, pytest, pandas, coremltools, ... (and, since
    pip evaluates markers for the host's x86_64, CUDA libraries), none of which the runners import."""
    # Dependencies (protobuf, ml_dtypes, ...) are pinned to the host's versions too, when it has them.
    host = {_norm(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}
    constraints = tmp / "constraints.txt"
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(host.items())
                                   if n not in {_norm(p) for p in pins}))
    base = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(site), "--only-binary=:all:",
            *[a for p in PLATFORMS for a in ("--platform", p)], "--python-version", "3.11"]
    rest = {k: v for k, v in pins.items() if k not in exact}
    _run([*base, "-c", str(constraints), *[f"{k}=={v}" for k, v in rest.items()]], "pip install of the aarch64 wheels")
    if exact:
        _run([*base, "--no-deps", *[f"{k}=={v}" for k, v in exact.items()]], "pip install of the exactly pinned aarch64 wheels")
    for rel in GUEST_UNUSED:
        shutil.rmtree(site / rel, ignore_errors=True)
    return dict(p.name.removesuffix(".dist-info").split("-", 1) for p in sorted(site.glob("*.dist-info")))


def _make_view(home: Path, cpu: str, qemu: str) -> list[str]:
    """views/<cpu>: relative links to root/'s system folders and a proc/cpuinfo for ``cpu``."""
    view = home / "views" / cpu
    (view / "proc").mkdir(parents=True)
    for name in GUEST_DIRS:
        (view / name).symlink_to(Path("..", "..", "root", name))
    features = json.loads(_guest(qemu, view, home / "root" / "opt" / "site", cpu,
                                 HWCAP_CODE + "print(json.dumps(hwcap))"))
    (view / "proc" / "cpuinfo").write_text(_cpuinfo(cpu, features))
    return features


def _cpuinfo(cpu: str, features: list[str]) -> str:
    """A /proc/cpuinfo as an arm64 Linux kernel prints it, one entry per host core."""
    part, _ = CPUS[cpu]
    features = features or "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid".split()  # ARMv8.0 baseline
    one = ("processor\t: {n}\nBogoMIPS\t: 50.00\nFeatures\t: " + " ".join(features) +
           f"\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0x{part:03x}\n"
           "CPU revision\t: 0\n\n")
    return "".join(one.format(n=n) for n in range(os.cpu_count() or 1))


def _guest(qemu: str, view: Path, site: Path, cpu: str, code: str) -> str:
    """Run python code in the guest and return its stdout."""
    env = {**os.environ, "QEMU_CPU": cpu, "PYTHONPATH": str(site)}
    proc = _run([qemu, "-L", str(view), str(view / "usr" / "bin" / PYTHON), "-P", "-s", "-c", code],
                f"the aarch64 python under qemu ({cpu})", env=env, timeout=600)
    return proc.stdout


def _qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def main() -> int:
    try:
        env = prepare()
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 1
    keys = ("build_seconds", "size_mb", "wheels", "exact_wheels")
    print(json.dumps({"home": str(env.home), **{k: env.versions[k] for k in keys if k in env.versions}}, indent=1))
    return 0
