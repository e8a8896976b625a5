"""Keep the README's generated sections (capability table, error codes) in sync with the code.

`python -m edgekit.readme` rewrites them; tests/test_docs.py fails when they are stale.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from edgekit.capabilities import README_BEGIN, README_END, markdown_table
from edgekit.errors import CODES

CODES_BEGIN, CODES_END = "<!-- codes:begin -->", "<!-- codes:end -->"


def codes_table() -> str:
    return "\n".join(["| code | meaning |", "|---|---|"] + [f"| `{c}` | {m} |" for c, m in CODES.items()])


def render(text: str) -> str:
    for begin, end, body in ((README_BEGIN, README_END, markdown_table()), (CODES_BEGIN, CODES_END, codes_table())):
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            raise ValueError(f"README lacks the markers {begin} ... {end}")
        text = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)
    return text


def main(path: str = "README.md") -> int:
    p = Path(path)
    p.write_text(render(p.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
