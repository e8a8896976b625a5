"""Shared by the converter tests: inputs of a spec's shapes, torch reference outputs, and the FP32
closeness check every target must meet."""
from __future__ import annotations

import numpy as np
import torch

from edgekit.spec import ModelSpec


def make_inputs(spec: ModelSpec, n: int, seed: int = 0, pad_step: int = 3) -> list[list[np.ndarray]]:
    """n samples in spec order: seeded normal images, or token ids in [1000, 30000) whose attention
    mask ends in padding zeros (a different real length per sample; padded ids are 0, as a
    tokenizer writes them)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        sample = []
        for t in spec.inputs:
            if t.dtype == "float32":
                sample.append(rng.standard_normal(t.shape).astype(np.float32))
            elif t.name == "input_ids":
                sample.append(rng.integers(1000, 30000, size=t.shape, dtype=np.int64))
            else:
                mask = np.zeros(t.shape, dtype=np.int64)
                mask[..., :max(1, t.shape[-1] - pad_step * i - 1)] = 1
                sample.append(mask)
        names = spec.input_names
        if "input_ids" in names and "attention_mask" in names:
            sample[names.index("input_ids")][sample[names.index("attention_mask")] == 0] = 0
        samples.append(sample)
    return samples


def torch_outputs(module, samples) -> np.ndarray:
    with torch.no_grad():
        return np.stack([module(*[torch.from_numpy(a) for a in s]).numpy() for s in samples])


def stack(samples) -> list[np.ndarray]:
    """Samples -> one (N, *shape) array per input: the form edgekit.isolate.run_artifact takes."""
    return [np.stack([s[k] for s in samples]) for k in range(len(samples[0]))]


def assert_close(got: np.ndarray, ref: np.ndarray, rel: float = 1e-4) -> float:
    """FP32 parity: max abs error within rel x max|ref|, same argmax; returns the max abs error."""
    assert got.shape == ref.shape and got.dtype == np.float32
    err, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()
    return err
