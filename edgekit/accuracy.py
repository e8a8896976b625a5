"""Labelled accuracy: top-1 accuracy of the FP32 model and of an artifact on labelled samples
(edgekit.labels), and the compression cost in accuracy points between them.

The scored output is the model's first output when the task is classification and it holds one
score per class ((1, C) per sample); other models have no labelled accuracy.
"""
from __future__ import annotations

import numpy as np


def class_count(spec) -> int | None:
    """The number of classes the first output scores, or None when the model is not a classifier."""
    if spec.task_spec.name != "classification" or not spec.outputs:
        return None
    shape = tuple(spec.outputs[0].shape)
    return shape[-1] if len(shape) == 2 and shape[-1] >= 2 else None


def top1(outputs: list[np.ndarray], labels) -> float:
    """Top-1 accuracy of the first output, stacked (N, 1, C) or (N, C), against ``labels``."""
    scores = np.asarray(outputs[0]).reshape(len(labels), -1)
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(labels)))


def accuracy(fp32_outputs: list[np.ndarray], outputs: list[np.ndarray], labels, spec) -> dict | None:
    """{"fp32", "artifact", "drop_points", "samples"} or None without labels or a class output."""
    if labels is None or class_count(spec) is None or len(labels) == 0:
        return None
    fp32, art = top1(fp32_outputs, labels), top1(outputs, labels)
    return {"fp32": fp32, "artifact": art, "drop_points": round((fp32 - art) * 100.0, 4), "samples": len(labels),
            "output": spec.output_names[0]}
