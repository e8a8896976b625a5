"""FP32 parity of every runnable target in the capability table, on both tiny models: the runner in
process and in its isolated subprocess against the torch module (max abs error within 1e-4 of the
output scale, same argmax), with the spec's output shapes and float32 outputs."""
from __future__ import annotations

import numpy as np
import pytest

from converter_checks import assert_close, make_inputs, stack, torch_outputs
from edgekit.converters import all_converters, get
from edgekit.isolate import run_artifact

TARGETS = [c.info.name for c in all_converters() if not c.info.not_runnable and "fp32" in c.info.precisions]
MODELS = ["tiny_cnn", "tiny_transformer"]
N_SAMPLES = 4


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("target", TARGETS)
def test_runner_in_process(tiny_export, target, model):
    loaded, artifact, out = tiny_export(target, model)
    samples = make_inputs(loaded.spec, N_SAMPLES)
    run = get(target).runner(artifact, out, threads=1)
    outs = [run(s) for s in samples]
    assert all(len(o) == 1 and o[0].shape == loaded.spec.outputs[0].shape for o in outs)
    assert_close(np.stack([o[0] for o in outs]), torch_outputs(loaded.module, samples))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("target", TARGETS)
def test_runner_isolated(tiny_export, target, model):
    loaded, artifact, out = tiny_export(target, model)
    samples = make_inputs(loaded.spec, N_SAMPLES, seed=1)
    res = run_artifact(target, artifact.to_dict(), out, stack(samples))
    assert res.error is None, (res.error, res.log)
    assert res.latency_ms is not None and res.latency_ms > 0
    assert_close(res.outputs[0], torch_outputs(loaded.module, samples))
