"""The converter interface: one module per target, each declaring its row of the capability table.

A converter module must stay light to import: torch and numpy only at module level; the target's
toolchain and runtime are imported inside ``export`` and ``runner``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from edgekit.errors import missing_dependency

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

    @abstractmethod
    def export(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        """Write the artifact into out_dir (a bundle folder under construction) and describe it.

        model: an nn.Module in eval mode; example_inputs: a tuple of torch tensors (one real sample);
        recipe: None for FP32. A converter whose row lists a quantized precision also accepts the
        keyword ``calibration`` (an edgekit.data.CalibrationSet), which the pipeline passes with a
        recipe, and then writes a quantized reference program next to the artifact and names it in
        ``meta["reference"]`` (see the pipeline: fidelity is judged against that reference).
        """

    def screen(self, artifact: Artifact, root: Path) -> None:
        """Static checks of an untrusted artifact before any runtime opens it (e.g. the operators a
        TorchScript file calls); raise a UserError (E-BUNDLE-UNSAFE) to refuse it. Default: none,
        the runtime itself cannot run code beyond its operators and runs confined."""

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """Per-layer fidelity of a quantized artifact against its quantized reference, layer by layer
        (JSON-safe dicts: layer, op, max_steps or max_abs, sqnr_db, flagged), or None where the
        target has no per-layer view. Runs in the runner's subprocess."""
        return None

    def pt2e_quantizer(self):
        """The PT2E Quantizer (global config set) this target places its static INT8 q/dq pairs with,
        or None where its INT8 path is not PT2E. edgekit's budget search simulates INT8 with it
        (edgekit.quant.search); raise E-DEP-MISSING when the toolchain is not installed."""
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
