"""Confine the runtime subprocess of ``edgekit.isolate`` with bubblewrap (ARCHITECTURE.md, "Trust").

An artifact from a pull request is untrusted code in effect: a TorchScript file can call
``torch.from_file(path, shared=True)`` and write through it, a native runtime can have bugs. The
runner therefore starts inside ``bwrap`` (Debian package ``bubblewrap``), where it

- sees the whole file system read-only (the bundle folder too), with a private, empty /tmp and /run
  (/run holds the host's daemon sockets: docker, dbus, databases; a read-only mount does not stop a
  connect() to a socket file) and a minimal /dev; well-known credential files under $HOME
  (~/.ssh, ~/.aws, ~/.docker, ~/.netrc, ...) and the .git/config of the checkout holding the bundle
  (where CI checkouts keep their token) are hidden;
- can write only into its private scratch folder, which stays visible to the parent (the request
  and the results are exchanged there);
- has no network (a new network namespace: loopback only, nothing outside is reachable, not even
  the host's own 127.0.0.1), no view of host processes (a new PID namespace: it can neither see nor
  signal them), no capabilities (``--cap-drop ALL``: as root, bwrap would otherwise leave the child
  the capabilities to remount the read-only binds writable), its own session (no terminal
  injection), and dies with its parent;
- gets a minimal environment (``child_env``): an allow-list, never the parent's environment
  wholesale, so CI secrets in environment variables do not reach it; HOME, TMPDIR and the cache
  folders point into the scratch folder so runtimes that write caches work.

Where bwrap is missing or does not work (no user namespaces), runs go on unconfined and say so
(``available()`` gives the reason; ``RunOutcome.confined`` / ``confinement_note`` carry it).
``EDGEKIT_NO_CONFINE=1`` disables confinement explicitly (e.g. to debug a runtime); the outcome then
says so too.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

DISABLE_VAR = "EDGEKIT_NO_CONFINE"
DISABLED_NOTE = f"unconfined: disabled by {DISABLE_VAR}"
CONFINED_NOTE = ("confined by bubblewrap: read-only file system, private scratch and /tmp, no network, "
                 "no host processes, minimal environment")

# Mounted empty inside the sandbox; what the child needs from below them is bound again, read-only.
MASKED_DIRS = ("/tmp", "/run")
# Credentials under $HOME hidden from the child (a folder becomes an empty read-only tmpfs, a file /dev/null).
HIDDEN_IN_HOME = (".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".config/gh", ".docker", ".kube",
                  ".netrc", ".git-credentials", ".pypirc", ".npmrc", ".cargo/credentials", ".cargo/credentials.toml")

# Environment variables the child inherits from the parent (names, then name prefixes); everything
# else (tokens, cloud keys, CI secrets) is dropped. extra_env of run_artifact is added as given.
ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS",
             "PYTHONFAULTHANDLER", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS", "TF_CPP_MIN_LOG_LEVEL",
             "TF_CPP_MAX_VLOG_LEVEL")
ENV_ALLOW_PREFIXES = ("LC_", "QEMU_", "EDGEKIT_")


@dataclass(frozen=True)
class Confinement:
    """What the confined child may touch.

    scratch: the only writable folder (bound read-write at the same path).
    read_only: paths the child must read that may lie below a masked folder (/tmp, /run): the bundle,
        the launcher's interpreter and libraries; bound read-only at the same path. Paths outside the
        masked folders are visible anyway (read-only) and are not bound again.
    hide: files and folders to hide (credentials); missing ones are skipped.
    """

    scratch: Path
    read_only: tuple[Path, ...] = ()
    hide: tuple[Path, ...] = ()


def default_hidden(*near: Path) -> tuple[Path, ...]:
    """Credential paths to hide: HIDDEN_IN_HOME under $HOME, and the .git/config of the repositories
    holding ``near`` (a CI checkout keeps its token there)."""
    home = Path.home()
    out = [home / p for p in HIDDEN_IN_HOME]
    for start in near:
        for d in (Path(start).resolve(), *Path(start).resolve().parents):
            if (d / ".git").is_dir():
                out.append(d / ".git" / "config")
                break
    return tuple(dict.fromkeys(out))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def wrap(cmd: Sequence[str], conf: Confinement, bwrap: str = "bwrap") -> list[str]:
    """The command line running ``cmd`` confined as ``conf`` says. Mount order matters: bwrap applies
    the options in order, so the masks come first, then the read-only binds below them (the bundle
    is often under /tmp), then the hidden credentials, and the writable scratch folder last (it is
    under /tmp, and nothing bound after it may cover it)."""
    scratch = str(Path(conf.scratch).resolve())
    args = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for d in MASKED_DIRS:
        args += ["--tmpfs", d]
    seen = set()
    for p in conf.read_only:
        for cand in dict.fromkeys((str(Path(p).absolute()), str(Path(p).resolve()))):
            masked = any(_under(cand, d) and cand != d for d in MASKED_DIRS)
            if masked and cand not in seen and os.path.exists(cand):
                seen.add(cand)
                args += ["--ro-bind", cand, cand]
    for p in conf.hide:
        p = Path(p)
        if p.is_symlink() or not p.exists():
            continue
        if p.is_dir():
            args += ["--tmpfs", str(p), "--remount-ro", str(p)]
        else:
            args += ["--ro-bind", "/dev/null", str(p)]
    args += ["--bind", scratch, scratch,
             "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--"]
    return args + list(cmd)


def child_env(scratch: Path, extra: Mapping[str, str] | None = None,
              parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the ENV_ALLOW part of the parent's, HOME/TMPDIR/caches inside the
    scratch folder (the folders are created), then ``extra`` as given."""
    parent = os.environ if parent is None else parent
    env = {k: v for k, v in parent.items() if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    home, tmp = Path(scratch) / "home", Path(scratch) / "tmp"
    for d in (home / ".cache", home / ".config", tmp):
        d.mkdir(parents=True, exist_ok=True)
    env.update({"HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_CONFIG_HOME": str(home / ".config"), "XDG_DATA_HOME": str(home / ".local" / "share"),
                "MPLCONFIGDIR": str(home / ".config" / "matplotlib"), "NUMBA_CACHE_DIR": str(home / ".cache" / "numba"),
                "PYTHONDONTWRITEBYTECODE": "1"})
    env.pop(DISABLE_VAR, None)
    env.update(extra or {})
    return env


def disabled() -> bool:
    return os.environ.get(DISABLE_VAR, "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def available() -> tuple[bool, str]:
    """(True, the bwrap executable) when bwrap is installed and really confines here, else (False, why
    not). Probed once per process by running ``true`` confined as a run would be."""
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "unconfined: bwrap not found on PATH (install the Debian/Ubuntu package bubblewrap)"
    with tempfile.TemporaryDirectory(prefix=f"edgekit-probe-{os.getpid()}-") as tmp:
        try:
            proc = subprocess.run(wrap(["true"], Confinement(Path(tmp), hide=default_hidden()), bwrap=exe),
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"unconfined: bwrap could not be run: {exc}"
    if proc.returncode != 0:
        why = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return False, (f"unconfined: bwrap does not work here ({why[0]}); unprivileged user namespaces may be "
                       "refused (sysctl kernel.apparmor_restrict_unprivileged_userns on Ubuntu 24.04, "
                       "kernel.unprivileged_userns_clone, user.max_user_namespaces, or a container's seccomp profile)")
    return True, exe
