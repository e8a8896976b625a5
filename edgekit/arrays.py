"""Arrays from untrusted ``.npy`` / ``.npz`` files, checked against what the caller expects.

Data folders and a bundle's ``verify_inputs.npz`` can come from anyone (a pull request in CI), so
nothing in a file is trusted before it is checked:

- the ``.npy`` header (magic, a bounded header length, then numpy's own header parser
  ``np.lib.format.read_array_header_1_0/2_0``, which only evaluates Python literals) is read first;
- its dtype, shape and byte size are checked against an :class:`Expect` and the module limits
  BEFORE anything is allocated; object dtypes are refused, so nothing is ever unpickled;
- only then is the data read, in bounded chunks, and a file that holds fewer bytes than its header
  declares is refused (for a plain file, before the allocation);
- ``.npz`` files are opened with :mod:`zipfile` and each needed member is checked the same way;
  a member's declared uncompressed size is not trusted either (reads never exceed what the checked
  header implies), and nothing is extracted to disk.

Byte order: the array must have exactly the expected dtype, in native or little-endian byte order
(little-endian is what ``np.save`` writes on every common machine); big-endian data is refused as a
dtype mismatch (E-DATA-SHAPE), as :meth:`edgekit.spec.TensorSpec.check` would. Arrays come back
C-contiguous, writable and in native byte order.

Every failure is a :class:`edgekit.errors.UserError`: E-DATA-SHAPE (wrong dtype or shape, or more
than the limits allow) or E-DATA-UNREADABLE (not an npy/npz, truncated, bad header, object/pickled
array, zip problems). ``code=`` replaces the code of every error (e.g. E-BUNDLE-INVALID for a
bundle's file) and ``fix=`` the fix.
"""
from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from edgekit.errors import UserError

MAX_SAMPLES = 100_000  # the largest leading (sample) dimension an Expect may allow
MAX_BYTES = 2 * 1024**3  # the largest array, and the largest total of the arrays read from one .npz
MAX_HEADER_BYTES = 10_000  # numpy's own default limit for an .npy header
_CHUNK = 16 * 1024**2  # data is read in chunks of this size


@dataclass(frozen=True)
class Expect:
    """One array's expected dtype (a numpy name like "float32") and shape.

    With ``max_leading`` set, the array has one extra leading dimension N with
    ``1 <= N <= max_leading`` (at most MAX_SAMPLES), i.e. shape ``(N, *shape)``: N stacked samples.
    """

    dtype: str
    shape: tuple[int, ...]
    max_leading: int | None = None

    def __post_init__(self):
        dt = np.dtype(self.dtype)  # TypeError for an unknown dtype name: the caller's bug
        if dt.hasobject:
            raise ValueError(f"Expect: object dtype {self.dtype!r} is never read from a file")
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"Expect: shape {self.shape!r} must be non-negative ints")
        object.__setattr__(self, "shape", shape)
        if self.max_leading is not None and not 1 <= self.max_leading <= MAX_SAMPLES:
            raise ValueError(f"Expect: max_leading must be within 1..{MAX_SAMPLES}, not {self.max_leading!r}")

    def describe(self) -> str:
        if self.max_leading is None:
            return f"shape {self.shape} and dtype {self.dtype}"
        return (f"shape (N, {', '.join(map(str, self.shape))}) with N from 1 to {self.max_leading} "
                f"and dtype {self.dtype}")


def read_npy(source: str | os.PathLike | BinaryIO, expect: Expect, *, name: str | None = None,
             code: str | None = None, fix: str | None = None) -> np.ndarray:
    """The array of one ``.npy`` file (a path, or a binary file object positioned at its start)."""
    name = name or _name(source)
    err = _Errors(name, code, fix)
    try:
        if isinstance(source, (str, os.PathLike)):
            with _open_regular(source) as fp:
                available = os.fstat(fp.fileno()).st_size
                return _read_npy(fp, expect, err, "", available)
        available = None
        if source.seekable():
            here = source.tell()
            available = source.seek(0, io.SEEK_END) - here
            source.seek(here)
        return _read_npy(source, expect, err, "", available)
    except UserError:
        raise
    except Exception as exc:  # untrusted bytes: any failure of the parsers is "unreadable"
        raise err.unreadable(f"cannot read it: {type(exc).__name__}: {exc}") from exc


def read_npz(source: str | os.PathLike | BinaryIO, expects: Mapping[str, Expect], *, name: str | None = None,
             code: str | None = None, fix: str | None = None) -> dict[str, np.ndarray]:
    """The arrays named in ``expects`` (other members are ignored) of one ``.npz`` file.

    All their headers are checked (and the total size, at most MAX_BYTES) before any data is read.
    """
    name = name or _name(source)
    err = _Errors(name, code, fix)
    try:
        if isinstance(source, (str, os.PathLike)):
            with _open_regular(source) as fp:
                return _read_npz(fp, expects, err)
        return _read_npz(source, expects, err)
    except UserError:
        raise
    except zipfile.BadZipFile as exc:
        raise err.unreadable(f"is not a readable .npz (zip) file: {exc}") from exc
    except Exception as exc:  # untrusted bytes: any failure of zipfile/zlib/numpy is "unreadable"
        raise err.unreadable(f"cannot read it: {type(exc).__name__}: {exc}") from exc


# --- internals ---------------------------------------------------------------------------------


class _Errors:
    def __init__(self, name: str, code: str | None, fix: str | None):
        self.name, self.code, self.fix = name, code, fix

    def shape(self, what: str, expect: Expect) -> UserError:
        return UserError(self.code or "E-DATA-SHAPE", f"{self.name}{what}",
                         self.fix or f"save it with {expect.describe()}")

    def unreadable(self, what: str, array: str = "") -> UserError:
        where = f"{self.name}: array {array!r}" if array else self.name
        return UserError(self.code or "E-DATA-UNREADABLE", f"{where} {what}",
                         self.fix or "replace the file with one written by numpy.save / numpy.savez "
                                     "(plain numeric arrays, allow_pickle=False)")


def _name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", "") or "<stream>")


def _open_regular(path) -> BinaryIO:
    """Open a regular file for reading; a FIFO or device is refused without blocking on it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{os.fspath(path)} is not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _short(value, limit: int = 120) -> str:
    s = repr(value)
    return s if len(s) <= limit else s[:limit] + "..."


def _read_exact(fp: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = fp.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_header(fp: BinaryIO, err: _Errors, array: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header size in bytes); reads at most MAX_HEADER_BYTES + 12."""
    magic = _read_exact(fp, np.lib.format.MAGIC_LEN)
    if len(magic) < np.lib.format.MAGIC_LEN or magic[:-2] != np.lib.format.MAGIC_PREFIX:
        raise err.unreadable("is not a .npy array (no npy magic string)", array)
    version = (magic[-2], magic[-1])
    if version == (1, 0):
        length_fmt, parse = "<H", np.lib.format.read_array_header_1_0
    elif version == (2, 0):
        length_fmt, parse = "<I", np.lib.format.read_array_header_2_0
    else:  # 3.0 only exists for structured dtypes with non-latin-1 field names: never expected
        raise err.unreadable(f"uses .npy format version {version[0]}.{version[1]}, which edgekit does not read "
                             "(only 1.0 and 2.0)", array)
    raw_len = _read_exact(fp, struct.calcsize(length_fmt))
    if len(raw_len) < struct.calcsize(length_fmt):
        raise err.unreadable("is truncated inside its .npy header", array)
    (length,) = struct.unpack(length_fmt, raw_len)
    if length > MAX_HEADER_BYTES:
        raise err.unreadable(f"declares a {length}-byte .npy header (at most {MAX_HEADER_BYTES})", array)
    header = _read_exact(fp, length)
    if len(header) < length:
        raise err.unreadable("is truncated inside its .npy header", array)
    try:
        shape, fortran, dtype = parse(io.BytesIO(raw_len + header), max_header_size=MAX_HEADER_BYTES)
    except Exception as exc:  # ValueError for a malformed header; RecursionError etc. for hostile ones
        raise err.unreadable(f"has an invalid .npy header: {_short(str(exc), 200)}", array) from exc
    return tuple(shape), bool(fortran), np.dtype(dtype), len(magic) + len(raw_len) + length


def _check(shape: tuple, dtype: np.dtype, expect: Expect, err: _Errors, array: str) -> int:
    """The data size in bytes of a header that fits ``expect``; raises otherwise. Allocates nothing."""
    where = f": array {array!r}" if array else ""
    if dtype.hasobject:
        raise err.unreadable(f"holds Python objects (dtype {_short(str(dtype))}), which edgekit never unpickles",
                             array)
    declares = f"{where} declares shape {_short(shape)} and dtype {_short(str(dtype))}"
    wanted = np.dtype(expect.dtype)
    if dtype.byteorder == ">" or dtype.newbyteorder("=") != wanted:  # ">" is never native: numpy says "="
        raise err.shape(f"{declares}; the model takes {expect.describe()} (native or little-endian)", expect)
    if expect.max_leading is None:
        fits = shape == expect.shape
    else:
        fits = (len(shape) == len(expect.shape) + 1 and shape[1:] == expect.shape
                and 1 <= shape[0] <= expect.max_leading)
    if not fits:
        raise err.shape(f"{declares}; the model takes {expect.describe()}", expect)
    count = 1
    for d in shape:
        count *= d
    nbytes = count * dtype.itemsize
    if nbytes > MAX_BYTES:
        raise err.shape(f"{declares}: {nbytes} bytes, more than edgekit reads ({MAX_BYTES} bytes)", expect)
    return nbytes


def _read_data(fp: BinaryIO, shape: tuple, fortran: bool, dtype: np.dtype, nbytes: int, err: _Errors,
               array: str) -> np.ndarray:
    out = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    view = memoryview(out.reshape(-1).view(np.uint8)) if nbytes else memoryview(b"")
    pos = 0
    while pos < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - pos))
        if not chunk:
            raise err.unreadable(f"is truncated: its header declares {nbytes} bytes of data, it holds {pos}", array)
        view[pos:pos + len(chunk)] = chunk
        pos += len(chunk)
    if fortran:
        out = np.ascontiguousarray(out.T)
    if not out.dtype.isnative:  # little-endian data on a big-endian machine
        out = out.astype(out.dtype.newbyteorder("="))
    return out


def _read_npy(fp: BinaryIO, expect: Expect, err: _Errors, array: str, available: int | None) -> np.ndarray:
    shape, fortran, dtype, header_size = _read_header(fp, err, array)
    nbytes = _check(shape, dtype, expect, err, array)
    if available is not None and available - header_size < nbytes:
        raise err.unreadable(f"is truncated: its header declares {nbytes} bytes of data, it holds "
                             f"{max(available - header_size, 0)}", array)
    return _read_data(fp, shape, fortran, dtype, nbytes, err, array)


def _member(zf: zipfile.ZipFile, key: str) -> zipfile.ZipInfo | None:
    for candidate in (key + ".npy", key):
        try:
            return zf.getinfo(candidate)
        except KeyError:
            pass
    return None


def _read_npz(fp: BinaryIO, expects: Mapping[str, Expect], err: _Errors) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(fp) as zf:
        members = {key: _member(zf, key) for key in expects}
        missing = [k for k, info in members.items() if info is None]
        if missing:
            names = [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
            has = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
            raise UserError(err.code or "E-DATA-SHAPE",
                            f"{err.name} lacks the arrays {', '.join(missing)} (it has {has or 'none'})",
                            err.fix or f"save it with numpy.savez(path, {'=..., '.join(expects)}=...)")
        sizes, total = {}, 0
        for key, info in members.items():  # every header first: nothing is allocated for a bad file
            with zf.open(info) as member:
                shape, _, dtype, header_size = _read_header(member, err, key)
            sizes[key] = (_check(shape, dtype, expects[key], err, key), header_size)
            total += sizes[key][0]
            if total > MAX_BYTES:
                raise UserError(err.code or "E-DATA-SHAPE",
                                f"{err.name}: its arrays {', '.join(expects)} declare {total}+ bytes, more than "
                                f"edgekit reads from one file ({MAX_BYTES} bytes)",
                                err.fix or "save fewer samples in it")
        for key, info in members.items():  # the zip's sizes are not trusted either: reads stay bounded below
            nbytes, header_size = sizes[key]
            if info.file_size - header_size < nbytes:
                raise err.unreadable(f"is truncated: its header declares {nbytes} bytes of data, the zip entry "
                                     f"holds {max(info.file_size - header_size, 0)}", key)
        out = {}
        for key, info in members.items():
            with zf.open(info) as member:
                # the header is read and checked again: the data read below is bounded by it
                shape, fortran, dtype, _ = _read_header(member, err, key)
                nbytes = _check(shape, dtype, expects[key], err, key)
                out[key] = _read_data(member, shape, fortran, dtype, nbytes, err, key)
        return out
