"""edgekit: take a trained PyTorch model to a phone and prove that what ships computes what was trained.

Importing edgekit is light: no TensorFlow, litert-torch, ExecuTorch or ncnn until a target needs them.
"""
__version__ = "0.1.0"
