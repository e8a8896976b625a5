"""PyTorch Mobile target: TorchScript for the lite interpreter (.ptl).

Export: ``torch.jit.trace`` (checked on a second input with other values; ``torch.jit.script`` when
the trace turns out to depend on input values), ``torch.jit.freeze``, ``_save_for_lite_interpreter``.
Dynamic shapes (fp32): the trace is also checked at the other sizes verification probes (the
ranges' bounds and middle); a traced graph that changes with the size (a size baked into a
constant) is scripted instead. The lite interpreter itself takes any shape.
Host runner: ``torch.jit.mobile._load_for_lite_interpreter``, the interpreter the Android/iOS
runtime embeds.

``torch.utils.mobile_optimizer.optimize_for_mobile`` is deliberately not called: on this CPU torch
build it raises "Mobile optimization only available with XNNPACK" (STACK.md). Without it the file
still holds the frozen graph (``torch.jit.freeze`` already folds BatchNorm into convolutions); only
the on-device rewrites into prepacked XNNPACK convolution/linear ops are missing.

PyTorch Mobile is deprecated upstream in favour of ExecuTorch. Every torch.jit step warns about it;
export silences those warnings and issues edgekit's own message (TargetInfo.deprecated) once.

INT8 (a QuantRecipe): FX static PTQ for the qnnpack engine with edgekit's calibrated ranges
(``quant.py``, ``fx.py``; integer inputs such as token ids stay integers, so a text
encoder's embeddings run in float and its linears in int8), saved as ``<name>-int8.ptl`` the same way; the quantized reference next to it is a
float simulation with exactly the module's scales and zero points (independent of the qnnpack
kernels), saved with torch.export. The runner sets the quantized engine to qnnpack.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from edgekit import dynamic as dyn
from edgekit.errors import UnsupportedOpError, UserError

from ..base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

# The deprecation warnings torch.jit and the lite interpreter issue at every step.
_JIT_DEPRECATION = r".*(`torch\.jit\.\w+`|Lite Interpreter) is deprecated"
# INT8 conversion fidelity: the .ptl (qnnpack integer kernels) vs the float simulation of the same
# quantization; rounding drifts apart through deep networks even when nothing is wrong. Measured
# (bench/int8_ptl_mobilenet_v2.py, `edgekit export mobilenet_v2 --targets ptl --quant int8`, 16
# held-out photos): MobileNetV2 max 10 steps (mean 1.9), max_abs_rel 0.06, cosine min 0.9925, top-1
# 15/16; tiny_cnn max 1 step. The qnnpack ReLU6 channels_last fault: 181 steps, top-1 0/16. With
# learned rounding (MobileNetV2's default) the logits sit closer together: max 12 steps, yet top-1
# 13/16 vs the reference, so top-1 is bounded at the integer-kernel noise floor measured for tflite
# (base.INT8_END_TO_END_TOLERANCE: 75% between two correct kernel sets); per layer is the sharp check.
INT8_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.98, min_top1=0.6, max_steps=24.0)
# dynamic (Linear weights int8; qnnpack quantizes each Linear's input to uint8 at run time) vs the
# weight-only simulation, 48 samples: MobileNetV2 (only its classifier is Linear) max_abs_rel 0.0018,
# cosine 0.99999, top-1 1.0; tiny_transformer max_abs_rel 0.012, min cosine 0.9997, top-1
# 0.98; tiny_cnn 0.0068 / 0.99997 / 0.96 (near-tied logits of a random model).
DYNAMIC_TOLERANCE = Tolerance(max_abs_rel=0.05, min_cosine=0.999, min_top1=0.9)


class PtlConverter(Converter):
    info = TargetInfo(
        rank=20,
        levers=("equalize", "adaround", "keep_float", "qat"),  # bias correction: PT2E targets only
        name="ptl",
        title="PyTorch Mobile",
        suffix=".ptl",
        precisions=("fp32", "int8", "dynamic"),
        tolerances={"fp32": FP32_TOLERANCE, "int8": INT8_TOLERANCE, "dynamic": DYNAMIC_TOLERANCE},
        delegates=("cpu",),  # NNAPI is a separate target (it needs an Android device to run)
        extra="ptl",
        modules=(),  # torch is always installed
        runtime_modules=("torch",),  # always installed on the host; in the emulated aarch64 user space the pin below
        packages=("torch",),
        exporter="torch.jit.trace (script fallback) + torch.jit.freeze + _save_for_lite_interpreter; "
                 "INT8: torch.ao FX static PTQ (qnnpack) with edgekit's ranges; dynamic: torch.ao quantize_dynamic (Linear)",
        runtime="torch.jit.mobile._load_for_lite_interpreter (INT8: quantized engine qnnpack)",
        dynamic="TorchScript: the trace is checked at the range's bounds and middle (torch.jit.script when the "
                "traced graph changes with the size); verified at the probed sizes",
        # ARM: PyPI's aarch64 torch 2.11 and later (the host runs 2.13) are CUDA builds (torch 2.13: a 427 MB
        # wheel whose libtorch_cpu.so needs libcudart), and 2.10.0's CPU build dies with SIGILL on ARMv8.0
        # cores such as cortex-a53 (pytorch/pytorch#174344: mimalloc's ldaddal, an ARMv8.1 atomic). 2.9.1
        # is CPU-only (104 MB wheel), runs on cortex-a53 and cortex-a76, and its lite interpreter loads
        # the host's .ptl files (bytecode v8; fp32 and qnnpack int8).
        arm=True,
        arm_exact_wheels=("torch==2.9.1",),
        arm_wheels=("typing_extensions==4.12.2",),  # torch imports it (and numpy, every runner's)
        deprecated="PyTorch Mobile (the TorchScript lite interpreter) is deprecated upstream in favour of "
                   "ExecuTorch, so prefer the executorch target for new apps.",
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        return self._save(model, spec, "fp32", out_dir, example_inputs)

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        from .quant import quantize

        # integer inputs (token ids, masks) stay integers: FX quantizes only the float tensors that feed a
        # quantized op, so a text encoder's embeddings run in float and its linears in int8
        quantized = quantize(model, example_inputs, calibration.samples, recipe)
        art = self._save(quantized.module, spec, "int8", out_dir, example_inputs)
        files, quant_meta = _write_reference(quantized, spec, recipe, out_dir, example_inputs, calibration)
        return dataclasses.replace(art, files=files, meta={**art.meta, **quant_meta})

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        from edgekit.quant.weight_only import weight_only_meta, write_reference

        art = self._save(_quantize_dynamic(model, recipe), spec, recipe.scheme, out_dir, example_inputs)
        sim, ref = write_reference(model, recipe, example_inputs, out_dir, spec.name, "ptl", types=(torch.nn.Linear,))
        meta = {**art.meta, **weight_only_meta(recipe, spec.name, "ptl", sim, [
            "torch.ao dynamic quantization covers nn.Linear only (convolutions stay FP32)"]), "engine": "qnnpack"}
        return dataclasses.replace(art, files=(art.path, ref), meta=meta)

    def _save(self, model, spec, precision: str, out_dir: Path, example_inputs: tuple) -> Artifact:
        """Trace (or script), freeze and save the module for the lite interpreter -> the .ptl's Artifact."""
        final = out_dir / f"{spec.name}-{precision}{self.info.suffix}"
        warnings.warn(self.info.deprecated, FutureWarning, stacklevel=3)
        with warnings.catch_warnings(), _engine(precision):
            warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
            with torch.no_grad():
                scripted, capture = _capture(model, example_inputs, _other_sizes(spec, example_inputs))
                try:
                    frozen = torch.jit.freeze(scripted.eval())
                    frozen._save_for_lite_interpreter(str(final))
                except Exception as exc:  # TorchScript raises RuntimeError and others; all mean "cannot save"
                    raise UserError("E-EXPORT-FAILED", f"torch.jit.freeze / _save_for_lite_interpreter failed: "
                                    f"{_first_line(exc)}", "check that the model runs under TorchScript "
                                    "(torch.jit.script or trace) on the host first") from exc
        meta = {"inputs": spec.input_names, "input_dtypes": [t.dtype for t in spec.inputs],
                "outputs": spec.output_names, "capture": capture}
        if spec.dynamic:  # the runner checks a sample's shape against these and the ranges
            meta.update({"input_shapes": [list(t.shape) for t in spec.inputs], **dyn.meta(spec.dynamic)})
        return Artifact(self.info.name, precision, final.name, (final.name,), meta)

    def screen(self, artifact: Artifact, root: Path) -> None:
        """A .ptl is TorchScript: before anything loads it (loading already runs __setstate__), its
        bytecode and source are checked against the operator allow-list (edgekit.safe_load)."""
        from edgekit.safe_load import check_torchscript

        check_torchscript(Path(root) / artifact.path, what=f"the {self.info.name} artifact {artifact.path}")

    def coverage(self, path: Path, meta: dict):
        from edgekit.inspect.report import InspectResult

        return InspectResult(str(path), self.info.name, notes=["PyTorch Mobile runs on its CPU kernels: no delegate to inspect."])

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """Each quantized tensor of the .ptl's own graph (qnnpack) against the reference op fed the
        runtime's own input (per_layer.py); None for fp32 and dynamic artifacts."""
        if artifact.precision != "int8" or not artifact.meta.get("reference"):
            return None
        from .per_layer import ptl_per_layer

        return ptl_per_layer(Path(root) / artifact.path, Path(root) / artifact.meta["reference"], samples)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        # qnnpack: the engine PyTorch Mobile runs on a phone and the one the file was packed for (it packs
        # the weights at load, so it is set first). On x86 it is also slow: its only x86 kernels are SSE2
        # (4x4c2; aarch64 has 8x8 NEON), so on the host an INT8 MobileNetV2 .ptl runs at about the FP32
        # speed while the x86/onednn engines run the same file ~5x faster. They must not stand in for it:
        # other integer results (top-1 vs the reference 0.62-0.75 vs qnnpack's 0.88 on 8 photos) and
        # none of qnnpack's own faults (its channels_last hardtanh bug). Measured: bench/int8_speed.py.
        if artifact.precision in ("int8", "dynamic"):  # a qnnpack .ptl gives other numbers on another engine
            torch.backends.quantized.engine = "qnnpack"  # process-wide, like the thread count
        module = _load(Path(root) / artifact.path)
        dtypes = [np.dtype(d) for d in artifact.meta["input_dtypes"]]
        torch.set_num_threads(threads)  # process-wide: a runner process runs one artifact
        names = artifact.meta.get("inputs") or []
        shapes = artifact.meta.get("input_shapes") if artifact.meta.get("dynamic") else None

        def run(inputs) -> list:
            for n, a, shape in zip(names, inputs, shapes or ()):
                problem = dyn.shape_problem(artifact.meta, n, shape, np.shape(a))
                if problem:
                    raise UserError("E-DATA-SHAPE", problem, "feed sizes inside the model's dynamic ranges")
            args = [torch.from_numpy(np.ascontiguousarray(a, dtype=dt)) for a, dt in zip(inputs, dtypes)]
            with torch.no_grad():
                return _as_arrays(module(*args))

        return run


def _quantize_dynamic(model, recipe):
    """torch.ao dynamic quantization of every nn.Linear (but the recipe's keep_float ones): int8
    weights per output channel, symmetric -127..127 (edgekit's weight-only scheme), activations
    quantized at run time by qnnpack's dynamic linear kernel."""
    import copy

    from torch.ao.quantization import QConfig, quantize_dynamic
    from torch.ao.quantization.observer import PerChannelMinMaxObserver, PlaceholderObserver

    from edgekit.quant.recipe import keep_float_modules

    qconfig = QConfig(
        activation=PlaceholderObserver.with_args(dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True),
        weight=PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                  quant_min=-127, quant_max=127))
    kept = keep_float_modules(model, recipe)
    spec = {name: qconfig for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name not in kept}
    from .quant import qnnpack_engine

    # Packed under qnnpack, the engine the .ptl runs on: packed under the default x86 engine (fbgemm)
    # the lite-interpreter saver wrote every quantized Linear twice (tiny_transformer: 25.8 kB
    # duplicated, saving 4.8 kB instead of 34.6 kB; outputs identical).
    with warnings.catch_warnings(), qnnpack_engine():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), spec, dtype=torch.qint8)


@contextmanager
def _engine(precision: str):
    """INT8 modules hold qnnpack-packed weights: trace and freeze them under the qnnpack engine."""
    if precision not in ("int8", "dynamic"):
        yield
        return
    from .quant import qnnpack_engine

    with qnnpack_engine():
        yield


def _write_reference(q, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> tuple[tuple, dict]:
    """Save the float simulation next to the artifact; -> (artifact files, INT8 meta keys)."""
    from edgekit.quant.reference import quant_meta, reference_name, save_quantized_reference

    ref = out_dir / reference_name(spec.name, "ptl")
    save_quantized_reference(q.simulation, example_inputs, ref)
    notes = list(q.notes)
    notes.append("model I/O is float: the .ptl quantizes its inputs and dequantizes its outputs itself "
                 f"(recipe io={recipe.io!r} does not apply to ptl)")
    meta = {**quant_meta(recipe, calibration, ref.name, q.output_scales, q.kept_float, notes),
            "input_qparams": [list(p) if p else None for p in q.input_qparams], "engine": "qnnpack"}
    return (f"{spec.name}-int8.ptl", ref.name), meta


def _capture(model, example_inputs: tuple, other_sizes: tuple = ()) -> tuple[torch.jit.ScriptModule, str]:
    """TorchScript of the model and how it was made ("trace" or "script").

    The trace is checked by torch on a second input with other values (same shapes and dtypes):
    if the retraced graph differs or the traced outputs differ from the module's, the trace baked in
    data-dependent Python control flow, and the model is scripted instead. Shape-derived constants
    (TracerWarnings about converting tensors to Python numbers) are harmless with fixed shapes; with
    dynamic shapes ``other_sizes`` (inputs at other sizes of the ranges) are checked as well, so a
    size baked into the graph changes it and the model is scripted. The check decides, so the
    TracerWarnings themselves are not shown.
    """
    variant = _value_variant(example_inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(model, example_inputs, check_inputs=[example_inputs, variant, *other_sizes],
                                     strict=False)
            why = next((_first_line(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)
                        and "does not match" in str(w.message)), None)
        except torch.jit.TracingCheckError:
            traced, why = None, "the traced graph changes with the input values" + (" or sizes" if other_sizes else "")
        except Exception as exc:  # the tracer raises RuntimeError, TypeError, ... on what it cannot record
            traced, why = None, _first_line(exc)
    for w in caught:  # pass on what is not the tracer's own commentary
        if not issubclass(w.category, torch.jit.TracerWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if why is None:
        return traced, "trace"
    try:
        return torch.jit.script(model), "script"
    except Exception as exc:  # the TorchScript compiler raises several types; all mean "not scriptable"
        raise UserError(
            "E-EXPORT-FAILED",
            f"torch.jit.trace cannot capture the model faithfully ({why}) and torch.jit.script failed too "
            f"({_first_line(exc)})",
            "make forward() free of data-dependent Python control flow, or scriptable",
        ) from exc


def _other_sizes(spec, example_inputs: tuple) -> tuple:
    """With dynamic shapes: the example rebuilt at each other size verification probes (the ranges'
    bounds and middle, edgekit.dynamic), as trace check inputs; () for fixed shapes."""
    if not spec.dynamic:
        return ()
    sample = tuple(t.detach().cpu().numpy() for t in example_inputs)
    out = []
    for sizes in dyn.probe_sizes(spec.dynamic):
        arrays = dyn.probe(spec.dynamic, spec.input_names, [sample], sizes, 0)
        if any(a.shape != s.shape for a, s in zip(arrays, sample)):
            out.append(tuple(torch.from_numpy(a.copy()).to(t.dtype) for a, t in zip(arrays, example_inputs)))
    return tuple(out)


def _value_variant(inputs: tuple) -> tuple:
    """Inputs of the same shapes and dtypes with other values, chosen so that branches on a sign or a
    magnitude, and numbers read out of tensors, change: float inputs negated, tripled and given
    noise; integer inputs (token ids, masks) with the trailing half of the last axis zeroed, i.e.
    padding. One variant cannot flip every condition; verification on real data is the backstop."""
    g = torch.Generator().manual_seed(1)
    out = []
    for t in inputs:
        if t.is_floating_point():
            out.append(-3.0 * t + torch.randn(t.shape, generator=g, dtype=t.dtype))
        else:
            v = t.clone()
            if v.dim() > 0:
                v[..., v.shape[-1] // 2:] = 0
            out.append(v)
    return tuple(out)


def _load(path: Path):
    """Load a .ptl; a missing or unreadable file is E-ARTIFACT-CORRUPT, ops this torch lacks E-OP-UNSUPPORTED."""
    from torch.jit.mobile import _load_for_lite_interpreter

    if not path.is_file():
        raise UserError("E-ARTIFACT-CORRUPT", f"{path} does not exist", "re-export the bundle")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _JIT_DEPRECATION, DeprecationWarning)
        try:
            return _load_for_lite_interpreter(str(path))
        except RuntimeError as exc:
            missing = re.search(r"Following ops cannot be found: \[([^\]]*)\]", str(exc))
            if missing:
                raise UnsupportedOpError(
                    "ptl", missing.group(1), None,
                    f"build the runtime with {missing.group(1)} (for a custom op: load its library first), "
                    "or replace it in the model with standard ops") from exc
            raise UserError("E-ARTIFACT-CORRUPT", f"the lite interpreter cannot load {path}: {_first_line(exc)}",
                            "re-export the bundle") from exc


def _as_arrays(out) -> list:
    """A module's result (tensor, tuple/list, or dict in output order) as float32 numpy arrays."""
    if isinstance(out, torch.Tensor):
        out = [out]
    elif isinstance(out, dict):
        out = list(out.values())
    return [o.detach().numpy().astype(np.float32, copy=False) for o in out]


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


CONVERTER = PtlConverter()
