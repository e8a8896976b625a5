"""Cross-layer equalization and bias correction (Nagel et al., "Data-Free Quantization", 2019).

Not implemented yet: ``check`` rejects recipes that ask for them, so these are never reached.
"""
from __future__ import annotations

from edgekit.errors import InternalError


def equalize(model) -> int:
    raise InternalError("cross-layer equalization is not implemented")


def correct_bias(converted, float_gm, samples) -> int:
    raise InternalError("bias correction is not implemented")
