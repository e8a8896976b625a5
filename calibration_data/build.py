"""Rebuild edgekit's shipped calibration data from installed packages only (no network).

    python calibration_data/build.py            # rewrites images/, text/, manifest.json

Images: natural photos bundled inside scikit-image and scikit-learn, plus deterministic square
crops of them (fixed boxes, no randomness), at most 320 px on the short side, JPEG quality 90.
Text: English prose sentences from the Python Language Reference that ships with CPython
(``pydoc_data.topics``, the text behind ``help("if")``).

The output is built in a temporary folder and then moved into place, so a failed run leaves the
previous data untouched. Byte-identical output needs the versions recorded in manifest.json
under "built_with" (the JPEG encoder and the text of the reference change between releases).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib import metadata, resources
from pathlib import Path

import PIL
from PIL import Image, ImageCms

HERE = Path(__file__).resolve().parent
MAX_SIDE = 320          # short side of every image, in pixels (never upscaled)
JPEG_QUALITY = 90
N_SENTENCES = 128

# (package module, distribution, file, license, attribution). Licenses as the packages state them:
# scikit-image in each skimage.data function's docstring, scikit-learn in
# sklearn/datasets/images/README.txt.
SOURCES = {
    "astronaut": ("skimage.data", "scikit-image", "astronaut.png", "public-domain",
                  "NASA (Eileen Collins); 'No known copyright restrictions, released into the "
                  "public domain.' (skimage.data.astronaut docstring)"),
    "chelsea": ("skimage.data", "scikit-image", "chelsea.png", "CC0-1.0",
                "Stefan van der Walt; 'No copyright restrictions. CC0 by the photographer.' "
                "(skimage.data.chelsea docstring)"),
    "coffee": ("skimage.data", "scikit-image", "coffee.png", "CC0-1.0",
               "Rachel Michetti, courtesy of Pikolo Espresso Bar; 'No copyright restrictions. "
               "CC0 by the photographer.' (skimage.data.coffee docstring)"),
    "rocket": ("skimage.data", "scikit-image", "rocket.jpg", "public-domain",
               "SpaceX, DSCOVR launch on Falcon 9; released into the public domain "
               "(skimage.data.rocket docstring)"),
    "china": ("sklearn.datasets.images", "scikit-learn", "china.jpg", "CC-BY-2.0",
              "danielbuechele (Flickr photo 6061409035), retrieved by Robert Layton "
              "(sklearn/datasets/images/README.txt)"),
    "flower": ("sklearn.datasets.images", "scikit-learn", "flower.jpg", "CC-BY-2.0",
               "Flickr photo 6056698931 by vultilion (the README's attribution line names "
               "danielbuechele, its source link names vultilion), retrieved by Robert Layton "
               "(sklearn/datasets/images/README.txt)"),
    "hubble": ("skimage.data", "scikit-image", "hubble_deep_field.jpg", "public-domain",
               "NASA, Hubble eXtreme Deep Field; 'may be freely used in the public domain' "
               "(skimage.data.hubble_deep_field docstring)"),
}
# How many variants of each photo (variant 0 is the whole photo, the others are crops).
COUNTS = {"astronaut": 8, "chelsea": 7, "coffee": 8, "rocket": 7, "china": 8, "flower": 8,
          "hubble": 2}
# Square crops: (side as a fraction of the short side, centre x and y as fractions of the size).
CROPS = [None, (0.6, 0.5, 0.5), (0.5, 0.25, 0.3), (0.5, 0.75, 0.7), (0.75, 0.35, 0.6),
         (0.4, 0.65, 0.35), (0.85, 0.6, 0.45), (0.3, 0.45, 0.55)]

TEXT_LICENSE = "PSF-2.0"   # LICENSE.txt of CPython: "Python software and documentation are
                           # licensed under the Python Software Foundation License Version 2."


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crop_box(size: tuple[int, int], crop) -> list[int] | None:
    if crop is None:
        return None
    w, h = size
    frac, cx, cy = crop
    side = round(frac * min(w, h))
    x0 = min(max(round(cx * w - side / 2), 0), w - side)
    y0 = min(max(round(cy * h - side / 2), 0), h - side)
    return [x0, y0, x0 + side, y0 + side]


def load_rgb(path: Path) -> Image.Image:
    """The photo as sRGB pixels (converted only when it embeds another colour profile)."""
    im = Image.open(path)
    icc = im.info.get("icc_profile")
    if icc:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "sRGB" not in ImageCms.getProfileDescription(profile):
            im = ImageCms.profileToProfile(im, profile, ImageCms.createProfile("sRGB"),
                                           outputMode="RGB")
    return im.convert("RGB")


def build_images(out: Path) -> list[dict]:
    (out / "images").mkdir()
    entries, index = [], 0
    # Round-robin over the photos, so any prefix of the sorted file list mixes all sources.
    for variant, crop in enumerate(CROPS):
        for name, (module, dist, filename, license_, attribution) in SOURCES.items():
            if variant >= COUNTS[name]:
                continue
            src = Path(str(resources.files(module) / filename))
            im = load_rgb(src)
            box = crop_box(im.size, crop)
            if box:
                im = im.crop(box)
            scale = MAX_SIDE / min(im.size)
            if scale < 1:
                im = im.resize((round(im.width * scale), round(im.height * scale)),
                               Image.Resampling.LANCZOS)
            rel = f"images/{index:02d}_{name}_{'full' if box is None else f'crop{variant}'}.jpg"
            im.save(out / rel, "JPEG", quality=JPEG_QUALITY, optimize=True)
            entries.append({
                "path": rel, "sha256": sha256(out / rel),
                "source_package": dist, "source_version": metadata.version(dist),
                "original": f"{module.replace('.', '/')}/{filename}", "crop": box,
                "size": list(im.size), "license": license_, "attribution": attribution,
            })
            index += 1
    return entries


def prose_sentences(text: str) -> list[str]:
    """Plain English sentences from one help() topic: no code, symbols, digits or headings."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if (not lines or not lines[0][:1].isalpha() or any(line[:1].isspace() for line in lines)
                or (len(lines) == 2 and set(lines[1]) <= set("*=-"))):
            continue                        # code, lists, definition lists, headings
        para = " ".join(line.strip() for line in lines)
        parts: list[str] = []
        for s in re.split(r"(?:(?<=[.!?])|(?<=[.!?][’”]))\s+(?=[A-Z])", para):
            if parts and re.search(r"(\b[A-Za-z]|e\.g|i\.e|etc|vs)\.$", parts[-1]):
                parts[-1] += " " + s                    # "e.g. Foo" is not a sentence end
            else:
                parts.append(s)
        out += [s for s in parts if 6 <= len(s.split()) <= 45 and s[0].isupper() and s[-1] == "."
                and not re.search(r"[\"'`()\[\]{}=_:;<>*#/\\|@~^$%&+\d]|\w- |\.\.|\b[Ss]ee\b"
                                  r"|[Ss]ection|PEP|New in|Changed in", s)]
    return out


def build_text(out: Path) -> dict:
    from pydoc_data import topics  # the Python Language Reference, shipped with CPython

    candidates: list[str] = []
    for name in sorted(topics.topics):
        candidates += [s for s in prose_sentences(topics.topics[name]) if s not in candidates]
    if len(candidates) < N_SENTENCES:
        sys.exit(f"only {len(candidates)} sentences found; need {N_SENTENCES}")
    # Evenly spaced over all topics, in topic order.
    chosen = [candidates[i * len(candidates) // N_SENTENCES] for i in range(N_SENTENCES)]
    (out / "text").mkdir()
    rel = "text/sentences.txt"
    (out / rel).write_text("\n".join(chosen) + "\n", encoding="utf-8")
    return {
        "path": rel, "sha256": sha256(out / rel),
        "source_package": "cpython",
        "source_version": platform.python_version(),
        "original": "pydoc_data/topics.py (Python Language Reference, as shown by help())",
        "crop": None, "lines": len(chosen), "license": TEXT_LICENSE,
        "attribution": "Python Software Foundation; sentences selected unchanged "
                       "(LICENSE.txt of the Python distribution)",
    }


def build(out: Path) -> dict:
    """Write images/, text/ and manifest.json into the empty folder `out`; return the manifest."""
    files = build_images(out) + [build_text(out)]
    manifest = {
        "description": "edgekit's shipped calibration data: natural photos (whole and "
                       "cropped) from scikit-image and scikit-learn, and English sentences from "
                       "the Python Language Reference. Rebuild with calibration_data/build.py.",
        "built_with": {"python": platform.python_version(), "pillow": PIL.__version__,
                       "scikit-image": metadata.version("scikit-image"),
                       "scikit-learn": metadata.version("scikit-learn")},
        "files": sorted(files, key=lambda f: f["path"]),
    }
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    text = re.sub(r"\[[\d,\s]+\]", lambda m: json.dumps(json.loads(m[0])), text)  # one line
    (out / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=HERE))
    try:
        manifest = build(tmp)
        for name in ("images", "text"):             # swap each folder in, then the manifest
            if (HERE / name).exists():
                (HERE / name).rename(tmp / f"{name}.old")
            (tmp / name).rename(HERE / name)
        os.replace(tmp / "manifest.json", HERE / "manifest.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum((HERE / f["path"]).stat().st_size for f in manifest["files"])
    print(f"wrote {len(manifest['files'])} files ({size / 1e6:.2f} MB) to {HERE}")


if __name__ == "__main__":
    main()
