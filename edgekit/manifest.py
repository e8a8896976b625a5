"""A bundle's manifest.json read as untrusted input (it may come from a pull request).

Everything is checked before any file it names is opened: the JSON shape of every field edgekit
reads, the ModelSpec, and every path (relative, no ``..``, no symlink that leaves the bundle).
A manifest that fails any check is ``E-BUNDLE-INVALID``, with what was wrong; the caller never sees a
KeyError or a TypeError. ``Manifest`` keeps the raw dict (reports copy parts of it) next to the
checked views the verify pipeline uses.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgekit.errors import UserError
from edgekit.spec import ModelSpec, TextPreprocess

FORMAT = "edgekit-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_ARTIFACTS = 256
MAX_FILES = 64  # per artifact
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIX = "re-export the bundle with `edgekit export` (and do not edit manifest.json by hand)"


def invalid(what: str, fix: str = _FIX) -> UserError:
    return UserError("E-BUNDLE-INVALID", what, fix)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the bundle, checked
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Manifest:
    root: Path
    raw: dict
    spec: ModelSpec
    reference: FileEntry  # the FP32 reference program
    inputs: FileEntry | None  # the stored verification inputs (older bundles: no sha256 -> None)
    artifacts: tuple[tuple[dict, tuple[FileEntry, ...]], ...]  # (raw entry, its checked files)

    def path(self, rel: str) -> Path:
        return self.root / rel


def inside(root: Path, rel, what: str) -> Path:
    """``root/rel`` when ``rel`` is a plain relative path that stays inside ``root`` (symlinks
    resolved); else E-BUNDLE-INVALID. Checked before the file is opened."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024 or "\x00" in rel or "\\" in rel:
        raise invalid(f"{what}: {rel!r} is not a relative file path")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or any(part in ("..", "") for part in pure.parts) or rel.startswith("~"):
        raise invalid(f"{what}: path {rel!r} leaves the bundle (absolute, '..' or '~')",
                      "bundle paths are relative to the bundle folder; re-export the bundle")
    base = root.resolve()
    real = (root / rel).resolve()
    if real != base and base not in real.parents:
        raise invalid(f"{what}: {rel!r} resolves to {real}, outside the bundle (a symlink that leaves it)",
                      "replace the symlink with the file itself, or re-export the bundle")
    return root / rel


def read(bundle: Path) -> Manifest:
    """Read and check ``bundle/manifest.json``; raises E-BUNDLE-INVALID with what was wrong."""
    root = Path(bundle)
    if not root.is_dir():
        raise invalid(f"{root} is not a folder", "pass the folder `edgekit export` wrote")
    path = root / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise invalid(f"{root} has no {MANIFEST} (or it is a symlink)", "pass the folder `edgekit export` wrote")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise invalid(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise invalid(f"cannot parse {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
        raise invalid(f"{path} is not an edgekit bundle manifest of version {FORMAT_VERSION}",
                      "re-export the bundle with this edgekit version")
    spec = _spec(_dict(raw, "model", "manifest"), root)
    reference = _entry(root, _dict(raw, "reference", "manifest"), "reference", key="file")
    inputs = _inputs(root, raw.get("verification_inputs"))
    arts = raw.get("artifacts")
    if not isinstance(arts, list) or len(arts) > MAX_ARTIFACTS:
        raise invalid(f"manifest 'artifacts' must be a list of at most {MAX_ARTIFACTS} entries, not {type(arts).__name__}")
    return Manifest(root, raw, spec, reference, inputs, tuple(_artifact(root, a, i) for i, a in enumerate(arts)))


def _dict(d: dict, key: str, where: str) -> dict:
    v = d.get(key)
    if not isinstance(v, dict):
        raise invalid(f"{where} field {key!r} must be an object, not {type(v).__name__}")
    return v


def _str(d: dict, key: str, where: str, limit: int = 256) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v or len(v) > limit:
        raise invalid(f"{where} field {key!r} must be a non-empty string of at most {limit} characters, not {v!r:.80}")
    return v


def _spec(model: dict, root: Path) -> ModelSpec:
    try:
        spec = ModelSpec.from_dict(_dict(model, "spec", "manifest 'model'"))
    except ValueError as exc:
        raise invalid(f"manifest 'model.spec' is not a valid ModelSpec: {exc}") from exc
    if isinstance(spec.preprocess, TextPreprocess):
        inside(root, spec.preprocess.tokenizer, "model.spec.preprocess.tokenizer")
    return spec


def _entry(root: Path, d: dict, where: str, key: str = "path") -> FileEntry:
    rel = _str(d, key, where, 1024)
    inside(root, rel, f"{where} {key}")
    sha = d.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise invalid(f"{where} {rel}: 'sha256' must be 64 lowercase hex digits, not {sha!r:.80}")
    size = d.get("size_bytes", -1)
    if not isinstance(size, int) or isinstance(size, bool):
        raise invalid(f"{where} {rel}: 'size_bytes' must be an integer")
    return FileEntry(rel, sha, size)


def _inputs(root: Path, d) -> FileEntry | None:
    if not isinstance(d, dict):
        raise invalid("manifest field 'verification_inputs' must be an object")
    if "file_sha256" not in d:  # bundles written before edgekit hashed the file: its data sha256 is checked after loading
        inside(root, _str(d, "file", "verification_inputs", 1024), "verification_inputs file")
        return None
    return _entry(root, {"path": d.get("file"), "sha256": d.get("file_sha256")}, "verification_inputs")


def _artifact(root: Path, a, i: int) -> tuple[dict, tuple[FileEntry, ...]]:
    where = f"artifact #{i}"
    if not isinstance(a, dict):
        raise invalid(f"{where} must be an object, not {type(a).__name__}")
    for key in ("target", "precision"):
        _str(a, key, where, 64)
    main = _str(a, "path", where, 1024)
    files = a.get("files")
    if not isinstance(files, list) or not 0 < len(files) <= MAX_FILES or not all(isinstance(f, dict) for f in files):
        raise invalid(f"{where} ({a['target']}): 'files' must be a list of 1 to {MAX_FILES} objects with path and sha256")
    entries = tuple(_entry(root, f, f"{where} ({a['target']}) file") for f in files)
    names = [e.path for e in entries]
    meta = a.get("meta", {})
    if not isinstance(meta, dict):
        raise invalid(f"{where} ({a['target']}): 'meta' must be an object")
    for rel, what in ((main, "path"), (meta.get("reference"), "meta.reference")):
        if rel is not None and rel not in names:
            raise invalid(f"{where} ({a['target']}): {what} {rel!r:.200} is not one of its hashed files")
    _meta(meta, f"{where} ({a['target']}) meta")
    return a, entries


def _meta(meta: dict, where: str) -> None:
    """The meta fields the verifying process itself reads (the rest is read by the confined runner)."""
    scales = meta.get("output_scales")
    if scales is not None and (not isinstance(scales, list) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) and s >= 0 for s in scales)):
        raise invalid(f"{where}: 'output_scales' must be a list of non-negative numbers, or null")
    notes = meta.get("quant_notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise invalid(f"{where}: 'quant_notes' must be a list of strings")
    if not isinstance(meta.get("recipe_summary", ""), (str, type(None))):
        raise invalid(f"{where}: 'recipe_summary' must be a string")
