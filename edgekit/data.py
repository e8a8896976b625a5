"""CalibrationSet: input tuples built from a data folder through the ModelSpec's preprocessing.

A folder holds one kind of sample:
- ready tensors: ``.npy`` (single-input models) or ``.npz`` (keys = input names), one sample per file,
  in the model's input shape and dtype;
- images (``.jpg .jpeg .png .bmp .webp``) for a model with image preprocessing;
- text (``.txt``, one sentence per non-empty line) for a model with text preprocessing.
Order is deterministic (sorted relative paths, then line order) and the set's sha256 covers every
sample's bytes, so a report says exactly what it was computed on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import UserError
from edgekit.spec import ImagePreprocess, ModelSpec, TextPreprocess

DEFAULT_SAMPLES = 64  # verification samples per export (the first N, or of the held-out part)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TENSOR_SUFFIXES = (".npy", ".npz")
TEXT_SUFFIXES = (".txt",)


@dataclass(frozen=True)
class CalibrationSet:
    samples: tuple[tuple[np.ndarray, ...], ...]  # each: one array per model input, batch dim 1
    sources: tuple[str, ...]  # where each sample came from (file, or file:line)
    kind: str  # "tensor", "image" or "text"
    root: str

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for sample in self.samples:
            for a in sample:
                h.update(str(a.dtype).encode() + str(a.shape).encode())
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def stacked(self) -> list[np.ndarray]:
        """Array k has shape (N, *input_k_shape): the form edgekit.isolate feeds runners."""
        return [np.stack([s[k] for s in self.samples]) for k in range(len(self.samples[0]))]

    def head(self, n: int) -> "CalibrationSet":
        return self.slice(0, n)

    def slice(self, start: int, stop: int | None = None) -> "CalibrationSet":
        return CalibrationSet(self.samples[start:stop], self.sources[start:stop], self.kind, self.root)

    def describe(self) -> dict:
        return {"root": self.root, "kind": self.kind, "count": len(self), "sha256": self.sha256}


def load_samples(data_dir: str | Path, spec: ModelSpec, base: Path | None = None,
                 limit: int | None = None) -> CalibrationSet:
    """Build the samples of ``data_dir`` for ``spec``; ``base`` resolves a relative tokenizer path."""
    root = Path(data_dir)
    if not root.exists():
        raise UserError("E-DATA-UNREADABLE", f"data folder {root} does not exist", "pass --data with an existing folder")
    if not root.is_dir():
        raise UserError("E-DATA-UNREADABLE", f"{root} is not a folder", "pass --data with a folder of samples")
    try:
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise UserError("E-DATA-UNREADABLE", f"cannot list {root}: {exc}", "check the folder's permissions") from exc
    tensors = [p for p in files if p.suffix.lower() in TENSOR_SUFFIXES]
    pre = spec.preprocess
    if tensors:
        samples, sources, kind = _load_tensors(tensors, spec, root), [str(p.relative_to(root)) for p in tensors], "tensor"
    elif isinstance(pre, ImagePreprocess):
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        samples, sources, kind = [_load_image(p, pre, spec) for p in images], [str(p.relative_to(root)) for p in images], "image"
    elif isinstance(pre, TextPreprocess):
        texts = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES]
        samples, sources, kind = _load_text(texts, pre, spec, root, base)
    else:
        samples, sources, kind = [], [], "tensor"
    if not samples:
        wanted = {ImagePreprocess: "images (" + " ".join(IMAGE_SUFFIXES) + ")",
                  TextPreprocess: ".txt files with one sentence per line"}.get(type(pre), "")
        wanted = (wanted + " or " if wanted else "") + ".npy/.npz files holding input tensors"
        raise UserError("E-DATA-EMPTY", f"{root} has no samples usable by model {spec.name}",
                        f"add {wanted} to it, or pass --data with another folder")
    if limit is not None:
        samples, sources = samples[:limit], sources[:limit]
    for sample, src in zip(samples, sources):
        _check_finite(sample, src, spec)
    return CalibrationSet(tuple(samples), tuple(sources), kind, str(root))


def _check_finite(sample: tuple[np.ndarray, ...], src: str, spec: ModelSpec) -> None:
    for t, a in zip(spec.inputs, sample):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise UserError("E-DATA-VALUE", f"sample {src} holds NaN or Inf in input {t.name!r}",
                            "remove or fix that file")


def _load_tensors(paths: list[Path], spec: ModelSpec, root: Path) -> list[tuple[np.ndarray, ...]]:
    out = []
    for p in paths:
        rel = p.relative_to(root)
        try:
            if p.suffix.lower() == ".npy":
                if len(spec.inputs) != 1:
                    raise UserError("E-DATA-SHAPE", f"{rel} is a .npy file, but model {spec.name} takes "
                                    f"{len(spec.inputs)} inputs ({', '.join(spec.input_names)})",
                                    "store each sample as a .npz file with one array per input name")
                arrays = (np.load(p, allow_pickle=False),)
            else:
                with np.load(p, allow_pickle=False) as z:
                    missing = [n for n in spec.input_names if n not in z.files]
                    if missing:
                        raise UserError("E-DATA-SHAPE", f"{rel} lacks the arrays {', '.join(missing)} "
                                        f"(it has {', '.join(z.files) or 'none'})",
                                        f"save each sample with np.savez(path, {'=..., '.join(spec.input_names)}=...)")
                    arrays = tuple(z[n] for n in spec.input_names)
        except (OSError, ValueError, EOFError) as exc:
            raise UserError("E-DATA-UNREADABLE", f"cannot read {rel}: {exc}", "replace the file, or remove it from the folder") from exc
        for t, a in zip(spec.inputs, arrays):
            problem = t.check(a)
            if problem:
                raise UserError("E-DATA-SHAPE", f"{rel}: {problem}",
                                f"save samples as {t.dtype} arrays of shape {tuple(t.shape)} (batch dimension included)")
        out.append(arrays)
    return out


def preprocess_image(img, pre: ImagePreprocess) -> np.ndarray:
    """PIL image -> float32 CHW array: resize shorter side (bilinear), center crop, scale, normalise."""
    from PIL import Image

    img = img.convert(pre.color)
    w, h = img.size
    scale = pre.resize / min(w, h)
    nw, nh = max(pre.crop, round(w * scale)), max(pre.crop, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - pre.crop) // 2, (nh - pre.crop) // 2
    img = img.crop((left, top, left + pre.crop, top + pre.crop))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _load_image(path: Path, pre: ImagePreprocess, spec: ModelSpec) -> tuple[np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            chw = preprocess_image(img, pre)
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError("E-DATA-UNREADABLE", f"cannot decode image {path}: {exc}", "replace or remove that file") from exc
    t = spec.inputs[0]
    x = (chw if t.layout != "NHWC" else chw.transpose(1, 2, 0))[None].copy()
    problem = t.check(x)
    if problem:
        raise UserError("E-DATA-SHAPE", f"{path.name} preprocesses to a wrong tensor: {problem}",
                        "make the ModelSpec's preprocessing (crop size, layout) match the model input")
    return (x,)


def load_tokenizer(pre: TextPreprocess, base: Path | None):
    """The WordPiece tokenizer from tokenizer.json (the `tokenizers` library; no network)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", "text preprocessing needs the module 'tokenizers'",
                        "pip install -c constraints.txt 'edgekit[models]'") from exc
    folder = Path(pre.tokenizer)
    if not folder.is_absolute() and base is not None:
        folder = base / folder
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError("E-BUNDLE-INVALID", f"tokenizer file {path} is missing", "re-export the bundle")
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(pre.max_length)
    tok.enable_padding(length=pre.max_length, pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tok


def _load_text(paths: list[Path], pre: TextPreprocess, spec: ModelSpec, root: Path, base: Path | None):
    sentences, sources = [], []
    for p in paths:
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError("E-DATA-UNREADABLE", f"cannot read {p} as UTF-8 text: {exc}", "save it as UTF-8") from exc
        for i, line in enumerate(lines, 1):
            if line.strip():
                sentences.append(line.strip())
                sources.append(f"{p.relative_to(root)}:{i}")
    if not sentences:
        return [], [], "text"
    tok = load_tokenizer(pre, base)
    ids_spec, mask_spec = spec.inputs[0], spec.inputs[1]
    samples = []
    for enc in tok.encode_batch(sentences):
        # [None].copy(): a plain C-strided array (a bare [None] view has stride 0 on the batch axis,
        # which torch keeps and ExecuTorch's emitter rejects)
        ids = np.asarray(enc.ids, dtype=ids_spec.dtype)[None].copy()
        mask = np.asarray(enc.attention_mask, dtype=mask_spec.dtype)[None].copy()
        samples.append((ids, mask))
    return samples, sources, "text"
