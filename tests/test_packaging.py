"""The wheel must carry every package: pyproject lists them (with package-dir mapping for
converters/ and calibration_data/), so a new subpackage that is not listed would be missing from a
wheel install while an editable install hides it."""
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_python_package_folder_is_listed():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    mapping = {v: k for k, v in tool["package-dir"].items()}
    found = set()
    for init in REPO.glob("**/__init__.py"):
        rel = init.parent.relative_to(REPO)
        top = rel.parts[0]
        if top in mapping:
            found.add(".".join([mapping[top], *rel.parts[1:]]))
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
