from pathlib import Path

from edgekit.readme import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tables_are_generated_from_the_code():
    text = README.read_text(encoding="utf-8")
    assert render(text) == text, "README is stale: run `python -m edgekit.readme`"


def test_readme_names_the_deprecation_and_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "PyTorch Mobile is deprecated" in text
    assert "bash install.sh && edgekit run" in text
    assert 'python -m pytest -m "not slow" -n 2 --dist loadfile && python -m pytest -m slow -n 2 --dist loadfile' in text
