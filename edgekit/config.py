"""The run config (TOML) of `edgekit run`: one [export] table whose keys are ExportJob's fields,
and optionally a [compress] table (edgekit.compress.config_table) that the pipeline runs on the
model before export.

Relative paths in the file are taken relative to the working directory, like command-line paths.
"""
from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

from edgekit.errors import UserError
from edgekit.job import ExportJob

DEFAULT_CONFIG = "default.toml"
TABLES = ("export", "compress")
MAX_CONFIG_BYTES = 1 << 20


def default_config_path() -> Path:
    return Path(str(resources.files("edgekit") / "configs" / DEFAULT_CONFIG))


def load_config(path: str | Path | None) -> ExportJob:
    """-> the ExportJob of the file; its [compress] table becomes ExportJob.compress."""
    path = Path(path) if path else default_config_path()
    doc = _read(path)
    job = _export_job(doc, path)
    compress = load_compress(path, doc)
    if compress is None:
        return job
    return dataclasses.replace(job, compress=compress)


def load_compress(path: str | Path, doc: dict | None = None):
    """-> the CompressConfig of the file's [compress] table, or None when it has none."""
    doc = _read(Path(path)) if doc is None else doc
    if "compress" not in doc:
        return None
    from edgekit.compress.config_table import parse_compress

    try:
        return parse_compress(doc["compress"])
    except UserError as exc:  # same code, the file named
        raise UserError(exc.code, f"{path}: {exc.what}", exc.fix) from exc


def _read(path: Path) -> dict:
    try:
        if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError("E-CONFIG", f"{path} is larger than {MAX_CONFIG_BYTES >> 10} KiB", "a run config is a short TOML file")
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("E-CONFIG", f"config file {path} does not exist", "pass an existing .toml file, or none for the shipped default") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UserError("E-CONFIG", f"cannot read {path}: {exc}", "fix the TOML syntax") from exc
    return doc


def _export_job(doc: dict, path: Path) -> ExportJob:
    unknown_tables = set(doc) - set(TABLES)
    if unknown_tables or "export" not in doc:
        raise UserError("E-CONFIG", f"{path} must have one [export] table and optionally [compress] (found: {', '.join(doc) or 'nothing'})",
                        f"see {default_config_path()} for an example")
    table = doc["export"]
    if not isinstance(table, dict):
        raise UserError("E-CONFIG", f"{path}: export must be a table ([export]), not a {type(table).__name__}",
                        f"see {default_config_path()} for an example")
    fields = {f.name: f for f in dataclasses.fields(ExportJob) if f.name != "compress"}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise UserError("E-CONFIG", f"{path}: unknown key(s) {', '.join(unknown)} in [export]",
                        f"use only {', '.join(fields)}")
    if "model" not in table:
        raise UserError("E-CONFIG", f"{path}: [export] has no model", "add model = \"mobilenet_v2\" (or file.py:factory, or a .pt2 path)")
    if "data" in table and not isinstance(table["data"], str):  # arrays and dicts come only through the API
        raise UserError("E-CONFIG", f"{path}: [export] data = {table['data']!r:.80} is a {type(table['data']).__name__}, "
                        "not a path", "give data as a folder or file path, e.g. data = \"calibration_data/images\"")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in table.items()}
    try:
        return ExportJob(**values)
    except UserError as exc:  # a wrong type or range: E-CONFIG, the file named
        raise UserError("E-CONFIG", f"{path}: [export] {exc.what}", exc.fix) from exc
