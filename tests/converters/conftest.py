"""Shared by the converter tests: each (target, tiny model) is exported once per test session."""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from edgekit.converters import get
from edgekit.models import BUILTIN


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """tiny_export(target, model name) -> (LoadedModel, Artifact, bundle folder), FP32, cached."""
    cache = {}

    def export(target: str, name: str):
        if (target, name) not in cache:
            loaded = BUILTIN[name]()
            out = tmp_path_factory.mktemp(f"{target}-{name}")
            # a relative folder, as `--out bundles/x` gives: a converter must not resolve its paths
            # against the working directory of a child process (MNN's converter did)
            with contextlib.chdir(out.parent):
                artifact = get(target).export(loaded.module, loaded.spec, None, Path(out.name), loaded.example_inputs)
            cache[target, name] = (loaded, artifact, out)
        return cache[target, name]

    return export
