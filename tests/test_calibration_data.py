"""The shipped calibration_data/ folder: every file listed with its sha256, source and license."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import platform
from importlib import metadata
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1] / "calibration_data"
FIELDS = {"path", "sha256", "source_package", "source_version", "original", "crop", "license"}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((ROOT / "manifest.json").read_text(encoding="utf-8"))


def _data_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for sub in ("images", "text")
                  for p in (ROOT / sub).rglob("*") if p.is_file())


def test_manifest_entries_are_complete_and_sorted(manifest):
    assert manifest["description"]
    paths = [f["path"] for f in manifest["files"]]
    assert paths == sorted(paths) and len(set(paths)) == len(paths)
    for f in manifest["files"]:
        assert FIELDS <= f.keys(), f"{f['path']} lacks {FIELDS - f.keys()}"
        assert f["license"] and f["source_package"] and f["source_version"] and f["original"]
        assert f["crop"] is None or (len(f["crop"]) == 4 and f["crop"][0] < f["crop"][2]
                                     and f["crop"][1] < f["crop"][3])


def test_every_listed_file_exists_with_its_sha256(manifest):
    for f in manifest["files"]:
        path = ROOT / f["path"]
        assert path.is_file(), f"{f['path']} is listed but missing"
        assert _sha256(path) == f["sha256"], f"{f['path']} differs from its manifest sha256"


def test_every_data_file_is_listed(manifest):
    assert _data_files() == sorted(f["path"] for f in manifest["files"])


def test_images_are_rgb_photos_of_bounded_size(manifest):
    images = [f for f in manifest["files"] if f["path"].startswith("images/")]
    assert len(images) >= 32
    for f in images:
        with Image.open(ROOT / f["path"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB", f["path"]
            im.load()  # decodes the whole file
            assert min(im.size) <= 320 and list(im.size) == f.get("size", list(im.size))


def test_sentences_are_utf8_lines():
    lines = (ROOT / "text" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 64 and all(line.strip() == line and line for line in lines)
    assert len(set(lines)) == len(lines)


def test_folder_stays_small(manifest):
    assert sum((ROOT / f["path"]).stat().st_size for f in manifest["files"]) < 2_000_000


def test_build_reproduces_the_committed_files(manifest, tmp_path):
    """build.py regenerates byte-identical files, given the versions that made them."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    import PIL

    have = {"python": platform.python_version(), "pillow": PIL.__version__,
            "scikit-image": metadata.version("scikit-image"),
            "scikit-learn": metadata.version("scikit-learn")}
    if have != manifest["built_with"]:
        pytest.skip(f"byte-identical output needs {manifest['built_with']}, have {have}")
    spec = importlib.util.spec_from_file_location("calibration_build", ROOT / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.build(tmp_path) == manifest
