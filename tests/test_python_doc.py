"""docs/python.md and the README's Python snippets run as written: every ```python block in order,
in one namespace, so the documented API cannot drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)


def test_python_walkthrough_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    code = blocks(REPO / "docs" / "python.md")
    assert len(code) >= 8
    namespace: dict = {}
    for i, block in enumerate(code):
        exec(compile(block, f"docs/python.md block {i + 1}", "exec"), namespace)  # noqa: S102 (our own doc)
    assert namespace["bundle"].passed and namespace["again"].passed


@pytest.mark.parametrize("i", range(len(blocks(REPO / "README.md"))))
def test_readme_python_snippets_import_and_run(i, tmp_path, monkeypatch):
    """The README's snippets name real import paths (they are written to run as they stand)."""
    monkeypatch.chdir(tmp_path)
    block = blocks(REPO / "README.md")[i]
    exec(compile(block, f"README.md python block {i + 1}", "exec"), {})  # noqa: S102
