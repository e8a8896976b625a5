"""edgekit.arrays: .npy/.npz files are untrusted; their headers are checked before anything is allocated."""
import io
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from edgekit.arrays import MAX_BYTES, MAX_SAMPLES, Expect, read_npy, read_npz
from edgekit.errors import UserError

IMAGE = Expect("float32", (1, 3, 32, 32))
HUGE = (1 << 20, 1 << 20, 3, 1024)  # 12 PiB of float32


def npy_header(shape, descr="<f4", fortran=False, version=(1, 0)) -> bytes:
    b = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(b, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return b.getvalue()


def npy_bytes(a: np.ndarray, **kw) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, a, allow_pickle=kw.pop("allow_pickle", False), **kw)
    return b.getvalue()


def write_npz(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


def raises(expected_code, fn, *args, **kw) -> UserError:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    assert e.value.code == expected_code, str(e.value)
    return e.value


def cheaply(expected_code, fn, *args, **kw) -> UserError:
    """The call fails with `code`, fast and without allocating anything big."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        err = raises(expected_code, fn, *args, **kw)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 100 * 1024**2, peak
    return err


class Pickled:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_valid_npy_and_npz_are_read_exactly(tmp_path):
    x = np.arange(3 * 32 * 32, dtype=np.float32).reshape(1, 3, 32, 32)
    np.save(tmp_path / "a.npy", x)
    got = read_npy(tmp_path / "a.npy", IMAGE, name="a.npy")
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, x)
    with open(tmp_path / "a.npy", "rb") as f:  # a file object works too
        np.testing.assert_array_equal(read_npy(f, IMAGE), x)
    ids = np.arange(16, dtype=np.int64)[None]
    np.savez_compressed(tmp_path / "b.npz", ids=ids, mask=np.ones((1, 16), np.int64), extra=np.zeros(3))
    got = read_npz(tmp_path / "b.npz", {"ids": Expect("int64", (1, 16)), "mask": Expect("int64", (1, 16))})
    assert set(got) == {"ids", "mask"}
    np.testing.assert_array_equal(got["ids"], ids)


def test_fortran_order_version_2_and_leading_dimension(tmp_path):
    x = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    (tmp_path / "f.npy").write_bytes(npy_bytes(x, version=(2, 0)))
    got = read_npy(tmp_path / "f.npy", Expect("float32", (3, 4), max_leading=2))
    np.testing.assert_array_equal(got, x)
    assert got.flags.c_contiguous
    err = raises("E-DATA-SHAPE", read_npy, tmp_path / "f.npy", Expect("float32", (3, 4), max_leading=1), name="f.npy")
    assert "f.npy" in str(err) and "(2, 3, 4)" in str(err) and "N from 1 to 1" in str(err)
    (tmp_path / "e.npy").write_bytes(npy_bytes(np.zeros((0, 3, 4), np.float32)))
    raises("E-DATA-SHAPE", read_npy, tmp_path / "e.npy", Expect("float32", (3, 4), max_leading=5))
    with pytest.raises(ValueError):
        Expect("float32", (3,), max_leading=MAX_SAMPLES + 1)


def test_huge_declared_shape_fails_before_any_allocation(tmp_path):
    p = tmp_path / "huge.npy"
    p.write_bytes(npy_header(HUGE) + b"\0" * 64)
    err = cheaply("E-DATA-SHAPE", read_npy, p, IMAGE, name="huge.npy")
    assert "huge.npy" in str(err) and str(HUGE) in str(err) and "(1, 3, 32, 32)" in str(err)
    # even when the expectation itself is that big (a hostile manifest), the byte limit holds
    err = cheaply("E-DATA-SHAPE", read_npy, p, Expect("float32", HUGE), name="huge.npy")
    assert str(MAX_BYTES) in str(err)


def test_huge_declared_shape_inside_npz_fails_before_any_allocation(tmp_path):
    p = tmp_path / "huge.npz"
    write_npz(p, {"image.npy": npy_header(HUGE) + b"\0" * 64})
    err = cheaply("E-DATA-SHAPE", read_npz, p, {"image": IMAGE}, name="huge.npz")
    assert "huge.npz" in str(err) and "'image'" in str(err) and str(HUGE) in str(err)
    # two arrays that each fit but together exceed the limit: refused before reading either
    half = (MAX_BYTES // 4 // 2 + 1,)
    write_npz(p, {"a.npy": npy_header(half), "b.npy": npy_header(half)})
    cheaply("E-DATA-SHAPE", read_npz, p, {"a": Expect("float32", half), "b": Expect("float32", half)})


def test_truncated_files_are_unreadable(tmp_path):
    data = npy_bytes(np.ones((1, 3, 32, 32), np.float32))
    p = tmp_path / "t.npy"
    p.write_bytes(data[:-100])
    err = raises("E-DATA-UNREADABLE", read_npy, p, IMAGE, name="t.npy")
    assert "truncated" in str(err) and "t.npy" in str(err)
    with open(p, "rb") as f:  # a stream that cannot tell its size: the short read is caught
        raises("E-DATA-UNREADABLE", read_npy, io.BufferedReader(io.BytesIO(f.read())), IMAGE)
    p.write_bytes(data[:30])  # inside the header
    raises("E-DATA-UNREADABLE", read_npy, p, IMAGE)
    q = tmp_path / "t.npz"
    write_npz(q, {"image.npy": data[:-100]}, zipfile.ZIP_DEFLATED)
    raises("E-DATA-UNREADABLE", read_npz, q, {"image": IMAGE})


def test_garbage_headers_and_zips_are_unreadable_never_a_traceback(tmp_path):
    p = tmp_path / "x.npy"
    cases = [
        b"not an array at all",
        b"\x93NUMPY\x03\x00" + b"\0" * 100,  # unsupported version
        b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 31) + b"{",  # a 2 GiB header
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"{'descr': (((((((((",
        b"\x93NUMPY\x01\x00" + struct.pack("<H", 40) + b"[1, 2, 3]".ljust(40),
        npy_header((1, 3, 32, 32), descr=[("a", "<f4")]),
    ]
    for data in cases:
        p.write_bytes(data)
        cheaply("E-DATA-UNREADABLE" if data is not cases[-1] else "E-DATA-SHAPE", read_npy, p, IMAGE)
    p.write_bytes(b"PK\x03\x04 this is no zip")
    raises("E-DATA-UNREADABLE", read_npz, p, {"image": IMAGE})
    write_npz(p, {"image.npy": b"raw bytes, no npy"})
    raises("E-DATA-UNREADABLE", read_npz, p, {"image": IMAGE})
    raises("E-DATA-UNREADABLE", read_npy, tmp_path, IMAGE)  # a folder


def test_wrong_dtype_and_byte_order(tmp_path):
    p = tmp_path / "d.npy"
    np.save(p, np.zeros((1, 3, 32, 32), np.float64))
    err = raises("E-DATA-SHAPE", read_npy, p, IMAGE, name="d.npy")
    assert "float64" in str(err) and "float32" in str(err)
    np.save(p, np.zeros((1, 3, 32, 32), ">f4"))
    raises("E-DATA-SHAPE", read_npy, p, IMAGE)
    np.save(p, np.full((1, 3, 32, 32), 2, "<f4"))
    assert read_npy(p, IMAGE).dtype == np.dtype("float32")


def test_object_arrays_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pickle-ran"
    evil = np.array([Pickled(marker), 1], dtype=object)
    np.save(tmp_path / "o.npy", evil, allow_pickle=True)
    np.savez(tmp_path / "o.npz", image=evil)
    err = raises("E-DATA-UNREADABLE", read_npy, tmp_path / "o.npy", IMAGE, name="o.npy")
    assert "o.npy" in str(err) and "object" in str(err)
    raises("E-DATA-UNREADABLE", read_npz, tmp_path / "o.npz", {"image": IMAGE})
    assert not marker.exists()
    np.load(tmp_path / "o.npy", allow_pickle=True)  # the fixture is real: trusting the file runs the pickle
    assert marker.exists()


def test_missing_npz_array_and_code_override(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, wrong=np.zeros((1, 3, 32, 32), np.float32))
    err = raises("E-DATA-SHAPE", read_npz, p, {"image": IMAGE}, name="m.npz")
    assert "m.npz" in str(err) and "image" in str(err) and "wrong" in str(err)
    err = raises("E-BUNDLE-INVALID", read_npz, p, {"image": IMAGE}, code="E-BUNDLE-INVALID", fix="re-export it")
    assert err.fix == "re-export it"
    p.write_bytes(npy_header(HUGE))
    raises("E-BUNDLE-INVALID", read_npy, p, IMAGE, code="E-BUNDLE-INVALID")
