"""`edgekit bundle BUNDLE --android DIR | --ios DIR`: copy what an app reads out of a bundle.

Each file is checked against the manifest's sha256 before it is copied, copied to a temporary name
and renamed, and other files already in DIR are left alone (an app's own assets live there too).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from edgekit import bundle as B
from edgekit.atomic import atomic_file
from edgekit.errors import UserError

PLATFORMS = ("android", "ios")  # which targets each loads is in the capability table (app_platforms)
SIDE_FILES = ("manifest.json", "labels.txt")


def copy_for_app(bundle: str | Path, dest: str | Path, platform: str) -> list[str]:
    """Copy the manifest, labels, tokenizer and the platform's artifacts; -> relative paths copied."""
    root, dest = Path(bundle), Path(dest)
    manifest = B.read_manifest(root)
    from edgekit.converters import all_converters

    targets = tuple(c.info.name for c in all_converters() if platform in c.info.app_platforms)
    arts = [a for a in manifest.get("artifacts", []) if a["target"] in targets]
    if not arts:
        raise UserError("E-BUNDLE-INVALID", f"{root} has no {' or '.join(targets)} artifact for {platform}",
                        f"export with --targets {','.join(targets)}")
    for a in arts:
        for f in a["files"]:
            path = root / f["path"]
            if not path.is_file() or B.sha256_file(path) != f["sha256"]:
                raise UserError("E-ARTIFACT-CORRUPT", f"{path} is missing or differs from the manifest's sha256",
                                "re-export the bundle, or run `edgekit verify` on it")
    files = [f for f in SIDE_FILES if (root / f).is_file() and not (root / f).is_symlink()]
    tok = root / "tokenizer"
    if tok.is_dir() and not tok.is_symlink():
        files += [str(p.relative_to(root)) for p in sorted(tok.glob("*")) if p.is_file() and not p.is_symlink()]
    files += [f["path"] for a in arts for f in a["files"]]
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(target) as f, open(root / rel, "rb") as src:
                shutil.copyfileobj(src, f)
    except OSError as exc:
        raise UserError("E-OUT-UNWRITABLE", f"cannot write into {dest}: {exc.strerror or exc}",
                        "pass a folder you can write to") from exc
    return files
