"""Dynamic shapes on the targets beyond onnx and executorch: openvino and mnn (from edgekit's ONNX
file with symbolic dims) and ptl (TorchScript). End to end through the public API: a CNN exported
with a dynamic batch and image height passes at the example's size and at every probed size (the
ranges' bounds and middle), ``edgekit.verify`` passes again, and the runner takes any in-range
shape but refuses one outside the ranges."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.export import Dim

import edgekit
from edgekit.converters import Artifact, get
from edgekit.errors import UserError

# three targets exported and verified at four sizes each (~1 min): in CI's bounded slow step
pytestmark = pytest.mark.slow

TARGETS = ["openvino", "mnn", "ptl"]
# the probed sizes of batch 1..4 and h 16..64 (a multiple of 16): both bounds and the middle
PROBED = [{"batch": 1, "h": 16}, {"batch": 2, "h": 32}, {"batch": 4, "h": 64}]
MAX_ABS = 1e-5  # measured: <= 2e-7 on every target at every size


class TinyCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class SizeInTensor(torch.nn.Module):
    """Reads its height into a tensor: torch.jit.trace bakes the traced height in as a constant
    (torch.export keeps it symbolic), so the ptl target has to notice and script it."""

    def __init__(self):
        super().__init__()
        self.net = TinyCnn()

    def forward(self, x):
        return self.net(x) * torch.tensor([x.shape[2]]).float() / 32


def _dims():
    return {"x": {0: Dim("batch", min=1, max=4), 2: Dim("h", min=1, max=4) * 16}}


def _data():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(3)]


def _available(target: str) -> None:
    try:
        get(target).check_available()
    except UserError as exc:
        pytest.skip(f"{target}: {exc.what}")


def _export(model_cls, target: str, out: Path):
    torch.manual_seed(0)
    model = model_cls().eval()
    return edgekit.export(model, torch.randn(1, 3, 32, 32), targets=[target], data=_data(),
                          dynamic_shapes=_dims(), out=out)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """target -> the bundle of TinyCnn exported with dynamic shapes (once per target)."""
    cache = {}

    def get_bundle(target: str):
        _available(target)
        if target not in cache:
            cache[target] = _export(TinyCnn, target, tmp_path_factory.mktemp(f"dyn-{target}") / "b")
        return cache[target]

    return get_bundle


def _check_sizes(entry: dict) -> None:
    dyn = entry["dynamic"]
    assert dyn["dims"] == ["batch:x.0=1..4", "h:x.2=16..64/16"]
    assert [row["sizes"] for row in dyn["sizes"]] == PROBED
    for row in dyn["sizes"]:
        assert row["status"] == "pass", row
        assert row["max_abs"] < MAX_ABS, row
    assert dyn["failures"] == [] and dyn["errors"] == []


@pytest.mark.parametrize("target", TARGETS)
def test_export_passes_at_every_probed_size(bundles, target):
    bundle = bundles(target)
    assert bundle.passed, bundle.report["targets"]
    assert bundle.results[target].status == "pass"
    report = json.loads((bundle.path / "report.json").read_text())
    entry = report["targets"][target]
    assert entry["status"] == "pass" and entry["metrics"]["max_abs"] < MAX_ABS
    _check_sizes(entry)
    (art,) = [a for a in bundle.manifest["artifacts"] if a["target"] == target]
    assert [d["name"] for d in art["meta"]["dynamic"]] == ["batch", "h"]


@pytest.mark.parametrize("target", TARGETS)
def test_verify_passes_at_every_probed_size(bundles, target):
    bundle = bundles(target)
    checked = edgekit.verify(bundle.path)
    assert checked.passed, checked.report["targets"]
    _check_sizes(checked.report["targets"][target])


@pytest.mark.parametrize("target", TARGETS)
def test_runner_takes_in_range_shapes_and_refuses_others(bundles, target):
    bundle = bundles(target)
    (entry,) = [a for a in bundle.manifest["artifacts"] if a["target"] == target]
    art = Artifact.from_dict({**entry, "files": [f["path"] for f in entry["files"]]})
    run = get(target).runner(art, bundle.path)
    torch.manual_seed(0)
    model = TinyCnn().eval()  # the exported weights (same seed as _export)
    rng = np.random.default_rng(1)
    for shape in [(3, 3, 48, 32), (1, 3, 16, 32), (4, 3, 64, 32), (2, 3, 32, 32)]:
        x = rng.standard_normal(shape).astype(np.float32)
        (y,) = run([x])
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert y.shape == (shape[0], 5)
        assert np.abs(y - want).max() < MAX_ABS
    for shape in [(5, 3, 32, 32), (1, 3, 24, 32), (1, 3, 80, 32), (1, 3, 32, 16)]:
        with pytest.raises(UserError) as err:
            run([np.zeros(shape, np.float32)])
        assert err.value.code == "E-DATA-SHAPE"


def test_ptl_scripts_a_trace_that_bakes_in_a_size(tmp_path):
    """Traced at height 32, the constant 32 stays in the graph (0.19 off at height 16); the trace
    check at the other probed sizes sees the graph change and the model is scripted instead. (The
    converter alone: the pipeline's probes would catch the traced file too, as a failure.)"""
    import dataclasses

    from edgekit import dynamic
    from edgekit.pipeline import load_model

    _available("ptl")
    torch.manual_seed(0)
    model = SizeInTensor().eval()
    loaded = load_model(model, torch.randn(1, 3, 32, 32))
    spec = dataclasses.replace(loaded.spec, dynamic=dynamic.resolve(_dims(), loaded.spec.input_names, loaded.example_inputs))
    with pytest.warns(FutureWarning):  # PyTorch Mobile's deprecation
        art = get("ptl").export(model, spec, None, tmp_path, (torch.randn(2, 3, 32, 32),))
    assert art.meta["capture"] == "script"
    run = get("ptl").runner(art, tmp_path)
    for shape in [(1, 3, 16, 32), (4, 3, 64, 32)]:
        x = torch.randn(shape)
        with torch.no_grad():
            assert np.abs(run([x.numpy()])[0] - model(x).numpy()).max() < MAX_ABS
