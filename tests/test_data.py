import zipfile

import numpy as np
import pytest
from PIL import Image

from edgekit.data import load_samples, preprocess_image
from edgekit.errors import UserError
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

SPEC = ModelSpec("m", (TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),), (TensorSpec("logits", (1, 10)),),
                 ImagePreprocess(36, 32))


def test_images_are_resized_cropped_normalised(image_dir):
    cs = load_samples(image_dir, SPEC)
    assert len(cs) == 3 and cs.kind == "image"
    assert [s[0].shape for s in cs.samples] == [(1, 3, 32, 32)] * 3
    assert list(cs.sources) == ["img0.png", "img1.png", "img2.png"]  # sorted, deterministic
    assert cs.sha256 == load_samples(image_dir, SPEC).sha256


def test_preprocessing_matches_hand_computation():
    img = Image.new("RGB", (72, 36), (255, 128, 0))  # resize 36 on the short side keeps it; crop 32
    x = preprocess_image(img, ImagePreprocess(36, 32))
    expected = (np.array([255, 128, 0]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, 16, 16], expected, rtol=1e-5)


def test_npy_samples_must_have_the_model_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    assert len(load_samples(tmp_path, SPEC)) == 1
    np.save(tmp_path / "b.npy", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-SHAPE" and "b.npy" in str(e.value) and "(1, 3, 32, 32)" in str(e.value)


def test_npz_needs_input_names_and_nan_is_rejected(tmp_path):
    np.savez(tmp_path / "a.npz", wrong=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-SHAPE" and "image" in str(e.value)
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "a.npz", image=x)
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-VALUE"


def test_empty_missing_and_unreadable_data(tmp_path):
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-EMPTY"
    with pytest.raises(UserError) as e:
        load_samples(tmp_path / "nope", SPEC)
    assert e.value.code == "E-DATA-UNREADABLE"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "broken.jpg" in str(e.value)


def test_text_is_tokenized_to_fixed_length(tmp_path):
    from edgekit.models import BUILTIN

    spec = BUILTIN["tiny_transformer"]().spec
    (tmp_path / "s.txt").write_text("A cat sat on the mat.\n\nAnother, longer sentence about phones and models.\n")
    cs = load_samples(tmp_path, spec)
    assert len(cs) == 2 and cs.sources == ("s.txt:1", "s.txt:3")
    ids, mask = cs.samples[0]
    assert ids.shape == (1, 16) and ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids[0, 0] == 101 and mask[0].sum() < 16 and mask[0, -1] == 0  # [CLS] first, padding last


# --- untrusted data folders ----------------------------------------------------------------------

def _png_1bit(path, w, h, valid=True):
    """A 1-bit grayscale PNG of w x h pixels written by hand: tiny on disk however large it claims to be."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (w + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h if valid else 1)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _cheap_error(fn, *args, **kw) -> UserError:
    import time
    import tracemalloc

    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(UserError) as e:
            fn(*args, **kw)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0 and peak < 100 * 1024**2, peak
    return e.value


def test_huge_declared_npy_shape_is_a_shape_error_before_allocating(tmp_path):
    import io

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1 << 20, 1 << 20, 3, 1024)})
    (tmp_path / "huge.npy").write_bytes(header.getvalue() + b"\0" * 64)
    err = _cheap_error(load_samples, tmp_path, SPEC)
    assert err.code == "E-DATA-SHAPE" and "huge.npy" in str(err) and "(1, 3, 32, 32)" in str(err)
    (tmp_path / "huge.npy").unlink()
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("image.npy", header.getvalue() + b"\0" * 64)
    err = _cheap_error(load_samples, tmp_path, SPEC)
    assert err.code == "E-DATA-SHAPE" and "huge.npz" in str(err)


def test_truncated_and_pickled_npy_are_unreadable_and_never_unpickled(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((1, 3, 32, 32), np.float32))
    (tmp_path / "a.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-8])
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "a.npy" in str(e.value) and "remove it" in e.value.fix
    (tmp_path / "a.npy").unlink()
    marker = tmp_path / "pickle-ran"
    np.save(tmp_path / "o.npy", np.array([_Pickled(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "o.npy" in str(e.value)
    assert not marker.exists()


class _Pickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_folder_mixing_kinds_of_samples_is_refused(image_dir):
    (image_dir / "img2.png").unlink()
    np.save(image_dir / "x.npy", np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError) as e:
        load_samples(image_dir, SPEC)
    err = e.value
    assert err.code == "E-DATA-MIXED" and "2 images" in err.what and "1 tensor file (.npy/.npz)" in err.what
    assert "sub-folder" in err.fix
    (image_dir / "x.npy").unlink()
    (image_dir / "sub").mkdir()
    (image_dir / "sub" / "notes.txt").write_text("a sentence\n")
    with pytest.raises(UserError) as e:
        load_samples(image_dir, SPEC)
    assert e.value.code == "E-DATA-MIXED" and "1 text file (.txt)" in e.value.what
    (image_dir / "sub" / "notes.txt").unlink()
    for ignored in ("README.md", ".hidden.npy", "labels.csv"):
        (image_dir / ignored).write_text("ignored")
    cs = load_samples(image_dir, SPEC)
    assert cs.kind == "image" and len(cs) == 2
    assert set(cs.describe()) == {"root", "kind", "count", "sha256"}


def test_decompression_bomb_images_are_unreadable(tmp_path, monkeypatch):
    from PIL import Image

    _png_1bit(tmp_path / "bomb.png", 30000, 30000, valid=False)  # over twice Pillow's limit: it raises
    err = _cheap_error(load_samples, tmp_path, SPEC)
    assert err.code == "E-DATA-UNREADABLE" and "bomb.png" in str(err)
    # 100 Mpixel: between 1x and 2x the limit, where Pillow only warns; a valid image that would decode
    _png_1bit(tmp_path / "bomb.png", 10000, 10000)
    err = _cheap_error(load_samples, tmp_path, SPEC)
    assert err.code == "E-DATA-UNREADABLE" and "bomb.png" in str(err)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # someone disabled Pillow's guard: edgekit's holds
    err = _cheap_error(load_samples, tmp_path, SPEC)
    assert err.code == "E-DATA-UNREADABLE" and "10000x10000" in str(err)


def test_limit_reads_only_the_files_it_needs(tmp_path, image_dir, monkeypatch):
    import edgekit.data as D

    tmp_path = tmp_path / "tensors"  # image_dir is tmp_path / "imgs"
    tmp_path.mkdir()
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((1, 3, 32, 32), i, np.float32))
    (tmp_path / "9.npy").write_bytes(b"broken")  # sorted last: never read with limit <= 3
    assert [float(s[0].max()) for s in load_samples(tmp_path, SPEC, limit=2).samples] == [0.0, 1.0]
    assert len(load_samples(tmp_path, SPEC, limit=0)) == 0
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE"
    (image_dir / "zz.png").write_bytes(b"not a png")
    assert len(load_samples(image_dir, SPEC, limit=3)) == 3
    (tmp_path / "9.npy").unlink()
    monkeypatch.setattr(D, "MAX_FILES", 2)  # a folder with more files than edgekit reads
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "at most 2" in str(e.value)
    assert len(load_samples(tmp_path, SPEC, limit=2)) == 2


def test_text_limits(tmp_path, monkeypatch):
    import edgekit.data as D
    from edgekit.models import BUILTIN

    spec = BUILTIN["tiny_transformer"]().spec
    (tmp_path / "a.txt").write_text("\n\n")  # no sentence: reading goes on to the next file
    (tmp_path / "b.txt").write_text("first sentence\nsecond sentence\n")
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe not utf-8")  # never read with limit=2
    cs = load_samples(tmp_path, spec, limit=2)
    assert cs.sources == ("b.txt:1", "b.txt:2")
    (tmp_path / "c.txt").unlink()
    monkeypatch.setattr(D, "MAX_TEXT_BYTES", 20)
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, spec)
    assert e.value.code == "E-DATA-UNREADABLE" and "b.txt" in str(e.value) and "20 bytes" in str(e.value)
    monkeypatch.setattr(D, "MAX_TEXT_BYTES", 1000)
    monkeypatch.setattr(D, "MAX_SAMPLES", 1)
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, spec)
    assert e.value.code == "E-DATA-UNREADABLE" and "sentences" in str(e.value)


def test_only_the_image_formats_of_the_suffixes_are_decoded(image_dir):
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image_dir / "img1.png", format="TIFF")  # TIFF bytes behind a .png name
    with pytest.raises(UserError) as e:
        load_samples(image_dir, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "img1.png" in str(e.value)
    Image.new("RGB", (40, 40)).save(image_dir / "img1.png", format="JPEG")  # any of the suffixes' formats is fine
    assert len(load_samples(image_dir, SPEC)) == 3
