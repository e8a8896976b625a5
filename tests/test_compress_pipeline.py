"""A compressing job end to end, through the run config and through the Python API: the stage runs
before export, every target exports the compressed model, and the samples that verify it are never
the ones it was trained on."""
from __future__ import annotations

import json

import numpy as np

import edgekit
from edgekit.cli import main
from edgekit.compress import CompressConfig, KDConfig, PruneConfig, TrainConfig


def _train_part(n_total: int) -> int:
    return n_total - n_total // 3  # the pipeline trains (and calibrates) on the first two thirds


def _disjoint(bundle, calib_root):
    """No verification sample equals any sample of the training part of the data."""
    from edgekit.data import load_samples
    from edgekit.models import BUILTIN

    data = load_samples(calib_root / "images", BUILTIN["tiny_cnn"]().spec)
    train = [s[0] for s in data.samples[: _train_part(len(data))]]
    with np.load(bundle / "verify_inputs.npz") as z:
        verified = z[z.files[0]]
    assert len(verified) >= 1
    assert not any(np.array_equal(v, t) for v in verified for t in train)


def test_run_config_with_a_compress_table(tmp_path, calib_root):
    cfg = tmp_path / "job.toml"
    cfg.write_text(f'''[export]
model = "tiny_cnn"
targets = "tflite,onnx"
out = "{tmp_path / 'b'}"
[compress]
steps = ["prune", "distill"]
[compress.prune]
ratio = 0.3
[compress.train]
epochs = 2
batch_size = 16
''')
    assert main(["run", str(cfg), "--quiet"]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    stage = report["compression_stage"]
    assert [s["step"] for s in stage["steps"]] == ["prune", "distill"]
    assert stage["after"]["params"] < stage["before"]["params"]
    assert any(n.startswith("trained on 32 samples (the first of 48); verified on 16 held-out samples") for n in report["notes"])
    _disjoint(tmp_path / "b", calib_root)


def test_api_compress_keyword(tmp_path, calib_root):
    cfg = CompressConfig(steps=("prune", "distill"), prune=PruneConfig(ratio=0.3), distill=KDConfig(temperature=2.0),
                         train=TrainConfig(epochs=2, batch_size=16))
    bundle = edgekit.export("tiny_cnn", targets="onnx", compress=cfg, out=tmp_path / "b")
    assert bundle.passed and bundle.report["compression_stage"]["after"]["params"] < bundle.report["compression_stage"]["before"]["params"]
    _disjoint(tmp_path / "b", calib_root)
