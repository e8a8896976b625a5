"""Third-party output captured instead of printed.

Toolchains write to the console from Python (warnings, logging), from C++ (absl, glog, XNNPACK) and
from subprocesses (pnnx): a plain ``redirect_stderr`` misses most of it. ``captured()`` points the
process's file descriptors 1 and 2 at a temporary file for the duration of a step (Python's own
streams write to them, so warnings and logging land there too) and hands back the text, which the
pipeline keeps in the report's log for that target. edgekit's own progress lines are printed outside these blocks.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

MAX_LOG_CHARS = 20_000  # per step kept in the report (head and tail)


class Log:
    """The captured text of one step (filled in when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def captured():
    """Yield a Log; while the block runs, fds 1 and 2 (so Python warnings, logging's stderr
    handlers, C++ logs and child processes too) write into a temporary file; then restored."""
    log = Log()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                os.dup2(sink.fileno(), fd)
            yield log
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, dup in saved.items():
                os.dup2(dup, fd)
                os.close(dup)
            sink.seek(0)
            log.text = _clip(sink.read().decode("utf-8", "replace"))


def _clip(text: str) -> str:
    half = MAX_LOG_CHARS // 2
    return text if len(text) <= MAX_LOG_CHARS else f"{text[:half]}\n[... {len(text) - MAX_LOG_CHARS} characters ...]\n{text[-half:]}"
