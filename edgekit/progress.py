"""Progress lines on stderr: which target, which stage, elapsed time. Silent with quiet=True."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def __call__(self, stage: str, target: str | None = None) -> None:
        if self.quiet:
            return
        where = f"{target}: " if target else ""
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {where}{stage}", file=self.stream, flush=True)


QUIET = Progress(quiet=True)
