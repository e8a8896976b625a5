"""edgekit: take a trained PyTorch model to a phone and prove that what ships computes what was trained.

    import edgekit
    bundle = edgekit.export(model, example_inputs, targets=["tflite", "onnx"], data=samples)
    bundle.passed, bundle.results["tflite"].status, bundle.run("tflite", x)
    edgekit.verify("bundles/mymodel")

Importing edgekit is light: no TensorFlow, litert-torch, ExecuTorch or ncnn until a target needs
them; ``export``, ``verify``, ``run`` and ``Bundle`` load edgekit.api on first use.
"""
__version__ = "0.1.0"
__all__ = ["export", "verify", "run", "Bundle", "TargetResult", "__version__"]


def __getattr__(name: str):
    if name in ("export", "verify", "run", "Bundle", "TargetResult"):
        from edgekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
