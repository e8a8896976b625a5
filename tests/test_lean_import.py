import subprocess
import sys

HEAVY = ("tensorflow", "litert_torch", "ai_edge_litert", "executorch", "ncnn", "pnnx", "onnxruntime", "onnx", "MNN", "openvino", "coremltools",
         "transformers", "matplotlib")


def test_import_edgekit_and_the_capability_table_import_no_toolchain():
    code = ("import sys, edgekit, edgekit.cli, edgekit.capabilities, edgekit.pipeline, edgekit.verification; "
            "edgekit.capabilities.rows(); edgekit.cli.build_parser(); "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
