"""Where an export lands, and how the new bundle takes the old one's place.

- Only a bundle edgekit wrote is replaced: the folder's manifest must carry edgekit's format marker
  and version, and every entry of the folder must be one edgekit writes. Anything else is
  ``E-OUT-EXISTS`` and nothing is touched (a stray ``manifest.json`` beside the user's files is not
  a bundle).
- One export per destination at a time: a lock file beside it (``.NAME.edgekit-lock``, the
  ``filelock`` library: an OS lock that a crashed process releases by itself). A second export to
  the same ``--out`` fails at once with ``E-OUT-BUSY`` instead of racing the first.
- The swap is atomic: the staged bundle and the old one are exchanged with one
  ``renameat2(RENAME_EXCHANGE)`` (Linux), so at every instant the destination holds either the old
  or the new bundle. Where the file system lacks it, two renames are used and a crash between them
  is repaired by the next export (the old bundle is put back).
- Leftovers of crashed runs (``.NAME.tmp-PID-*`` staging folders, ``.NAME.old-PID-*``) are removed
  or restored by the next export to the same destination, under the lock.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from edgekit.errors import UserError
from edgekit.manifest import FORMAT, MANIFEST

# What edgekit writes at the top of a bundle besides its artifacts' files.
BUNDLE_ENTRIES = frozenset({MANIFEST, "report.json", "report.md", "report.html", "reference.pt2",
                            "verify_inputs.npz", "labels.txt", "tokenizer"})
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.edgekit-lock"


@contextlib.contextmanager
def locked(out: Path):
    """Hold the destination's lock for the whole export; E-OUT-BUSY when another export holds it."""
    from filelock import FileLock, Timeout

    out = Path(out)
    _check_parent(out)
    lock = FileLock(str(lock_path(out)), timeout=0)
    try:
        lock.acquire()
    except Timeout as exc:
        raise UserError("E-OUT-BUSY", f"another edgekit export is writing {out} right now",
                        "wait for it to finish, or pass another --out") from exc
    except OSError as exc:
        raise UserError("E-OUT-UNWRITABLE", f"cannot create the lock file {lock_path(out)}: {exc.strerror or exc}",
                        "pass --out with a folder you can write to") from exc
    try:
        recover(out)
        yield
    finally:
        lock.release()


def _check_parent(out: Path) -> None:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise UserError("E-OUT-UNWRITABLE", f"cannot write into {parent}: {exc.strerror or exc}",
                        "pass --out with a folder you can write to") from exc


def check_replaceable(out: Path) -> None:
    """Raise E-OUT-EXISTS unless ``out`` is absent, an empty folder, or a bundle edgekit wrote."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError("E-OUT-EXISTS", f"{out} exists and is not a folder", "pass --out with a folder path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    fix = "pass --out with a new or empty folder (only a bundle edgekit wrote is replaced)"
    manifest = _marker(out / MANIFEST)
    if manifest is None:
        raise UserError("E-OUT-EXISTS", f"{out} is a non-empty folder that is not an edgekit bundle", fix)
    own = set(BUNDLE_ENTRIES)
    for art in manifest.get("artifacts") or []:
        for f in (art.get("files") or []) if isinstance(art, dict) else []:
            if isinstance(f, dict) and isinstance(f.get("path"), str):
                own.add(f["path"].split("/")[0])
    foreign = sorted(p.name for p in out.iterdir() if p.name not in own)
    if foreign:
        raise UserError("E-OUT-EXISTS", f"{out} holds files edgekit did not write: {', '.join(foreign[:5])}"
                        + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""),
                        "move them out of the bundle folder, or " + fix)


def _marker(path: Path) -> dict | None:
    """The manifest when it says edgekit wrote it (format marker and edgekit version), else None."""
    if path.is_symlink() or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("versions"), dict)
          and isinstance(doc["versions"].get("edgekit"), str))
    return doc if ok else None


def new_stage(out: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))


def swap_in(stage: Path, out: Path) -> None:
    """Make ``stage`` the bundle at ``out``; the old bundle (if any) is removed after the swap."""
    if not out.exists():
        os.rename(stage, out)
        return
    if _exchange(stage, out):
        shutil.rmtree(stage, ignore_errors=True)  # stage now holds the old bundle
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / "bundle")
    os.rename(stage, out)  # a crash before this line: recover() puts old/bundle back
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def recover(out: Path) -> list[str]:
    """Under the lock: put back a bundle a crashed two-rename swap left aside, and remove stale
    staging folders of this destination. -> what was done (for the progress log)."""
    done = []
    for old in _ours(out, "old"):
        kept = old / "bundle"
        if kept.is_dir() and not out.exists():
            os.rename(kept, out)
            done.append(f"restored the previous bundle from {old.name}")
        shutil.rmtree(old, ignore_errors=True)
    for stale in _ours(out, "tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            done.append(f"removed the staging folder {stale.name} of an interrupted export")
    return done


def _ours(out: Path, kind: str) -> list[Path]:
    """This destination's ``.NAME.<kind>-PID-XXXX`` folders (mkdtemp names), nothing else."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{kind}-\d+-[a-z0-9_]+")
    return sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name))
