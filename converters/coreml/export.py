"""PyTorch -> Core ML ``.mlpackage`` (coremltools 9.0, ML Program, iOS 16+).

torch.export (ATEN dialect, decompositions run as coremltools asks) -> ``coremltools.convert`` with
the ModelSpec's input and output names, shapes and dtypes -> for ``dynamic``, int8 per-channel
weights -> saved into the export's staging folder (the Converter template moves it into the bundle).
"""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from edgekit.errors import UnsupportedOpError, UserError, missing_dependency

NAME = "coreml"
# ModelSpec dtype -> Core ML multiarray dtype of the model's I/O (Core ML has no int64 arrays: token ids are int32)
IO_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int32, "int32": np.int32}
# How coremltools names a torch op it cannot convert (no converter; or no lowering for these inputs)
_NOT_IMPLEMENTED = re.compile(r"convert function for op '([\w.:]+)' not implemented"
                              r"|the lowering for Torch `([\w.:]+)` op is not supported"
                              r"|Unsupported fx node \S+, kind ([\w.:]+)")
# A file coremltools 9 adds to packages converted from torch.export (ExecuTorch's debug-handle map);
# Core ML does not read it (its Manifest.json does not list it), so it is not shipped.
_DEBUG_MAP = "executorch_debug_handle_mapping.json"
_QUIET = ("coremltools", "coremltools.converters", "coremltools.optimize")


def export_package(model, spec, precision: str, out_dir: Path, example_inputs: tuple) -> tuple[str, tuple[str, ...], list[str]]:
    """Convert and save ``<spec.name>-<precision>.mlpackage`` into out_dir; -> (package folder name,
    every file inside it relative to out_dir, sorted; notes for the report)."""
    try:
        import coremltools as ct
    except ImportError:
        raise missing_dependency(NAME, "coremltools", "coreml") from None
    for t in spec.inputs:
        if t.dtype not in IO_DTYPES:
            raise UserError("E-EXPORT-FAILED", f"input {t.name!r} is {t.dtype}; Core ML model inputs are float32, float16 "
                            "or int32 (edgekit feeds int64 token ids as int32)", "drop the coreml target for this model")
    notes = [f"input {t.name!r}: {t.dtype} in the ModelSpec, int32 in the Core ML model (Core ML has no int64 arrays)"
             for t in spec.inputs if t.dtype == "int64"]
    package = f"{spec.name}-{precision}.mlpackage"
    final = Path(out_dir) / package
    mlmodel = _convert(ct, model, spec, precision, example_inputs)
    if precision == "dynamic":
        mlmodel = _int8_weights(ct, mlmodel)
    with _quiet():
        mlmodel.save(str(final))
    (final / _DEBUG_MAP).unlink(missing_ok=True)
    files = tuple(sorted(p.relative_to(out_dir).as_posix() for p in final.rglob("*") if p.is_file()))
    return package, files, notes


def _convert(ct, model, spec, precision: str, example_inputs: tuple):
    example = tuple(x.contiguous() for x in example_inputs)
    try:
        with _quiet():
            program = torch.export.export(model.eval(), example).run_decompositions({})
    except Exception as exc:
        raise UserError("E-EXPORT-FAILED", f"torch.export failed before Core ML conversion: {_first_line(exc)}",
                        "the model must be capturable by torch.export (see the reference step)") from exc
    inputs = [ct.TensorType(name=t.name, shape=tuple(t.shape), dtype=IO_DTYPES[t.dtype]) for t in spec.inputs]
    outputs = [ct.TensorType(name=o.name, dtype=np.float32) for o in spec.outputs]
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    try:
        with _quiet():
            return ct.convert(program, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                              minimum_deployment_target=ct.target.iOS16, compute_precision=compute,
                              skip_model_load=True)  # nothing can load it on Linux
    except Exception as exc:  # coremltools raises bare RuntimeError/ValueError/NotImplementedError
        found = _NOT_IMPLEMENTED.search(str(exc))
        if found:
            raise UnsupportedOpError(NAME, f"aten::{next(g for g in found.groups() if g)}", None,
                                     "coremltools has no conversion for it; replace it, or drop the target coreml") from exc
        raise UserError("E-EXPORT-FAILED", f"coremltools.convert failed: {type(exc).__name__}: {_first_line(exc)}",
                        "drop the coreml target for this model, or report the message") from exc


def _int8_weights(ct, mlmodel):
    """Every conv/linear weight int8, symmetric, one scale per output channel (weight_threshold 0:
    small layers too, as edgekit's weight-only reference quantizes every Linear/Conv)."""
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0))
    try:
        with _quiet():
            return linear_quantize_weights(mlmodel, config)
    except Exception as exc:
        raise UserError("E-EXPORT-FAILED", f"coremltools linear_quantize_weights failed: {type(exc).__name__}: {_first_line(exc)}",
                        "export coreml with --quant fp16 instead, or report the message") from exc


class _quiet:
    """coremltools' progress bars and "untested torch version" warnings are not findings."""

    def __enter__(self):
        self._levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in _QUIET]
        for logger, _ in self._levels:
            logger.setLevel(logging.ERROR)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"coremltools\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"coremltools\..*")
        return self

    def __exit__(self, *exc):
        self._warn.__exit__(*exc)
        for logger, level in self._levels:
            logger.setLevel(level)
        return False


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
