"""The INT8 bench's evaluation protocol: 64 calibration crops and 256 held-out crops of real photos.

Built deterministically from calibration_data/images (48 JPEGs) through the model's ImagePreprocess
(mean/std/crop size/colour): each crop = resize the shorter side to R (bilinear), take a crop of
``pre.crop`` pixels at a fractional position (fx, fy) of the free room, optionally mirror it, scale
to [0, 1], normalise. The variant (pre.resize, centre, no flip) is exactly edgekit.data's
preprocessing (checked by ``check_matches_edgekit``).

- calibration: files 1-32 (sorted names), 2 crops each  -> 64 crops;
- held out:    files 33-48,           16 crops each  -> 256 crops.
No file is in both parts. (The 48 files are themselves crops/rescales of 7 source photos from
scikit-image / scikit-learn, see calibration_data/README.md, so the two parts share source scenes
but no pixels-identical inputs.)

``eval_set(spec)`` returns (calib, held, meta); ``fp32_logits(module, held)`` is cached on disk
(keyed by the crops' sha256) so the bench scripts compute the FP32 reference once.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

IMAGES = Path(__file__).resolve().parent.parent / "calibration_data" / "images"
CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", "/tmp/edgekit_int8_bench_cache"))
N_CALIB_FILES, N_FILES = 32, 48

# (shorter side, fx, fy, mirror)
CALIB_VARIANTS = ((256, 0.5, 0.5, False), (320, 0.25, 0.75, True))
HELD_VARIANTS = tuple((r, fx, fy, flip) for r in (224, 256, 320, 400)
                      for fx, fy in ((0.5, 0.5), (0.0, 1.0)) for flip in (False, True))


def crop(img, pre, resize: int, fx: float, fy: float, flip: bool) -> np.ndarray:
    """PIL image -> float32 (1, 3, crop, crop) NCHW, normalised as ``pre`` says."""
    from PIL import Image

    img = img.convert(pre.color)
    w, h = img.size
    s = resize / min(w, h)
    nw, nh = max(pre.crop, round(w * s)), max(pre.crop, round(h * s))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int((nw - pre.crop) * fx) if fx != 0.5 else (nw - pre.crop) // 2, \
        int((nh - pre.crop) * fy) if fy != 0.5 else (nh - pre.crop) // 2
    img = img.crop((left, top, left + pre.crop, top + pre.crop))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None].copy()


def _build(files, variants, pre) -> tuple[list[tuple[np.ndarray]], list[str]]:
    from PIL import Image

    samples, sources = [], []
    for p in files:
        with Image.open(p) as img:
            img.load()
            for v in variants:
                samples.append((crop(img, pre, *v),))
                sources.append(f"{p.name}@r{v[0]},x{v[1]},y{v[2]}{',flip' if v[3] else ''}")
    return samples, sources


def _sha(samples) -> str:
    h = hashlib.sha256()
    for (a,) in samples:
        h.update(a.tobytes())
    return h.hexdigest()


def eval_set(spec):
    """(calibration samples, held-out samples, meta): lists of 1-tuples of (1, 3, H, W) float32."""
    files = sorted(p for p in IMAGES.iterdir() if p.suffix.lower() == ".jpg")
    if len(files) != N_FILES:
        raise SystemExit(f"expected {N_FILES} photos in {IMAGES}, found {len(files)}")
    pre = spec.preprocess
    calib, calib_src = _build(files[:N_CALIB_FILES], CALIB_VARIANTS, pre)
    held, held_src = _build(files[N_CALIB_FILES:], HELD_VARIANTS, pre)
    meta = {"calibration": f"{len(calib)} crops of calibration_data/images files 1-{N_CALIB_FILES} "
                           f"({len(CALIB_VARIANTS)} per file)",
            "held_out": f"{len(held)} crops of files {N_CALIB_FILES + 1}-{N_FILES} ({len(HELD_VARIANTS)} per file)",
            "crop_variants": {"calibration": [list(v) for v in CALIB_VARIANTS], "held_out": [list(v) for v in HELD_VARIANTS]},
            "calibration_sha256": _sha(calib), "held_out_sha256": _sha(held),
            "calibration_files": [p.name for p in files[:N_CALIB_FILES]],
            "held_out_files": [p.name for p in files[N_CALIB_FILES:]]}
    return calib, held, meta


def check_matches_edgekit(spec) -> None:
    """The (resize, centre, no flip) crop equals edgekit.data's preprocessing, bit for bit."""
    from PIL import Image

    from edgekit.data import preprocess_image

    p = sorted(IMAGES.glob("*.jpg"))[0]
    with Image.open(p) as img:
        a = crop(img, spec.preprocess, spec.preprocess.resize, 0.5, 0.5, False)[0]
        b = preprocess_image(img, spec.preprocess)
    if not np.array_equal(a, b):
        raise SystemExit("bench crop differs from edgekit.data.preprocess_image")


def fp32_logits(module, held, tag: str = "mobilenet_v2") -> np.ndarray:
    """FP32 logits on the held-out crops, cached under CACHE by the crops' sha256."""
    from edgekit.quant.reference import run_program

    path = CACHE / f"{tag}-fp32-{_sha(held)[:16]}.npy"
    if path.is_file():
        return np.load(path)
    out = run_program(module, held)[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


if __name__ == "__main__":
    from edgekit.models import BUILTIN

    lm = BUILTIN["mobilenet_v2"]()
    check_matches_edgekit(lm.spec)
    c, h, m = eval_set(lm.spec)
    print(len(c), len(h), m["calibration_sha256"][:12], m["held_out_sha256"][:12])
    f = fp32_logits(lm.module, h)
    print("fp32 top-1 classes on held-out:", len(set(f.reshape(len(f), -1).argmax(-1).tolist())), "distinct of", len(f))


def mobilenet_v2_setup() -> dict:
    """What the MobileNetV2 INT8 benches share: the model, the crops, the calibration set, the cached
    FP32 logits on the held-out crops, an example input and the parameter count (1 torch thread)."""
    import torch

    from edgekit.data import CalibrationSet
    from edgekit.models import BUILTIN

    torch.set_num_threads(1)
    lm = BUILTIN["mobilenet_v2"]()
    calib, held, meta = eval_set(lm.spec)
    return {"lm": lm, "calib": calib, "held": held, "meta": meta,
            "calib_set": CalibrationSet(tuple(calib), tuple(f"crop{i}" for i in range(len(calib))), "image",
                                        "bench/int8_eval_set.py"),
            "fp32": fp32_logits(lm.module, held)[:, 0], "example": tuple(torch.from_numpy(a) for a in calib[0]),
            "params": sum(p.numel() for p in lm.module.parameters())}
