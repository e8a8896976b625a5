"""The converter interface: one module per target, each declaring its row of the capability table.

``Converter`` is a template: ``export`` runs the steps every target shares (the recipe checked once,
levers a target does not honour refused, the calibration set required, a staging folder, the listed
files moved into place atomically) and calls one small hook per precision (``export_fp32``,
``export_int8``, ``export_weight_only``); ``runner``, ``per_layer``, ``coverage``, ``screen`` and
``pt2e_quantizer`` are the other hooks.

A converter module must stay light to import: torch and numpy only at module level; the target's
toolchain and runtime are imported inside the hooks.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from edgekit.errors import InternalError, UserError, missing_dependency

# A Runner is callable: one sample in (numpy arrays in ModelSpec input order and dtype),
# numpy outputs out (ModelSpec output order, float32). The runner casts to what its runtime wants.
Runner = Callable[[Sequence[np.ndarray]], list]


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria of one precision on one target, per output.

    max_abs_rel: max |artifact - reference| allowed, relative to max |reference| of that output.
    min_cosine: lowest per-sample cosine similarity allowed.
    min_top1: lowest top-1 agreement allowed (classification outputs only).
    """

    max_abs_rel: float
    min_cosine: float
    min_top1: float
    # Quantized artifacts: max error in units of the output quantization step (when the artifact
    # declares its output scales in meta["output_scales"]); None for float artifacts.
    max_steps: float | None = None


FP32_TOLERANCE = Tolerance(max_abs_rel=1e-4, min_cosine=0.9999, min_top1=1.0)

# End-to-end INT8 fidelity (artifact vs its quantized float simulation) can only be judged against
# the noise floor of integer kernels: measured on the MobileNetV2 INT8 .tflite, 16 held-out photos,
# XNNPACK vs TFLite's reference kernels on the same file (both correct) differ by max 14 / mean 2.0
# output steps and agree on top-1 for 75%. The bounds sit beyond that floor; the sharp check is per
# layer (Converter.per_layer: every layer within ~1 step, flagged above 2), which localises faults.
INT8_END_TO_END_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.98, min_top1=0.6, max_steps=32.0)


@dataclass(frozen=True)
class TargetInfo:
    """One row of the capability table. Read fields by name, never by position."""

    name: str  # CLI name
    title: str  # human name
    suffix: str  # main artifact file suffix
    precisions: tuple[str, ...]
    tolerances: dict[str, Tolerance] = field(hash=False)
    delegates: tuple[str, ...]
    extra: str  # pip extra that installs the toolchain and runtime
    modules: tuple[str, ...]  # import names the exporter needs (besides the runtime's)
    runtime_modules: tuple[str, ...]  # import names the runner needs; "a|b": either will do
    packages: tuple[str, ...]  # distributions whose versions go into the manifest
    exporter: str  # how the file is produced
    runtime: str  # how the file is run on the host
    deprecated: str | None = None  # why and in favour of what, shown in docs and reports
    arm: bool = False  # the runner also works on aarch64 under qemu-user (needs only runtime_modules)
    # with arm: the "dist==version" wheels its runner needs in the emulated aarch64 user space
    # (edgekit.arm installs the host's version of each, this pin when the host has none)
    arm_wheels: tuple[str, ...] = ()
    # with arm: "dist==version" wheels installed in the emulated user space at exactly this version,
    # because the host's version has no usable aarch64 build (ptl, executorch: PyPI's aarch64 torch
    # 2.13 is a CUDA build). They are installed without their declared dependencies (list what the
    # runner needs in arm_wheels); the environment's stamp and verify's ARM rows say the guest runs
    # this version, not the host's
    arm_exact_wheels: tuple[str, ...] = ()
    # with arm: modules the environment's build check masks as absent before importing the runtime
    # (a telemetry package that an import alone would start)
    arm_masked: tuple[str, ...] = ()
    # without arm: why the target has no aarch64 runtime in the emulated user space (verify --arm
    # reports each such artifact as not runnable with this reason instead of skipping it)
    arm_missing: str | None = None
    relaxed_defaults: bool = False  # the runtime's own defaults are not strict FP32 (e.g. ncnn: FP16)
    not_runnable: str | None = None  # why the artifact cannot run on a host (None: it can)
    app_platforms: tuple[str, ...] = ()  # apps that load this file (`edgekit bundle --android/--ios`)
    # how the target takes dynamic shapes (edgekit.dynamic; shown in docs and `edgekit targets`);
    # None: fixed shapes only, and --dynamic refuses the target with E-DYNAMIC-UNSUPPORTED
    dynamic: str | None = None
    rank: int = 100  # position in the capability table (edgekit's own: 10, 20, ...; then by name)
    # the recipe levers its static quantization (int8, int16x8) honours, of LEVERS; the template
    # refuses any other lever a recipe turns on (E-TARGET-PRECISION), never ignores it
    levers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tolerances"] = {k: asdict(v) for k, v in self.tolerances.items()}
        return d


@dataclass(frozen=True)
class Artifact:
    """An exported file (or files) inside a bundle; paths are relative to the bundle folder."""

    target: str
    precision: str
    path: str  # the main file
    files: tuple[str, ...]  # every file the artifact consists of (main file included)
    meta: dict[str, Any] = field(default_factory=dict, hash=False)  # JSON-serialisable

    def to_dict(self) -> dict:
        return {"target": self.target, "precision": self.precision, "path": self.path,
                "files": list(self.files), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, d: dict) -> "Artifact":
        return cls(d["target"], d["precision"], d["path"], tuple(d["files"]), dict(d.get("meta", {})))


class Converter(ABC):
    """Export a model to one target and run the result in that target's host runtime."""

    info: ClassVar[TargetInfo]

    def check_available(self, runtime_only: bool = False) -> None:
        """Raise E-DEP-MISSING naming the extra to install when the toolchain (or, with
        runtime_only, the runtime: all a device-side or emulated runner has) is absent."""
        needed = self.info.runtime_modules + (() if runtime_only else self.info.modules)
        for entry in needed:
            choices = entry.split("|")
            if all(importlib.util.find_spec(m) is None for m in choices):
                raise missing_dependency(self.info.name, choices[0], self.info.extra)

    def versions(self) -> dict[str, str]:
        out = {}
        for dist in self.info.packages:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = "not installed"
        return out

    def export(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration=None) -> Artifact:
        """Write the artifact into out_dir (a bundle folder under construction) and describe it.

        The template every target runs; a target implements the hooks below, not this. model: an
        nn.Module in eval mode; example_inputs: torch tensors (one real sample); recipe: None for
        FP32, else a QuantRecipe; calibration: an edgekit.data.CalibrationSet, which static schemes
        (int8, int16x8) need. The shared steps, once for every target:
        1. the recipe is checked (a QuantRecipe whose scheme this target lists, with no lever the
           target's static path does not honour: ``TargetInfo.levers``) and the toolchain found;
        2. the hook for the precision writes into a staging folder inside out_dir: ``export_fp32``,
           ``export_int8`` (static schemes; a quantized reference named in ``meta["reference"]``,
           against which fidelity is judged) or ``export_weight_only`` (fp16, dynamic);
        3. only when it returned, the files its Artifact lists move into out_dir, each atomically; a
           failed export leaves nothing behind, and nothing unlisted leaves the staging folder.
        """
        precision = self.precision_of(recipe)
        self.check_available()
        example_inputs, out_dir = tuple(example_inputs), Path(out_dir)
        with _staging(out_dir, self.info.name) as stage:
            if precision == "fp32":
                art = self.export_fp32(model, spec, stage, example_inputs)
            elif precision in WEIGHT_ONLY:
                art = self.export_weight_only(model, spec, recipe, stage, example_inputs)
            else:
                art = self.export_int8(model, spec, recipe, stage, example_inputs, _calibration(calibration, spec, self.info.name, precision))
            _publish(art, stage, out_dir, self.info.name, precision)
        return art

    def precision_of(self, recipe) -> str:
        """The precision a recipe asks of this target: "fp32" without one; else its scheme, once the
        recipe is a valid QuantRecipe, the scheme is one this target lists and every lever it turns
        on is one this target honours."""
        if recipe is None:
            return "fp32"
        from edgekit.quant import check

        check(recipe)
        name = self.info.name
        if recipe.scheme not in self.info.precisions:
            hint = " (weight-only int8 is --quant dynamic)" if recipe.scheme == "int8" and "dynamic" in self.info.precisions else ""
            raise UserError("E-TARGET-PRECISION", f"target {name} cannot export {recipe.scheme}{hint}",
                            f"use --quant with one of {', '.join(self.info.precisions)} for {name}")
        if recipe.scheme not in WEIGHT_ONLY:
            for lever, (flag, words, on) in LEVERS.items():
                if on(recipe) and lever not in self.info.levers:
                    raise UserError("E-TARGET-PRECISION", f"{name}'s {recipe.scheme} path does not implement {words} ({flag})",
                                    f"drop {flag} for {name}" + _who_implements(lever))
        return recipe.scheme

    @abstractmethod
    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        """Write the FP32 file(s) into out_dir (a staging folder of this export only) -> the Artifact
        listing them (paths relative to out_dir)."""

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        """Static quantization (recipe.scheme int8 or int16x8, calibration non-empty): the file(s)
        plus the quantized reference program (``meta["reference"]``, listed in ``files``)."""
        raise UserError("E-TARGET-PRECISION", f"target {self.info.name} has no static quantization",
                        "drop --quant for this target")

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """Weight-only quantization (recipe.scheme fp16 or dynamic): no calibration; the reference is
        edgekit's weight simulation (edgekit.quant.weight_only) where the target writes one."""
        raise UserError("E-TARGET-PRECISION", f"target {self.info.name} has no weight-only quantization",
                        "drop --quant for this target")

    def screen(self, artifact: Artifact, root: Path) -> None:
        """Static checks of an untrusted artifact before any runtime opens it (e.g. the operators a
        TorchScript file calls); raise a UserError (E-BUNDLE-UNSAFE) to refuse it. Default: none,
        the runtime itself cannot run code beyond its operators and runs confined."""

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """Per-layer fidelity of a quantized artifact against its quantized reference, layer by layer
        (JSON-safe dicts: layer, op, max_steps or max_abs, sqnr_db, flagged), or None where the
        target has no per-layer view. Runs in the runner's subprocess."""
        return None

    def pt2e_quantizer(self, scheme: str = "int8"):
        """The PT2E Quantizer (global config set) this target places the q/dq pairs of a static scheme
        (``int8``, ``int16x8``) with, or None where its path for that scheme is not PT2E. edgekit's
        budget search simulates the scheme with it (edgekit.quant.search); raise E-DEP-MISSING when
        the toolchain is not installed."""
        return None

    def coverage(self, path: Path, meta: dict):
        """Delegate coverage of one artifact file of this target (``edgekit inspect`` and the report's
        coverage section): an ``edgekit.inspect.InspectResult``, or None where the target has nothing
        to inspect. ``meta`` is the artifact's meta from the manifest ({} for a bare file). Runs in a
        subprocess of the pipeline (it may load the file in a native interpreter)."""
        return None

    @abstractmethod
    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        """Load the artifact from the bundle folder ``root`` in the host runtime.

        strict: edgekit's reproducible settings (strict FP32 where a runtime would otherwise drop to
        FP16 on its own); strict=False: the runtime's defaults, i.e. what an app on a phone gets.
        """


WEIGHT_ONLY = ("fp16", "dynamic")  # recipe schemes without calibration (edgekit.quant.recipe.WEIGHT_ONLY_SCHEMES)

# The recipe levers a static path may or may not honour: name -> (the CLI flag, what it does, is it on)
LEVERS: dict[str, tuple[str, str, Callable]] = {
    "equalize": ("--equalize", "cross-layer equalization", lambda r: r.equalize),
    "bias_correction": ("--bias-correction", "bias correction", lambda r: r.bias_correction),
    "adaround": ("--rounding adaround", "AdaRound weight rounding", lambda r: r.rounding == "adaround"),
    "keep_float": ("--keep-float", "layers kept float", lambda r: bool(r.keep_float)),
    "qat": ("--qat-steps", "quantization-aware training's learned input ranges", lambda r: bool(r.learned_ranges)),
}


def _who_implements(lever: str) -> str:
    from edgekit.converters import all_converters

    names = [c.info.name for c in all_converters() if lever in c.info.levers]
    return f" ({', '.join(names)} implement it)" if names else ""


def _calibration(calibration, spec, target: str, precision: str):
    if calibration is None or len(calibration) == 0:
        raise UserError("E-DATA-EMPTY", f"{precision} export of {spec.name} to {target} got no calibration samples",
                        "pass --data with samples of the model's inputs")
    return calibration


@contextmanager
def _staging(out_dir: Path, target: str):
    """A private folder inside out_dir for one export (same file system: the moves are renames),
    removed with whatever the export left in it."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".stage-{target}-", dir=out_dir))
    except OSError as exc:
        raise UserError("E-OUT-UNWRITABLE", f"cannot write into {out_dir}: {exc.strerror}",
                        "choose an output folder you can write to") from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(art: Artifact, stage: Path, out_dir: Path, target: str, precision: str) -> None:
    """Check the hook's Artifact against what it wrote, then move its files into out_dir (main file last)."""
    if (art.target, art.precision) != (target, precision) or art.path not in art.files:
        raise InternalError(f"target {target}'s {precision} export described a {art.precision} {art.target} artifact "
                            f"with main file {art.path!r} (files {list(art.files)})")
    for f in art.files:
        if Path(f).is_absolute() or ".." in Path(f).parts or not (stage / f).is_file():
            raise InternalError(f"target {target} lists {f!r} among its files but did not write it in its folder")
    for f in sorted(art.files, key=lambda f: f == art.path):
        (out_dir / f).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / f, out_dir / f)
