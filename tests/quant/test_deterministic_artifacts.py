"""Same calibration data -> byte-identical INT8 artifacts, whatever the torch thread count.

The issue measured the platform flow's INT8 .tflite built with 1 vs 2 threads differing in 26.5k
bytes and up to 25 logit steps: observers reduce in thread-dependent order. edgekit calibrates in
one thread on fixed statistics, so the files must not differ by a single byte."""
from __future__ import annotations

import hashlib

import pytest
import torch

from edgekit.data import load_samples
from edgekit.models import BUILTIN
from edgekit.quant import QuantRecipe

pytestmark = pytest.mark.slow  # two INT8 conversions per target

TARGETS = ("tflite", "ncnn", "executorch")


def _digests(out, art) -> dict[str, str]:
    return {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in art.files if not f.endswith(".pt2")}


@pytest.mark.parametrize("target", TARGETS)
def test_int8_artifact_bytes_do_not_depend_on_threads(target, tmp_path):
    from edgekit.converters import get

    conv = get(target)
    conv.check_available()
    lm = BUILTIN["tiny_cnn"]()
    data = load_samples(lm.default_data, lm.spec)
    example = tuple(torch.from_numpy(a) for a in data.samples[0])
    before = torch.get_num_threads()
    digests = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = tmp_path / f"t{threads}"
            art = conv.export(lm.module, lm.spec, QuantRecipe(), out, example, calibration=data.head(24))
            digests.append(_digests(out, art))
    finally:
        torch.set_num_threads(before)
    assert digests[0] and digests[0] == digests[1]
