"""Resolve the model: a built-in name, ``path/to/file.py:factory``, a ``.pt2`` file, an ``nn.Module``
(with example inputs) or a ``torch.export.ExportedProgram``.

Outputs that are not a tensor or a flat tuple of tensors (a dict, a named tuple, nested tuples and
lists) are flattened in pytree order by a thin wrapper, and named after their keys (``boxes``,
``scores``, ``aux_0``): the names travel into the ModelSpec, the manifest and the report.

A factory returns ``(module, example_inputs)`` or ``(module, example_inputs, spec)``. Without a spec,
one is derived from the example inputs and the forward signature (inputs) and from one forward pass
(outputs); a (1, C) output is taken as classification logits, anything else as an embedding.
"""
from __future__ import annotations

import importlib.util
import inspect
import keyword
import os
import sys
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.models import BUILTIN, LoadedModel
from edgekit.spec import ModelSpec, TensorSpec


def check_model_arg(model) -> None:
    """E-MODEL-UNKNOWN for a model argument of a kind edgekit cannot take (before any work)."""
    if isinstance(model, (str, os.PathLike, nn.Module)) or _is_program(model):
        return
    raise UserError("E-MODEL-UNKNOWN", f"model is a {type(model).__name__}, which edgekit cannot export",
                    "pass an nn.Module (with example_inputs), a torch.export.ExportedProgram, a .pt2 path, "
                    f"'file.py:factory', or a built-in name ({', '.join(BUILTIN)})")


def load_model(source, example_inputs=None) -> LoadedModel:
    check_model_arg(source)
    if isinstance(source, nn.Module):
        return _from_module(source, example_inputs, type(source).__name__.lower(), type(source).__name__)
    if _is_program(source):
        return _from_program(source, example_inputs, "program", "ExportedProgram")
    if example_inputs is not None:
        raise UserError("E-ARGS", "example_inputs apply to a model given as an nn.Module or an ExportedProgram",
                        f"drop example_inputs for {source!s}: the factory, the .pt2 file or the built-in model has its own")
    source = os.fspath(source)
    if source in BUILTIN:
        return BUILTIN[source]()
    if source.endswith(".pt2"):
        return _from_pt2(Path(source))
    if ":" in source and source.split(":", 1)[0].endswith(".py"):
        file, factory = source.rsplit(":", 1)
        return _from_factory(Path(file), factory, source)
    raise UserError("E-MODEL-UNKNOWN", f"unknown model {source!r}",
                    f"pass a built-in name ({', '.join(BUILTIN)}), path/to/file.py:factory, or a .pt2 file from torch.export.save")


def _is_program(obj) -> bool:
    return type(obj).__name__ == "ExportedProgram" and hasattr(obj, "graph_module")


def _examples(example, where: str) -> tuple[torch.Tensor, ...]:
    if example is None:
        raise UserError("E-ARGS", f"{where} needs example inputs", "pass example_inputs: a tensor or a tuple of tensors")
    example = (example,) if isinstance(example, torch.Tensor) else tuple(example) if isinstance(example, (tuple, list)) else None
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise UserError("E-ARGS", f"{where}: example_inputs must be a tensor, a tuple of tensors or a dict of "
                        "keyword tensors", "pass (tensor, ...) or {'input_ids': tensor, ...}")
    return example


def _keyword_inputs(model: nn.Module, example, where: str) -> tuple[nn.Module, tuple]:
    """A model called with keyword inputs (example_inputs a dict: name -> tensor, e.g. a transformers
    model's input_ids and attention_mask) as one taking them positionally, in the dict's order."""
    if not isinstance(example, dict):
        return model, example
    if not example or not all(isinstance(k, str) and k.isidentifier() for k in example):
        raise UserError("E-ARGS", f"{where}: keyword example_inputs need identifier names", "pass {'input_ids': tensor, ...}")
    return KeywordInputs(model, tuple(example)), tuple(example.values())


def _from_module(model: nn.Module, example, name: str, source: str, spec: ModelSpec | None = None) -> LoadedModel:
    model, example = _keyword_inputs(model, example, f"model {source}")
    example = _examples(example, f"model {source}")
    model = flat_outputs(model.eval(), example)
    spec = spec if spec is not None else derive_spec(model, example, name)
    return LoadedModel(_named_inputs(model, spec.input_names), spec, example, source)


def _named_inputs(model: nn.Module, names: list[str]) -> nn.Module:
    """An edgekit wrapper (forward(*args)) made to take one named parameter per model input: torch.export
    binds the inputs, and their dynamic_shapes, by the forward signature and names the graph's inputs
    after it, and torch.fx (ptl INT8) traces a forward with plain parameters."""
    if not isinstance(model, (ProgramModule, KeywordInputs, FlatOutputs)):
        return model
    ok = all(n.isidentifier() and not keyword.iskeyword(n) and n not in ("self", "wrapper") for n in names)
    params = ", ".join(names if ok else [f"input{i}" for i in range(len(names))])
    scope = {"wrapper": type(model)}
    # identifiers only (checked above): the generated source is "def forward(self, a, b): ..."
    exec(f"def forward(self, {params}):\n    return wrapper.forward(self, {params})\n", scope)  # noqa: S102
    model.__class__ = type(type(model).__name__, (type(model),), {"forward": scope["forward"],
                                                                   "__module__": type(model).__module__})
    return model


def _from_program(program, example, name: str, source: str, spec: ModelSpec | None = None) -> LoadedModel:
    if example is None and program.example_inputs:
        args, kwargs = program.example_inputs
        if kwargs:
            raise UserError("E-MODEL-FACTORY", f"{source} takes keyword inputs ({', '.join(kwargs)})",
                            "export the program with positional inputs only")
        example = tuple(args)
    loaded = _from_module(ProgramModule(program.module()), example, name, source, spec)
    return _with_program_dims(loaded, program)


def _with_program_dims(loaded: LoadedModel, program) -> LoadedModel:
    """The program's own bounded dynamic dimensions, kept for a job that gives none (edgekit.dynamic)."""
    from edgekit.dynamic import from_program

    try:
        dims, unbounded = from_program(program, loaded.spec.input_names)
    except UserError:  # a range edgekit cannot verify (e.g. beyond its size limit): exported fixed, said so
        dims, unbounded = (), ["(out of range)"]
    loaded.dynamic = tuple(d for d in dims if all(d.fits(int(loaded.example_inputs[loaded.spec.input_names.index(n)].shape[a]))
                                                  for n, a in d.axes))
    if unbounded:
        loaded.dynamic_note = (f"the program's dynamic axes {', '.join(unbounded)} have no upper bound: exported at the "
                               "example's size (give Dim(..., max=N) or --dynamic to export and verify a range)")
    return loaded


class ProgramModule(nn.Module):
    """An ExportedProgram's module, usable like any eval-mode nn.Module: its graph was captured
    already, and ``.eval()``/``.train()`` (which torch refuses on it) only set the flag here."""

    def __init__(self, gm):
        super().__init__()
        self.program = gm

    def forward(self, *args):
        return self.program(*args)

    def train(self, mode: bool = True):
        self.training = mode
        return self


class KeywordInputs(nn.Module):
    """Calls the wrapped model with its inputs by keyword: ``forward(*args)`` is
    ``model(**dict(zip(names, args)))``, so every target sees positional inputs named as the user's."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        return self.model(**dict(zip(self.names, args)))

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode)
        return self


class FlatOutputs(nn.Module):
    """Returns the wrapped model's outputs as a flat tuple of tensors (pytree order)."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args):
        from torch.utils._pytree import tree_leaves

        return tuple(tree_leaves(self.model(*args)))

    def train(self, mode: bool = True):
        self.training = mode
        self.model.train(mode)
        return self


def output_names(out) -> tuple[str, ...] | None:
    """Names of a model's output leaves, or None when the output is already a tensor or a flat tuple."""
    from torch.utils._pytree import tree_flatten_with_path

    if isinstance(out, torch.Tensor) or (type(out) in (tuple, list) and all(isinstance(o, torch.Tensor) for o in out)):
        return None
    leaves = tree_flatten_with_path(out)[0]
    if not leaves or not all(isinstance(v, torch.Tensor) for _, v in leaves):
        raise UserError("E-MODEL-FACTORY", f"the model returns {type(out).__name__} holding values that are not tensors",
                        "return tensors (in a dict, a tuple or a named tuple)")
    return tuple("_".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path) or "output"
                 for path, _ in leaves)


def flat_outputs(model: nn.Module, example: tuple) -> nn.Module:
    """``model``, wrapped in FlatOutputs when its output needs flattening."""
    try:
        with torch.no_grad():
            out = model(*example)
    except Exception as exc:
        raise UserError("E-MODEL-FACTORY", f"the model fails on its own example inputs: {type(exc).__name__}: {str(exc)[:500]}",
                        "pass example inputs the model accepts") from exc
    names = output_names(out)
    return model if names is None else FlatOutputs(model, names)


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
    spec = result[2] if len(result) == 3 else None
    if len(result) == 3 and not isinstance(spec, ModelSpec):
        raise UserError("E-MODEL-FACTORY", f"{source}: the third value is {type(spec).__name__}, not a ModelSpec",
                        "return an edgekit.spec.ModelSpec or leave it out")
    try:
        return _from_module(result[0], result[1], Path(file).stem, source, spec)
    except UserError as exc:
        raise UserError("E-MODEL-FACTORY" if exc.code == "E-ARGS" else exc.code, f"{source}: {exc.what}", exc.fix) from exc


def _what(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit (it called sys.exit({exc.code!r}); a model file must not exit the process)"
    return f"{type(exc).__name__}: {exc}"


def _from_pt2(path: Path) -> LoadedModel:
    from edgekit.reference import load_reference

    if not path.is_file():
        raise UserError("E-MODEL-UNKNOWN", f"{path} does not exist", "pass a .pt2 file saved with torch.export.save")
    program, spec = load_reference(path)
    if not program.example_inputs:
        raise UserError("E-MODEL-FACTORY", f"{path} holds no example inputs", "save it with torch.export.export(model, example_inputs)")
    return _from_program(program, None, path.stem, str(path), spec)


def derive_spec(model: nn.Module, example: tuple[torch.Tensor, ...], name: str) -> ModelSpec:
    try:
        return _derive_spec(model, example, name)
    except ValueError as exc:  # the spec validation refused a dtype, shape or name
        raise UserError("E-MODEL-FACTORY", f"cannot describe model {name}'s inputs/outputs: {exc}",
                        "use tensors of a supported dtype and shape, or return a ModelSpec from the factory") from exc


def _derive_spec(model: nn.Module, example: tuple[torch.Tensor, ...], name: str) -> ModelSpec:
    try:
        inner = model
        while isinstance(inner, (FlatOutputs, ProgramModule)):  # the user's own forward names the inputs
            inner = inner.model if isinstance(inner, FlatOutputs) else inner.program
        if isinstance(inner, KeywordInputs):
            names = list(inner.names)
        else:
            params = [p for p in inspect.signature(inner.forward).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            names = [p.name for p in params][: len(example)]
    except (TypeError, ValueError):
        names = []
    if len(names) != len(example) or len(set(names)) != len(names):
        names = [f"input{i}" for i in range(len(example))]
    inputs = tuple(TensorSpec(n, tuple(t.shape), str(t.dtype).removeprefix("torch."),
                              "NCHW" if t.dim() == 4 else None) for n, t in zip(names, example))
    model = flat_outputs(model, example)
    with torch.no_grad():
        out = model(*example)
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    names = model.names if isinstance(model, FlatOutputs) else [f"output{i}" if len(outs) > 1 else "output" for i in range(len(outs))]
    outputs = tuple(TensorSpec(n, tuple(o.shape)) for n, o in zip(names, outs))
    task = "classification" if len(outs) == 1 and outs[0].dim() == 2 and outs[0].shape[0] == 1 and outs[0].shape[1] > 1 else "embedding"
    return ModelSpec(name, inputs, outputs, None, task)
