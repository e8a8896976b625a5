"""OpenVINO target: edgekit's ONNX file (the onnx target's export) converted with
``openvino.convert_model`` and saved as an IR (``<name>-<precision>.openvino.xml`` + ``.openvino.bin``;
ncnn already writes ``<name>-<precision>.bin`` into the same bundle), run on OpenVINO's CPU plugin.

- fp32: the FP32 ONNX file; the IR keeps float32 weights.
- fp16: the same, saved with ``compress_to_fp16=True`` (every float constant stored as fp16; the
  plugin decompresses them and, in the strict check, computes in f32); reference: edgekit's fp16
  weight simulation with every float parameter rounded to fp16 as well.
- int8: the onnx target's QDQ file, i.e. edgekit's own recipe and calibrated ranges (per-channel
  symmetric int8 weights, per-tensor int8 activations); OpenVINO's low-precision transformations run
  it on u8/i8 kernels (measured: every Convolution, GroupConvolution and FullyConnected of tiny_cnn
  and MobileNetV2 has runtime precision u8 and an ``*_I8`` primitive). The reference is the onnx
  path's convert_pt2e program, stored under this target's own name.

Dynamic shapes (fp32): the onnx file's symbolic dims, bounded in the IR by the spec's ranges
(``model.reshape`` with ``ov.Dimension(min, max)``; a step such as "a multiple of 16" has no IR form and
is checked by the runner); the runner accepts any in-range size and returns outputs at their actual shapes.

The runner is strict by default: 1 thread, 1 stream, f32 inference precision (the CPU plugin's own
default is bf16 on CPUs with AVX512_BF16/AMX, as on this host: ``relaxed_defaults``). OpenVINO is
imported with its usage telemetry masked (``no_telemetry``). Per-layer view for int8: ``per_layer``.
See docs/targets/openvino.md for measured numbers.
"""
from __future__ import annotations

from pathlib import Path

from ..base import FP32_TOLERANCE, Artifact, Converter, Runner, TargetInfo, Tolerance

# fp16 (fp16 constants, f32 compute in the strict run) vs its reference, edgekit's fp16 weight simulation
# with every float parameter rounded to fp16 (export._fp16_reference: what compress_to_fp16 stores),
# measured here: tiny_cnn 48 photos max_abs_rel 2.5e-7, tiny_transformer 2.2e-7, MobileNetV2 48 photos
# 2.3e-5 (BatchNorm folded by torch.onnx vs by torch differs in the last bit of a few weights), cosine
# >= 0.999999999, top-1 48/48. The bound sits ~10x beyond MobileNetV2's.
FP16_TOLERANCE = Tolerance(max_abs_rel=2e-4, min_cosine=0.99999, min_top1=0.9)
# int8 (the QDQ IR on the CPU plugin's u8/i8 kernels) vs the convert_pt2e reference, measured here on
# held-out photos: tiny_cnn max 2 output steps (mean 0.1; the shipped program fuses a 1x1 conv with the
# residual add, one requantization where the reference rounds twice); MobileNetV2 (its built-in
# AdaRound recipe, 16 photos) max 11 steps, mean 1.95, top-1 14/16 vs the reference. Integer kernels and
# the float simulation drift apart through rounding in deep networks (onnxruntime on the same kind of
# QDQ file: 10 steps); the bound is the onnx target's, beyond that floor. The sharp check is per layer:
# every MobileNetV2 layer within 1 step of the reference op fed the runtime's input (flagged above 2).
INT8_TOLERANCE = Tolerance(max_abs_rel=0.15, min_cosine=0.98, min_top1=0.6, max_steps=24.0)


class OpenVinoConverter(Converter):
    info = TargetInfo(
        rank=80,
        levers=("equalize", "bias_correction", "adaround", "keep_float", "qat"),  # through the onnx target's PT2E path
        name="openvino",
        title="OpenVINO (Intel)",
        suffix=".xml",
        precisions=("fp32", "fp16", "int8"),
        tolerances={"fp32": FP32_TOLERANCE, "fp16": FP16_TOLERANCE, "int8": INT8_TOLERANCE},
        delegates=("cpu",),
        extra="openvino",
        modules=("onnx", "onnxscript"),  # the export goes through the onnx target
        runtime_modules=("openvino",),
        packages=("openvino", "onnx", "onnxscript"),
        exporter="edgekit's ONNX export (torch.onnx dynamo; INT8: QDQ with edgekit's PT2E recipe and ranges) -> "
                 "openvino.convert_model -> openvino.save_model (IR .xml + .bin; fp16: compress_to_fp16)",
        runtime="OpenVINO Core CPU plugin (1 thread, 1 stream, INFERENCE_PRECISION_HINT=f32)",
        relaxed_defaults=True,  # the CPU plugin defaults to bf16 inference on AVX512_BF16 / AMX CPUs
        # openvino publishes a cp311 manylinux_2_35 aarch64 wheel (30 MB; its ARM CPU plugin, ~95 MB
        # unpacked) that needs only glibc/libstdc++ of bookworm; the runner needs only it and numpy
        arm=True,
        arm_wheels=("openvino==2026.4.1",),
        # a plain `import openvino` with openvino-telemetry installed writes ~/intel/ and sends a usage
        # event (no_telemetry.py; the runner masks it the same way, and runs confined without network)
        arm_masked=("openvino_telemetry",),
        dynamic="bounded: the onnx file's symbolic dims become IR dims with the ranges (ov.Dimension(min, max)); "
                "the CPU plugin takes any size in them",
    )

    def export_fp32(self, model, spec, out_dir: Path, example_inputs: tuple) -> Artifact:
        return self._export(model, spec, None, out_dir, example_inputs)

    def export_weight_only(self, model, spec, recipe, out_dir: Path, example_inputs: tuple) -> Artifact:
        return self._export(model, spec, recipe, out_dir, example_inputs)

    def export_int8(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration) -> Artifact:
        return self._export(model, spec, recipe, out_dir, example_inputs, calibration)

    def _export(self, model, spec, recipe, out_dir: Path, example_inputs: tuple, calibration=None) -> Artifact:
        from .export import export

        main, files, meta, precision = export(model, spec, recipe, out_dir, example_inputs, calibration)
        return Artifact(self.info.name, precision, main, files, meta)

    def screen(self, artifact: Artifact, root: Path) -> None:
        """Before OpenVINO reads anything: exactly one .bin listed, and the .xml starts like an IR
        (XML declaration, then <net>): no DOCTYPE/entity declarations, and no other format that
        read_model would hand to another frontend."""
        from .runner import bin_file, check_ir

        bin_file(artifact)
        path = Path(root) / artifact.path
        if path.is_file():
            check_ir(path, "E-BUNDLE-UNSAFE")

    def per_layer(self, artifact: Artifact, root: Path, samples: list) -> list[dict] | None:
        """Each activation FakeQuantize of the IR against the reference op fed the runtime's own input."""
        if artifact.precision != "int8" or not artifact.meta.get("reference"):
            return None
        from .per_layer import openvino_per_layer

        return openvino_per_layer(artifact, Path(root), samples)

    def runner(self, artifact: Artifact, root: Path, threads: int = 1, strict: bool = True) -> Runner:
        from .runner import make_runner

        return make_runner(artifact, Path(root), threads, strict)


CONVERTER = OpenVinoConverter()
