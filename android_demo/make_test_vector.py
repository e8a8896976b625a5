"""Write the preprocessing test vectors that the app's Java preprocessing is checked against.

Each case runs a PNG in android_demo/testdata through edgekit's own ``edgekit.data.preprocess_image``
(the function the pipeline feeds every model with) and stores what it returns:

  testdata/<id>.f32   float32, little-endian, CHW: the tensor edgekit feeds the model
  testdata/<id>.u8    uint8, HWC: the resized and cropped RGB pixels, recovered from the tensor
                      (x * std + mean) * 255, rounded, and checked to map back to the same tensor
  testdata/vectors.json  the cases, their parameters and sha256 of every file

The JVM tests (run_jvm_tests.sh) decode the same PNG, run ImagePreprocessor and compare. The PNGs
are the source of truth and are committed; ``--images`` rebuilds them from the CC0 "chelsea" photo
in calibration_data/images (scikit-image, photographer Stefan van der Walt).

    python android_demo/make_test_vector.py            # tensors from the committed PNGs
    python android_demo/make_test_vector.py --images   # also rebuild the PNGs (changes the vectors)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing edgekit

from edgekit.data import preprocess_image  # noqa: E402
from edgekit.spec import IMAGENET_MEAN, IMAGENET_STD, ImagePreprocess  # noqa: E402

TESTDATA = HERE / "testdata"
SOURCE_PHOTO = HERE.parent / "calibration_data" / "images" / "01_chelsea_full.jpg"

# Sizes chosen to hit every path of Pillow's resampler: a ~2x and a ~1.5x downscale (the
# antialiasing triangle filter is widened by the scale), an upscale (plain bilinear), the shorter
# side already at the target (no resampling, crop only), a portrait image with an alpha channel
# (convert("RGB") drops alpha) and non-ImageNet mean/std.
CASES = [
    {"id": "photo_r36_c32", "image": "photo_97x73.png", "resize": 36, "crop": 32},  # tiny_cnn's preprocessing
    {"id": "photo_r50_c48", "image": "photo_97x73.png", "resize": 50, "crop": 48},
    {"id": "photo_r256_c224", "image": "photo_97x73.png", "resize": 256, "crop": 224},  # mobilenet_v2's
    {"id": "photo_r73_c64", "image": "photo_97x73.png", "resize": 73, "crop": 64},
    {"id": "rgba_r20_c16", "image": "rgba_51x83.png", "resize": 20, "crop": 16,
     "mean": [0.5, 0.25, 0.0], "std": [0.5, 0.25, 1.0]},
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_images() -> None:
    """Rebuild the two PNGs from the CC0 photo (only with --images)."""
    with Image.open(SOURCE_PHOTO) as src:
        photo = src.convert("RGB")
    photo.resize((97, 73), Image.LANCZOS).save(TESTDATA / "photo_97x73.png", optimize=True)
    # A portrait crop (the cat's head) with an alpha ramp that includes fully transparent pixels.
    w, h = photo.size
    head = photo.crop((w // 2 - 60, 20, w // 2 + 40, 20 + 163)).resize((51, 83), Image.LANCZOS)
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, 51).round().astype(np.uint8), (83, 1)), "L")
    rgba = head.convert("RGBA")
    rgba.putalpha(alpha)
    rgba.save(TESTDATA / "rgba_51x83.png", optimize=True)


def write_case(case: dict) -> dict:
    mean = tuple(case.get("mean", IMAGENET_MEAN))
    std = tuple(case.get("std", IMAGENET_STD))
    pre = ImagePreprocess(resize=case["resize"], crop=case["crop"], mean=mean, std=std)
    png = TESTDATA / case["image"]
    with Image.open(png) as img:
        mode, size = img.mode, img.size
        x = preprocess_image(img, pre)  # float32 CHW
    assert x.dtype == np.float32 and x.shape == (3, pre.crop, pre.crop), (x.dtype, x.shape)
    # The uint8 pixels the tensor was made from: invert the normalisation and check it round-trips.
    m, s = np.asarray(mean, np.float32)[:, None, None], np.asarray(std, np.float32)[:, None, None]
    u8 = np.rint((x * s + m) * 255.0).astype(np.int64)
    assert u8.min() >= 0 and u8.max() <= 255
    back = (u8.astype(np.float32) / 255.0 - m) / s
    assert np.array_equal(back, x), "the uint8 pixels do not reproduce the tensor"
    f32, px = TESTDATA / f"{case['id']}.f32", TESTDATA / f"{case['id']}.u8"
    x.astype("<f4").tofile(f32)
    u8.astype(np.uint8).transpose(1, 2, 0).tofile(px)
    return {
        "id": case["id"], "image": case["image"], "image_sha256": sha256(png), "image_mode": mode,
        "image_size": list(size), "resize": pre.resize, "crop": pre.crop, "mean": list(mean), "std": list(std),
        "tensor": f32.name, "tensor_layout": "CHW", "tensor_dtype": "float32 little-endian",
        "shape": list(x.shape), "tensor_sha256": sha256(f32),
        "pixels": px.name, "pixels_layout": "HWC uint8 RGB", "pixels_sha256": sha256(px),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", action="store_true", help="rebuild the PNGs from calibration_data first")
    args = ap.parse_args(argv)
    TESTDATA.mkdir(exist_ok=True)
    if args.images:
        make_images()
    import PIL

    cases = [write_case(c) for c in CASES]
    index = {
        "generated_by": "android_demo/make_test_vector.py (edgekit.data.preprocess_image)",
        "pillow": PIL.__version__, "numpy": np.__version__,
        "note": "Pillow's BILINEAR resize: a triangle filter widened by the scale when downscaling, "
                "8-bit fixed-point coefficients, horizontal pass then vertical pass, each rounded to uint8",
        "cases": cases,
    }
    (TESTDATA / "vectors.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    for c in cases:
        print(f"{c['id']}: {c['image']} {c['image_size']} {c['image_mode']} -> resize {c['resize']} crop {c['crop']}"
              f" -> {c['tensor']} {c['shape']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
