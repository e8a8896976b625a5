"""Errors: user errors carry a stable code and a one-line fix; internal errors are a separate type.

Codes are stable: CI logs and user scripts match on them. Every code in use is listed in CODES
(tests check that each raised code is listed, and the README table is generated from it).
"""
from __future__ import annotations

CODES: dict[str, str] = {
    "E-TARGET-UNKNOWN": "a target name that no converter declares",
    "E-TARGET-PRECISION": "a precision the target does not support",
    "E-MODEL-UNKNOWN": "a model name that is neither built in, a file.py:factory, nor a .pt2 file",
    "E-MODEL-FACTORY": "the model factory raised, or returned something that is not a model",
    "E-MODEL-EXPORT": "torch.export could not capture the model (the reference cannot be saved)",
    "E-DEP-MISSING": "an optional dependency of a target is not installed",
    "E-DATA-EMPTY": "the data folder has no usable samples",
    "E-DATA-UNREADABLE": "a data file or folder could not be read",
    "E-DATA-SHAPE": "a sample does not match the model's input shape or dtype",
    "E-DATA-VALUE": "a sample holds NaN or Inf",
    "E-DATA-MIXED": "a data folder mixes kinds of samples (images, tensors, text)",
    "E-DATA-LABELS": "labels (labels.csv, class folders) that do not fit the data or the model's classes",
    "E-OUT-UNWRITABLE": "the output folder cannot be written",
    "E-OUT-EXISTS": "the output folder exists and is not an edgekit bundle",
    "E-OUT-BUSY": "another edgekit export is writing the same output folder",
    "E-BUNDLE-INVALID": "the bundle folder is missing files, its manifest is malformed, or a path leaves the bundle",
    "E-BUNDLE-UNSAFE": "a bundle file that only loads by running code (pickle beyond weights, a file or process operator)",
    "E-ARTIFACT-CLASH": "a target wrote a file whose name another target or the bundle already uses",
    "E-ARTIFACT-CHANGED": "an artifact's sha256 differs from the one its manifest records",
    "E-ARTIFACT-CORRUPT": "an artifact is missing, truncated or cannot be loaded by its runtime",
    "E-OP-UNSUPPORTED": "an operator that the target's converter or runtime cannot handle",
    "E-DYNAMIC-SHAPES": "a --dynamic range that is malformed or does not fit the model's inputs",
    "E-DYNAMIC-UNSUPPORTED": "dynamic shapes asked of a target or a precision that exports fixed shapes only",
    "E-DYNAMIC-SIZE": "an artifact with dynamic shapes failed to run at a size inside its declared range",
    "E-BUDGET-UNMET": "no per-layer precision assignment the search tried meets the --budget (the best one is named)",
    "E-EXPORT-FAILED": "the target's converter failed for another reason",
    "E-RUNTIME-CRASH": "the target's runtime crashed or timed out in its subprocess",
    "E-RUNTIME-FAILED": "the target's runtime loaded the artifact but raised while running it",
    "E-HOST-UNRUNNABLE": "the artifact runs only on a device (e.g. NNAPI on Android), not on a host",
    "E-COMPRESS-CONFIG": "a compression setting outside its valid range (e.g. a pruning ratio outside (0, 1))",
    "E-COMPRESS-LAYER": "a layer name that does not exist in the model, or a layer of the wrong kind",
    "E-COMPRESS-MISMATCH": "teacher and student (or predecessor and successor) outputs do not fit together",
    "E-COMPRESS-UNSUPPORTED": "a model or layer that the pruning dependency analysis cannot handle",
    "E-CONFIG": "the run config file is missing, unreadable or has unknown keys",
    "E-ARGS": "command-line arguments that do not fit together",
}


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""


class UserError(EdgekitError):
    """Something the user can fix: bad argument, bad data, missing dependency.

    ``str(err)`` reads ``CODE: what was wrong; how to fix it``.
    """

    def __init__(self, code: str, what: str, fix: str):
        if code not in CODES:
            raise InternalError(f"unlisted error code {code!r}")
        self.code, self.what, self.fix = code, what, fix
        super().__init__(f"{code}: {what}; {fix}")

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.what, "fix": self.fix}


class UnsupportedOpError(UserError):
    """An operator the target cannot take; names the op, the node and the target."""

    def __init__(self, target: str, op: str, node: str | None = None, fix: str | None = None,
                 source: str | None = None):
        """source: the model's source line when the toolchain names it itself (the pipeline looks it
        up in the exported program otherwise)."""
        where = f" (node {node})" if node else ""
        self.target, self.op, self.node, self.source = target, op, node, source
        super().__init__(
            "E-OP-UNSUPPORTED",
            f"target {target} cannot handle operator {op}{where}",
            fix or f"drop the target {target}, or replace {op} in the model with supported ops",
        )


class InternalError(EdgekitError):
    """A bug in edgekit or in a toolchain it drives, not the user's fault."""


def missing_dependency(target: str, module: str, extra: str) -> UserError:
    return UserError(
        "E-DEP-MISSING",
        f"target {target} needs the Python module {module!r}, which is not installed",
        f"pip install -c constraints.txt 'edgekit[{extra}]'",
    )
