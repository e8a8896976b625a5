"""Resolve the MODEL argument: a built-in name, ``path/to/file.py:factory``, or a ``.pt2`` file.

A factory returns ``(module, example_inputs)`` or ``(module, example_inputs, spec)``. Without a spec,
one is derived from the example inputs and the forward signature (inputs) and from one forward pass
(outputs); a (1, C) output is taken as classification logits, anything else as an embedding.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.models import BUILTIN, LoadedModel
from edgekit.spec import ModelSpec, TensorSpec


def load_model(source: str) -> LoadedModel:
    if source in BUILTIN:
        return BUILTIN[source]()
    if source.endswith(".pt2"):
        return _from_pt2(Path(source))
    if ":" in source and source.split(":", 1)[0].endswith(".py"):
        file, factory = source.rsplit(":", 1)
        return _from_factory(Path(file), factory, source)
    raise UserError("E-MODEL-UNKNOWN", f"unknown model {source!r}",
                    f"pass a built-in name ({', '.join(BUILTIN)}), path/to/file.py:factory, or a .pt2 file from torch.export.save")


def _from_factory(file: Path, factory: str, source: str) -> LoadedModel:
    if not file.is_file():
        raise UserError("E-MODEL-UNKNOWN", f"model file {file} does not exist", "check the path before the ':'")
    mod_name = f"edgekit_user_model_{abs(hash(str(file.resolve())))}"
    spec_ = importlib.util.spec_from_file_location(mod_name, file)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[mod_name] = module
    try:
        spec_.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's file: report what it raised (sys.exit too)
        raise UserError("E-MODEL-FACTORY", f"importing {file} raised {_what(exc)}", "fix the model file") from exc
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise UserError("E-MODEL-UNKNOWN", f"{file} has no callable {factory!r}",
                        f"define def {factory}(): return model, example_inputs in {file}")
    try:
        result = fn()
    except (Exception, SystemExit) as exc:
        raise UserError("E-MODEL-FACTORY", f"{source} raised {_what(exc)}", "fix the factory so it returns (model, example_inputs)") from exc
    if not isinstance(result, tuple) or len(result) not in (2, 3) or not isinstance(result[0], nn.Module):
        raise UserError("E-MODEL-FACTORY", f"{source} returned {type(result).__name__}, not (nn.Module, example_inputs[, ModelSpec])",
                        "return the model and a tuple of example input tensors")
    model, example = result[0].eval(), result[1]
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise UserError("E-MODEL-FACTORY", f"{source}: example_inputs must be a tensor or a tuple of tensors",
                        "return (model, (tensor, ...))")
    spec = result[2] if len(result) == 3 else derive_spec(model, example, Path(file).stem)
    if not isinstance(spec, ModelSpec):
        raise UserError("E-MODEL-FACTORY", f"{source}: the third value is {type(spec).__name__}, not a ModelSpec",
                        "return an edgekit.spec.ModelSpec or leave it out")
    return LoadedModel(model, spec, example, source)


def _what(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (it called sys.exit({exc.code!r}); a model file must not exit the process)"
    return f"{type(exc).__name__}: {exc}"


def _from_pt2(path: Path) -> LoadedModel:
    from edgekit.reference import load_reference

    if not path.is_file():
        raise UserError("E-MODEL-UNKNOWN", f"{path} does not exist", "pass a .pt2 file saved with torch.export.save")
    program, spec = load_reference(path)
    module = program.module()
    example = program.example_inputs[0] if program.example_inputs else None
    if example is None:
        raise UserError("E-MODEL-FACTORY", f"{path} holds no example inputs", "save it with torch.export.export(model, example_inputs)")
    example = tuple(example)
    return LoadedModel(module, spec or derive_spec(module, example, path.stem), example, str(path))


def derive_spec(model: nn.Module, example: tuple[torch.Tensor, ...], name: str) -> ModelSpec:
    try:
        return _derive_spec(model, example, name)
    except ValueError as exc:  # the spec validation refused a dtype, shape or name
        raise UserError("E-MODEL-FACTORY", f"cannot describe model {name}'s inputs/outputs: {exc}",
                        "use tensors of a supported dtype and shape, or return a ModelSpec from the factory") from exc


def _derive_spec(model: nn.Module, example: tuple[torch.Tensor, ...], name: str) -> ModelSpec:
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params][: len(example)]
    except (TypeError, ValueError):
        names = []
    if len(names) != len(example) or len(set(names)) != len(names):
        names = [f"input{i}" for i in range(len(example))]
    inputs = tuple(TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                              "NCHW" if t.dim() == 4 else None) for n, t in zip(names, example))
    try:
        with torch.no_grad():
            out = model(*example)
    except Exception as exc:
        raise UserError("E-MODEL-FACTORY", f"the model fails on its own example inputs: {type(exc).__name__}: {exc}",
                        "return example inputs the model accepts") from exc
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out) if isinstance(out, (tuple, list)) else None
    if outs is None or not all(isinstance(o, torch.Tensor) for o in outs):
        raise UserError("E-MODEL-FACTORY", f"the model returns {type(out).__name__}; edgekit exports models returning tensors",
                        "wrap the model so forward returns a tensor or a tuple of tensors")
    outputs = tuple(TensorSpec(f"output{i}" if len(outs) > 1 else "output", tuple(o.shape)) for i, o in enumerate(outs))
    task = "classification" if len(outs) == 1 and outs[0].dim() == 2 and outs[0].shape[0] == 1 and outs[0].shape[1] > 1 else "embedding"
    return ModelSpec(name, inputs, outputs, None, task)
