"""The run config (TOML) of `edgekit run`: one [export] table whose keys are ExportJob's fields.

Relative paths in the file are taken relative to the working directory, like command-line paths.
"""
from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

from edgekit.errors import UserError
from edgekit.pipeline import ExportJob

DEFAULT_CONFIG = "default.toml"


def default_config_path() -> Path:
    return Path(str(resources.files("edgekit") / "configs" / DEFAULT_CONFIG))


def load_config(path: str | Path | None) -> ExportJob:
    path = Path(path) if path else default_config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("E-CONFIG", f"config file {path} does not exist", "pass an existing .toml file, or none for the shipped default") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError("E-CONFIG", f"cannot read {path}: {exc}", "fix the TOML syntax") from exc
    unknown_tables = set(doc) - {"export"}
    if unknown_tables or "export" not in doc:
        raise UserError("E-CONFIG", f"{path} must have one [export] table (found: {', '.join(doc) or 'nothing'})",
                        f"see {default_config_path()} for an example")
    table = doc["export"]
    fields = {f.name: f for f in dataclasses.fields(ExportJob)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise UserError("E-CONFIG", f"{path}: unknown key(s) {', '.join(unknown)} in [export]",
                        f"use only {', '.join(fields)}")
    if "model" not in table:
        raise UserError("E-CONFIG", f"{path}: [export] has no model", "add model = \"mobilenet_v2\" (or file.py:factory, or a .pt2 path)")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    return ExportJob(**values)
