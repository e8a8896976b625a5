"""Write a file so that a reader sees the old file or the new one, never a part of it.

The one temp-file-then-rename of edgekit: the bundle's JSON and reports, quantized references, the
AdaRound cache, rewritten .tflite files and deployed copies all go through ``atomic_file``. (A
target's export does not need it: the Converter template stages a whole export and moves its files.)
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


@contextmanager
def atomic_file(path: str | Path, mode: int = 0o644, durable: bool = False) -> Iterator[BinaryIO]:
    """A binary file object for ``path``: a temporary file in the same folder, renamed onto ``path``
    when the block succeeds and removed when it raises. ``mode``: the file's permissions (mkstemp
    would leave 0600); ``durable``: fsync before the rename (a cache another process may read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
