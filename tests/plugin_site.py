"""Install a target package made in a test (its module text and its `edgekit.targets` entry points)
into a temporary site folder, as pip would: the package, a dist-info with the entry points, the
folder on sys.path and PYTHONPATH (the confined runner imports it too), the registry refreshed."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def installed(site: Path, monkeypatch, package: str, modules: dict[str, str], entry_points: dict[str, str]):
    """modules: file name in the package -> its text; entry_points: key -> "module:attribute"."""
    from edgekit.converters import refresh

    (site / package).mkdir(parents=True)
    for name, text in modules.items():
        (site / package / name).write_text(text)
    dist = site / f"{package}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[edgekit.targets]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    refresh()
    try:
        yield site
    finally:
        for mod in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            sys.modules.pop(mod, None)
        refresh()
