"""Test helper: the shipped real photos (calibration_data/images) as an (N, 3, size, size) float32
array, preprocessed as a model's ImagePreprocess would (resize the shorter side, centre crop, ImageNet
normalisation). Parity tests run on these rather than on random tensors."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.data import load_samples
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec


def photo_array(calib_root: Path, size: int, limit: int, margin: int = 4) -> np.ndarray:
    """The first ``limit`` photos, resized to ``size + margin`` on the shorter side and cropped to ``size``."""
    spec = ModelSpec("photos", (TensorSpec("image", (1, 3, size, size), "float32", "NCHW"),), (TensorSpec("out", (1,)),),
                     ImagePreprocess(size + margin, size))
    return np.concatenate([s[0] for s in load_samples(Path(calib_root) / "images", spec, limit=limit).samples])
