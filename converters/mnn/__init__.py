"""mnn target: edgekit's ONNX file -> MNN's converter -> ``.mnn``, run in MNN's runtime (Alibaba).

- ``export.py``: the export flow (the onnx target makes the ONNX file; for INT8 its QDQ file with
  edgekit's calibrated ranges and its quantized reference);
- ``onnx_rewrite.py``: graph rewrites MNN's ONNX converter needs (exact GELU, fp16 weights rounded
  to nearest);
- ``int8_params.py``: INT8 with edgekit's ranges (QDQ graph -> float graph + MNN compression params);
- ``tool.py`` / ``_tool_child.py``: MNN's converter function, called in a confined child process
  (never MNN's console scripts or ``MNN.tools``, which run pip and upload usage logs);
- ``runner.py``: the MNN Express Module runner.

No per-layer view (``per_layer`` is None): MNN's Session API calls back after every op with its
output tensors (``runSessionWithCallBackInfo``; the op types say ``[ DT_INT8 ]``), but its Python
binding reads any tensor as float32 (``getNumpyData`` of an int8 tensor returns its raw bytes as
floats, in MNN's packed NC4HW4 layout) and has no int8 host type to copy into; fidelity is judged
end to end.
"""
from __future__ import annotations

from pathlib import Path

from edgekit.converters.base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

# INT8 (MNN's int8 convolutions with edgekit's ranges) vs the quantized reference (convert_pt2e),
# held-out photos: tiny_cnn 0 steps (bit-identical outputs). MobileNetV2, 16 photos, the same QDQ
# numbers run by both runtimes: MNN max 12 / mean 1.97 output steps, SQNR 20.2 dB, top-1 13/16 vs the
# reference; onnxruntime's integer kernels max 10 / mean 1.94, 20.3 dB, 15/16 (MNN vs onnxruntime:
# max 10 / mean 1.93 steps). That is the noise floor of integer kernels vs the float simulation
# (TFLite XNNPACK vs TFLite's reference kernels on one file: max 14 / mean 2.0,
# base.INT8_END_TO_END_TOLERANCE), so the bound is the onnx target's; a wrong weight scale is caught.
INT8_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.98, min_top1=0.6, max_steps=24.0)
# fp16 (MNN --fp16 with nearest-rounded weights) vs edgekit's fp16-weight simulation, 48 samples of
# each model's data: max_abs_rel tiny_cnn 5.2e-7, MobileNetV2 2.3e-5, tiny_transformer 9.0e-5 (MNN
# also halves constants the simulation keeps, e.g. position embeddings); cosine >= 0.99999999, top-1
# 1.0. The strict check runs every file in precision "high" (FP32 arithmetic): precision "low", the
# fp16 file's own default, computes in FP16 on an ARMv8.2 CPU (emulated cortex-a76: tiny_cnn's fp16
# file 2.6e-3 off; on x86 and cortex-a53 "low" still computes in FP32).
FP16_TOLERANCE = Tolerance(max_abs_rel=1e-3, min_cosine=0.9999, min_top1=0.9)


class MnnConverter(Converter):
    info = TargetInfo(
        rank=70,
        levers=("equalize", "bias_correction", "adaround", "keep_float", "qat"),  # through the onnx target's PT2E path
        name="mnn",
        title="MNN (Alibaba)",
        suffix=".mnn",
        precisions=("fp32", "fp16", "int8"),
        tolerances={"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE},
        delegates=("cpu",),
        extra="mnn",
        modules=("MNN", "onnx", "onnxscript"),
        runtime_modules=("MNN",),
        packages=("MNN",),
        exporter="edgekit's ONNX file (torch.onnx dynamo) -> MNN's converter (_tools.mnnconvert, confined child "
                 "process); fp16: --fp16; INT8: edgekit's QDQ ranges as MNN compression params "
                 "(int8 convolutions)",
        runtime="MNN Express Module (nn.load_module_from_file), CPU, 1 thread, precision high (the runtime's "
                "defaults: normal, fp16 files low, which computes in FP16 on ARMv8.2 CPUs)",
        relaxed_defaults=True,  # precision low on a CPU with FP16 arithmetic (cortex-a76)
        # MNN publishes a cp311 manylinux2014 aarch64 wheel (17.5 MB, ~56 MB unpacked; its own libgomp);
        # the runner needs only it and numpy
        arm=True,
        arm_wheels=("MNN==3.6.1",),
        dynamic="the onnx file's symbolic dims stay free in the .mnn; the Express Module (shape_mutable) "
                "re-plans at each new input shape; edgekit checks the ranges",
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        from .export import export

        return export(model, spec, None, out_dir, example_inputs)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        from .export import export

        return export(model, spec, recipe, out_dir, example_inputs)

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        from .export import export

        return export(model, spec, recipe, out_dir, example_inputs, calibration)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        from .runner import load

        return load(artifact, root, threads, strict)


CONVERTER = MnnConverter()
