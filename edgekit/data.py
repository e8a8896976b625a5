"""CalibrationSet: input tuples built from a data folder through the ModelSpec's preprocessing.

A folder holds one kind of sample:
- ready tensors: ``.npy`` (single-input models) or ``.npz`` (keys = input names), one sample per file,
  in the model's input shape and dtype;
- images (``.jpg .jpeg .png .bmp .webp``) for a model with image preprocessing;
- text (``.txt``, one sentence per non-empty line) for a model with text preprocessing.
A folder that holds more than one of these kinds is refused (E-DATA-MIXED); files with other
suffixes, and hidden files, are ignored. Everything in it is untrusted (it can come from a pull
request in CI): tensor headers are checked before any allocation (edgekit.arrays), images larger
than MAX_IMAGE_PIXELS and text files larger than MAX_TEXT_BYTES are refused, and at most MAX_FILES
files (MAX_SAMPLES text lines) are read.
Order is deterministic (sorted relative paths, then line order; a labelled folder, edgekit.labels,
takes its classes in turn) and the set's sha256 covers every sample's bytes, so a report says
exactly what it was computed on.
"""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.arrays import Expect, read_npy, read_npz
from edgekit.errors import UserError
from edgekit.labels import IN_MEMORY
from edgekit.spec import ImagePreprocess, ModelSpec, TextPreprocess

DEFAULT_SAMPLES = 64  # verification samples per export (the first N, or of the held-out part)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")  # the Pillow decoders used (JPEG covers multi-picture MPO)
TENSOR_SUFFIXES = (".npy", ".npz")
TEXT_SUFFIXES = (".txt",)
MAX_FILES = 100_000  # sample files read from one folder
MAX_SAMPLES = 100_000  # text lines (samples) read from one folder
MAX_TEXT_BYTES = 64 * 1024**2  # one .txt file
MAX_IMAGE_PIXELS = 89_478_485  # one image (width x height): Pillow's default limit, enforced here too
_MAX_LISTED = 10 * MAX_FILES  # entries of any kind listed under one data folder


@dataclass(frozen=True)
class CalibrationSet:
    samples: tuple[tuple[np.ndarray, ...], ...]  # each: one array per model input, batch dim 1
    sources: tuple[str, ...]  # where each sample came from (file, or file:line)
    kind: str  # "tensor", "image" or "text"
    root: str
    labels: tuple[int, ...] | None = None  # one class index per sample (edgekit.labels), None: unlabelled
    labels_note: str = ""  # where the labels came from, or why a per-class layout gave none

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
        labels = None if self.labels is None else self.labels[start:stop]
        return CalibrationSet(self.samples[start:stop], self.sources[start:stop], self.kind, self.root, labels, self.labels_note)

    def describe(self) -> dict:
        return {"root": self.root, "kind": self.kind, "count": len(self), "sha256": self.sha256,
                **({"labelled": True} if self.labels is not None else {})}


def load_samples(data_dir: str | Path, spec: ModelSpec, base: Path | None = None,
                 limit: int | None = None) -> CalibrationSet:
    """Build the samples of ``data_dir`` for ``spec``; ``base`` resolves a relative tokenizer path.

    ``limit``: keep only the first ``limit`` samples; files past them are not read. Without it, at
    most MAX_FILES sample files (MAX_SAMPLES text lines) are read, and a folder with more is refused.
    """
    root = Path(data_dir)
    if not root.exists():
        raise UserError("E-DATA-UNREADABLE", f"data folder {root} does not exist", "pass --data with an existing folder")
    if not root.is_dir():
        raise UserError("E-DATA-UNREADABLE", f"{root} is not a folder", "pass --data with a folder of samples")
    if limit is not None and limit < 0:
        raise UserError("E-ARGS", f"a sample limit of {limit} is negative", "pass a limit of 1 or more")
    present = _files_by_kind(root)
    # read only the files the limit needs (limit=0 reads one: "no usable samples" is still an error)
    samples, sources, kind = _read(present, spec, root, base, None if limit is None else max(limit, 1))
    if limit is not None:
        samples, sources = samples[:limit], sources[:limit]
    for sample, src in zip(samples, sources):
        check_finite(sample, src, spec)
    from edgekit.labels import folder_labels

    labels, note = folder_labels(root, sources, kind, spec)
    if labels is not None:  # files sorted by class folder: interleave the classes (edgekit.labels.round_robin)
        from edgekit.labels import round_robin

        order = round_robin(labels)
        samples, sources, labels = [samples[i] for i in order], [sources[i] for i in order], tuple(labels[i] for i in order)
        note += "; samples taken one class at a time in turn, so calibration and held-out parts mix every class"
    return CalibrationSet(tuple(samples), tuple(sources), kind, str(root), labels, note)


def _files_by_kind(root: Path) -> dict[str, list[Path]]:
    """The folder's sample files (sorted, hidden ones left out) by kind; one kind only (E-DATA-MIXED)."""
    try:
        files = []
        for n, p in enumerate(root.rglob("*")):
            if n >= _MAX_LISTED:
                raise UserError("E-DATA-UNREADABLE", f"{root} holds more than {_MAX_LISTED} files and folders",
                                "pass --data with a smaller folder (or a sub-folder)")
            if p.is_file() and not p.name.startswith("."):
                files.append(p)
        files.sort()
    except OSError as exc:
        raise UserError("E-DATA-UNREADABLE", f"cannot list {root}: {exc}", "check the folder's permissions") from exc
    by_kind = {kind: [p for p in files if p.suffix.lower() in suffixes] for kind, suffixes in _KINDS.items()}
    present = {kind: paths for kind, paths in by_kind.items() if paths}
    if len(present) > 1:
        counts = ", ".join(_count(kind, len(paths)) for kind, paths in present.items())
        raise UserError("E-DATA-MIXED", f"{root} mixes kinds of samples: {counts}",
                        "keep one kind of sample per folder (images, .npy/.npz tensors or .txt text), "
                        "or pass --data with a sub-folder that holds one kind")
    return present


def _read(present: dict[str, list[Path]], spec: ModelSpec, root: Path, base: Path | None, wanted: int | None):
    """-> (samples, their sources relative to root, kind), at most ``wanted`` (None: every file); a
    folder with nothing the model can use is E-DATA-EMPTY."""
    pre = spec.preprocess
    samples, sources, kind = [], [], "tensor"
    if "tensor" in present:
        tensors = _bounded(present["tensor"], wanted, root, "tensor files")
        samples, sources, kind = _load_tensors(tensors, spec, root), [str(p.relative_to(root)) for p in tensors], "tensor"
    elif "image" in present and isinstance(pre, ImagePreprocess):
        images = _bounded(present["image"], wanted, root, "images")
        samples, sources, kind = [_load_image(p, pre, spec) for p in images], [str(p.relative_to(root)) for p in images], "image"
    elif "text" in present and isinstance(pre, TextPreprocess):
        # not cut to `wanted` files: a file may hold no sentence; _load_text stops reading early itself
        samples, sources, kind = _load_text(present["text"], pre, spec, root, base, wanted)
    if not samples:
        wanted_kind = {ImagePreprocess: "images (" + " ".join(IMAGE_SUFFIXES) + ")",
                       TextPreprocess: ".txt files with one sentence per line"}.get(type(pre), "")
        wanted_kind = (wanted_kind + " or " if wanted_kind else "") + ".npy/.npz files holding input tensors"
        raise UserError("E-DATA-EMPTY", f"{root} has no samples usable by model {spec.name}",
                        f"add {wanted_kind} to it, or pass --data with another folder")
    return samples, sources, kind


_KINDS = {"tensor": TENSOR_SUFFIXES, "image": IMAGE_SUFFIXES, "text": TEXT_SUFFIXES}
_KIND_WORDS = {"tensor": ("tensor file (.npy/.npz)", "tensor files (.npy/.npz)"),
               "image": ("image", "images"), "text": ("text file (.txt)", "text files (.txt)")}


def _count(kind: str, n: int) -> str:
    return f"{n} {_KIND_WORDS[kind][n != 1]}"


def _bounded(paths: list[Path], wanted: int | None, root: Path, what: str) -> list[Path]:
    """The files to read: the first ``wanted`` ones, and never more than MAX_FILES."""
    if wanted is not None:
        paths = paths[:wanted]
    if len(paths) > MAX_FILES:
        raise UserError("E-DATA-UNREADABLE", f"{root} holds {len(paths)} {what}; edgekit reads at most {MAX_FILES}",
                        "pass --data with a smaller folder (or a sub-folder), or ask for fewer samples")
    return paths


def check_finite(sample: tuple[np.ndarray, ...], src: str, spec: ModelSpec) -> None:
    for t, a in zip(spec.inputs, sample):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise UserError("E-DATA-VALUE", f"sample {src} holds NaN or Inf in input {t.name!r}",
                            "remove or fix that file")


def _load_tensors(paths: list[Path], spec: ModelSpec, root: Path) -> list[tuple[np.ndarray, ...]]:
    """Each file through edgekit.arrays: its header is checked against the model before any allocation."""
    out = []
    for p in paths:
        rel = p.relative_to(root)
        try:
            if p.suffix.lower() == ".npy":
                if len(spec.inputs) != 1:
                    raise UserError("E-DATA-SHAPE", f"{rel} is a .npy file, but model {spec.name} takes "
                                    f"{len(spec.inputs)} inputs ({', '.join(spec.input_names)})",
                                    "store each sample as a .npz file with one array per input name")
                t = spec.inputs[0]
                arrays = (read_npy(p, Expect(t.dtype, tuple(t.shape)), name=str(rel)),)
            else:
                got = read_npz(p, {t.name: Expect(t.dtype, tuple(t.shape)) for t in spec.inputs}, name=str(rel))
                arrays = tuple(got[n] for n in spec.input_names)
        except UserError as exc:
            if exc.code != "E-DATA-UNREADABLE":
                raise
            raise UserError(exc.code, exc.what, "replace the file (written by numpy.save / numpy.savez, without "
                            "pickled objects), or remove it from the folder") from exc
        for t, a in zip(spec.inputs, arrays):  # arrays.py checked already; kept as a second line of defence
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
    from PIL import Image

    def unreadable(why: str) -> UserError:
        return UserError("E-DATA-UNREADABLE", f"cannot decode image {path}: {why}", "replace or remove that file")

    try:
        with warnings.catch_warnings():
            # Pillow only warns between 1x and 2x its pixel limit: a warning is an error here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # only the decoders of the image suffixes (not EPS, PSD, TIFF... whatever the bytes claim to be)
            with Image.open(path, formats=IMAGE_FORMATS) as img:
                w, h = img.size  # from the header: nothing is decoded yet
                if w * h > MAX_IMAGE_PIXELS:  # also when Image.MAX_IMAGE_PIXELS was raised or disabled
                    raise unreadable(f"it is {w}x{h} pixels, more than edgekit decodes ({MAX_IMAGE_PIXELS} pixels)")
                if w < 1 or h < 1:
                    raise unreadable(f"it is {w}x{h} pixels")
                img = img.convert(pre.color)  # decodes
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise unreadable(f"too many pixels, a possible decompression bomb ({exc})") from exc
    except Exception as exc:  # untrusted bytes: whatever a decoder raises (OSError, ValueError, SyntaxError...)
        raise unreadable(f"{type(exc).__name__}: {exc}") from exc
    chw = preprocess_image(img, pre)
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
    if not folder.is_absolute() and base is not None:  # a bundle's tokenizer: it must stay inside the bundle
        from edgekit.manifest import inside

        folder = inside(base, f"{pre.tokenizer}/tokenizer.json", "the tokenizer").parent
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise UserError("E-BUNDLE-INVALID", f"tokenizer file {path} is missing", "re-export the bundle")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises its own exception type for a malformed file
        raise UserError("E-BUNDLE-INVALID", f"cannot read the tokenizer {path}: {str(exc)[:300]}", "re-export the bundle") from exc
    tok.enable_truncation(pre.max_length)
    tok.enable_padding(length=pre.max_length, pad_id=tok.token_to_id("[PAD]") or 0, pad_token="[PAD]")
    return tok


def _load_text(paths: list[Path], pre: TextPreprocess, spec: ModelSpec, root: Path, base: Path | None,
               wanted: int | None = None):
    """Sentences of ``paths`` in order; stops reading once ``wanted`` sentences are found."""
    sentences, sources = [], []
    for n, p in enumerate(paths):
        if wanted is not None and len(sentences) >= wanted:
            break
        if n >= MAX_FILES:
            raise UserError("E-DATA-UNREADABLE", f"{root} holds {len(paths)} text files; edgekit reads at most "
                            f"{MAX_FILES}", "pass --data with a smaller folder (or a sub-folder), or ask for fewer samples")
        try:
            with open(p, "rb") as f:
                raw = f.read(MAX_TEXT_BYTES + 1)
        except OSError as exc:
            raise UserError("E-DATA-UNREADABLE", f"cannot read {p}: {exc}", "check the file's permissions") from exc
        if len(raw) > MAX_TEXT_BYTES:
            raise UserError("E-DATA-UNREADABLE", f"{p} is larger than {MAX_TEXT_BYTES} bytes, the most edgekit "
                            "reads from one text file", "split it into smaller .txt files, or keep fewer sentences")
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise UserError("E-DATA-UNREADABLE", f"cannot read {p} as UTF-8 text: {exc}", "save it as UTF-8") from exc
        del raw
        for i, line in enumerate(lines, 1):
            if line.strip():
                if wanted is not None and len(sentences) >= wanted:
                    break
                if len(sentences) >= MAX_SAMPLES:
                    raise UserError("E-DATA-UNREADABLE", f"{root} holds more than {MAX_SAMPLES} sentences; "
                                    f"edgekit reads at most {MAX_SAMPLES}",
                                    "pass --data with fewer sentences, or ask for fewer samples")
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


def samples_from(data, spec: ModelSpec, limit: int = MAX_SAMPLES) -> CalibrationSet:
    """Samples given in memory (the Python API's ``data=``): a numpy array or tensor (first axis =
    samples, single-input models), a list of arrays, of tuples of arrays (one per input) or of dicts
    keyed by input name (keyword inputs; other keys are ignored), or any iterable such as a torch
    DataLoader. A batch whose shape is (B, *sample) is split into B samples; an item's one array
    after the inputs, when it holds a whole number per sample ((x, y) batches), labels the samples
    (edgekit.accuracy); other extra items are ignored. Each sample is checked against the
    ModelSpec (E-DATA-SHAPE), never cast silently."""
    if isinstance(data, (str, bytes)):
        raise UserError("E-DATA-UNREADABLE", f"data is a {type(data).__name__}", "pass a folder path, arrays, or an iterable of arrays")
    items = [data] if _is_array(data) or isinstance(data, Mapping) else data  # one dict: a batch keyed by input
    samples: list[tuple[np.ndarray, ...]] = []
    labels: list[int] | None = []
    try:
        for n, item in enumerate(items):
            if isinstance(item, Mapping):  # keyword inputs, e.g. a tokenizer's encoding or a DataLoader batch dict
                item = _by_name(item, spec, n)
            arrays = (item,) if _is_array(item) else tuple(item)[: len(spec.inputs)] if isinstance(item, (tuple, list)) else None
            if arrays is None or len(arrays) < len(spec.inputs) or not all(_is_array(a) for a in arrays):
                raise UserError("E-DATA-SHAPE", f"data item {n} is a {type(item).__name__}, not {len(spec.inputs)} array(s)",
                                f"give each sample as a tuple of arrays ({', '.join(spec.input_names)})")
            got = _split(tuple(_numpy(a) for a in arrays), spec, n)
            samples.extend(got)
            labels = _item_labels(item, spec, len(got), labels)
            if len(samples) >= limit:
                break
    except TypeError as exc:
        raise UserError("E-DATA-UNREADABLE", f"data of type {type(data).__name__} is not iterable", "pass arrays or a DataLoader") from exc
    if not samples:
        raise UserError("E-DATA-EMPTY", "data holds no samples", "pass at least one sample")
    samples = samples[:limit]
    sources = tuple(f"data[{i}]" for i in range(len(samples)))
    for sample, src in zip(samples, sources):
        check_finite(sample, src, spec)
    labelled = labels is not None and len(labels) >= len(samples)
    return CalibrationSet(tuple(samples), sources, "tensor", "(arrays passed in memory)",
                          tuple(labels[: len(samples)]) if labelled else None,
                          f"{IN_MEMORY} ((x, y) batches)" if labelled else "")


def _item_labels(item, spec: ModelSpec, count: int, labels: list[int] | None) -> list[int] | None:
    """A DataLoader's (inputs..., y) item: y, whole numbers, one per sample, labels them; the
    first item without such a y leaves the whole set unlabelled (None)."""
    if labels is None or not isinstance(item, (tuple, list)) or len(item) != len(spec.inputs) + 1:
        return None
    y = item[-1]
    y = _numpy(y) if _is_array(y) else np.asarray(y) if isinstance(y, (int, np.integer)) and not isinstance(y, bool) else None
    if y is None or y.dtype.kind not in "iu" or y.size != count or y.ndim > 1:
        return None
    return labels + [int(v) for v in y.reshape(-1)]


def _by_name(item: Mapping, spec: ModelSpec, n: int) -> tuple:
    missing = [name for name in spec.input_names if name not in item]
    if missing:
        raise UserError("E-DATA-SHAPE", f"data item {n} has no {', '.join(map(repr, missing))} (keys: "
                        f"{', '.join(map(str, list(item)[:8]))})", f"key each sample by the model's inputs: {', '.join(spec.input_names)}")
    return tuple(item[name] for name in spec.input_names)


def _is_array(x) -> bool:
    return isinstance(x, np.ndarray) or (hasattr(x, "detach") and hasattr(x, "numpy") and hasattr(x, "shape"))


def _numpy(x) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def _split(arrays: tuple[np.ndarray, ...], spec: ModelSpec, n: int) -> list[tuple[np.ndarray, ...]]:
    """One item -> samples shaped like the spec: (B, *sample) splits into B, an exact shape is one."""
    counts = set()
    for t, a in zip(spec.inputs, arrays):
        if tuple(a.shape) == tuple(t.shape) or (t.shape and t.shape[0] == 1 and tuple(a.shape) == tuple(t.shape[1:])):
            counts.add(None)  # one sample (with or without its batch axis of 1)
        elif a.ndim == len(t.shape) and t.shape and t.shape[0] == 1 and tuple(a.shape[1:]) == tuple(t.shape[1:]):
            counts.add(a.shape[0])
        elif a.ndim == len(t.shape) + 1 and tuple(a.shape[1:]) == tuple(t.shape):
            counts.add(a.shape[0])
        else:
            raise UserError("E-DATA-SHAPE", f"data item {n}: input {t.name!r} has shape {tuple(a.shape)}, the model takes "
                            f"{tuple(t.shape)} (or a batch of them)", f"give samples of shape {tuple(t.shape)}")
        if np.dtype(a.dtype) != np.dtype(t.dtype):
            raise UserError("E-DATA-SHAPE", f"data item {n}: input {t.name!r} has dtype {a.dtype}, the model takes {t.dtype}",
                            f"cast it first, e.g. x.astype(np.{t.dtype}) or tensor.to(torch.{t.dtype})")
    if len(counts) != 1:
        raise UserError("E-DATA-SHAPE", f"data item {n}: the inputs hold different numbers of samples", "batch every input alike")
    count = counts.pop()
    if count is None:
        return [tuple(a.reshape(t.shape) for a, t in zip(arrays, spec.inputs))]
    return [tuple(a[i].reshape(t.shape).copy() for a, t in zip(arrays, spec.inputs)) for i in range(count)]
