"""OpenVINO INT8 weights on the saturation-safe 8-bit grid (converters/openvino/weight_grid.py).

The pairs the bound counts are the ones OpenVINO's non-VNNI x86 kernels add in a saturating int16
(adjacent input channels at one tap); the grid keeps the full 8-bit scale where no such pair is large;
and end to end, on the CPU plugin's kernels for x86 CPUs without VNNI (``ONEDNN_MAX_CPU_ISA=AVX2`` or
``AVX512_CORE``: oneDNN then dispatches them whatever the host has; both pair the same two channels),
a model whose weights would overflow there stays within one output step of its reference, while the
same model on the plain min/max grid does not. That overflow is also the proof that the kernels
without VNNI ran (the VNNI ones compute it exactly; the AVX-512 primitive keeps its name either way):
if an OpenVINO release stopped honouring the variable, the test would fail rather than pass unseen."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

if importlib.util.find_spec("openvino") is None:
    pytest.skip("openvino is not installed (pip install 'edgekit[openvino]')", allow_module_level=True)
pytest.importorskip("onnxscript")

from edgekit.converters.openvino import CONVERTER, export  # noqa: E402
from edgekit.converters.openvino.weight_grid import PairSafeObserver, pair_bound  # noqa: E402
from edgekit.data import CalibrationSet  # noqa: E402
from edgekit.quant import QuantRecipe  # noqa: E402
from edgekit.quant.reference import load_quantized_reference, run_program  # noqa: E402
from edgekit.spec import ModelSpec, TensorSpec  # noqa: E402


def test_pair_bound_counts_same_sign_neighbours_at_one_tap():
    w = torch.zeros(4, 5, 1, 2)
    w[0, 0, 0, 0], w[0, 1, 0, 0] = 1.0, 0.5  # channels 0 and 1: a pair -> 1.5
    w[1, 1, 0, 0], w[1, 2, 0, 0] = 1.0, 0.5  # channels 1 and 2: not a pair -> 1.0
    w[2, 0, 0, 0], w[2, 1, 0, 0] = 1.0, -0.5  # opposite signs -> 1.0
    w[3, 0, 0, 0], w[3, 0, 0, 1] = -1.0, -0.5  # two taps of one channel: not a pair -> 1.0
    assert pair_bound(w).tolist() == [1.5, 1.0, 1.0, 1.0]
    w[3, 2, 0, 1], w[3, 3, 0, 1] = -2.0, -0.25  # channels 2 and 3 -> 2.25
    w[2, 3, 0, 0], w[2, 4, 0, 0] = 1.5, 1.5  # channel 4 (odd count) pairs with the padding, not with 3 -> 1.5
    assert pair_bound(w).tolist() == [1.5, 1.0, 1.5, 2.25]
    assert pair_bound(torch.ones(6, 1, 3, 3)).tolist() == [0.0] * 6  # depthwise: no pair
    assert pair_bound(w.transpose(0, 1), ch_axis=1).tolist() == pair_bound(w).tolist()  # transposed conv layout


def test_grid_is_8_bit_where_neighbours_are_small_and_never_coarser_than_7_bit():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 32, 3, 3, generator=gen) * 0.1
    w[0, 6, 1, 1], w[0, 7, 1, 1] = 1.0, -0.2  # a peak whose neighbour has the other sign
    w[1, 6, 1, 1] = w[1, 7, 1, 1] = 1.0  # two equal neighbours: the worst case
    obs = PairSafeObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127)
    obs(w)
    scale, _ = obs.calculate_qparams()
    q = torch.round(w / scale.view(-1, 1, 1, 1))
    assert q.abs().amax(dim=(1, 2, 3)).tolist()[0] == 127  # the full 8-bit range
    assert q[1].abs().max() == 64  # 7 bits (-63..63 would have been 63) for the worst case
    even, odd = q[:, 0::2], q[:, 1::2]
    assert torch.maximum((even.clamp(min=0) + odd.clamp(min=0)), (-even).clamp(min=0) + (-odd).clamp(min=0)).max() <= 128


class _Overflowing(nn.Module):
    """A 1x1 conv whose every output channel has two large same-sign weights on input channels 0 and 1."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.conv = nn.Conv2d(16, 8, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(8, 16, 1, 1, generator=gen) * 0.05)
            self.conv.weight[:, 0] = self.conv.weight[:, 1] = torch.linspace(0.5, 1.0, 8).view(8, 1, 1)
            self.conv.weight[::2, 0:2] *= -1
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


SPEC = ModelSpec("overflowing", (TensorSpec("x", (1, 16, 6, 6)),), (TensorSpec("y", (1, 8, 6, 6)),))


def _samples(n: int) -> list[tuple[np.ndarray]]:
    """Inputs in [0, 1] whose channels 0 and 1 often sit at the top of their range (u8 code 255)."""
    rng = np.random.default_rng(2)
    out = []
    for _ in range(n):
        x = rng.uniform(0, 1, (1, 16, 6, 6)).astype(np.float32)
        x[:, :2] = np.where(rng.uniform(size=(1, 2, 6, 6)) < 0.5, 1.0, x[:, :2])
        out.append((x,))
    return out


_RUN_AS = """
import json, sys, numpy as np
from pathlib import Path
from edgekit.converters.openvino.no_telemetry import import_openvino
from edgekit.converters.openvino.runner import compile_model, runtime_layers
ov = import_openvino()
core = ov.Core()
compiled = compile_model(core, core.read_model(sys.argv[1]))
request, port = compiled.create_infer_request(), compiled.output(0)
xs = np.load(sys.argv[2])["x"]
np.save(sys.argv[3], np.stack([np.array(request.infer({"x": x})[port]) for x in xs]))
print(json.dumps([layer["primitive"] for layer in runtime_layers(compiled)]))
"""


def _run_as(isa: str, xml: Path, samples, tmp_path: Path) -> tuple[np.ndarray, list[str]]:
    np.savez(tmp_path / "x.npz", x=np.stack([s[0] for s in samples]))
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
    done = subprocess.run([sys.executable, "-c", _RUN_AS, str(xml), str(tmp_path / "x.npz"), str(tmp_path / "y.npy")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(tmp_path / "y.npy"), json.loads(done.stdout.strip().splitlines()[-1])


def _export(out: Path) -> tuple[Path, float, np.ndarray, dict]:
    """-> (the IR, the output step, the reference's outputs on the held-out samples, the meta)."""
    calib = _samples(32)
    art = CONVERTER.export(_Overflowing().eval(), SPEC, QuantRecipe(), out, (torch.from_numpy(calib[0][0]),),
                           calibration=CalibrationSet(tuple(calib), tuple(f"s{i}" for i in range(32)), "tensor", "test"))
    ref = run_program(load_quantized_reference(out / art.meta["reference"]).module(), HELD)[0]
    return out / art.path, art.meta["output_scales"][0], ref, art.meta


HELD = _samples(48)[32:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The model exported on the widened grid, and on the min/max grid the other targets use."""
    safe = _export(tmp_path_factory.mktemp("safe"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export, "_weight_observer", lambda: None)
        plain = _export(tmp_path_factory.mktemp("plain"))
    return safe, plain


def _flags() -> set[str]:
    info = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not info.is_file():
        return set()
    return {f for ln in info.read_text().splitlines() if ln.startswith("flags") for f in ln.split(":", 1)[1].split()}


@pytest.mark.parametrize("isa, flag, kernel", [("AVX2", "avx2", "jit_avx2_1x1_I8"),
                                               ("AVX512_CORE", "avx512bw", "brgconv_avx512_1x1_I8")])
def test_on_non_vnni_kernels_the_grid_stays_within_a_step_and_min_max_weights_saturate(exported, isa, flag, kernel, tmp_path):
    if flag not in _flags():
        pytest.skip(f"the {isa} int8 kernels run only on an x86_64 host with {flag}")
    (xml, step, ref, meta), (plain_xml, plain_step, plain_ref, _) = exported
    got, primitives = _run_as(isa, xml, HELD, tmp_path)
    assert kernel in primitives, primitives
    assert np.abs(got.reshape(ref.shape) - ref).max() / step <= 1.0 + 1e-3
    assert any("saturate" in n for n in meta["quant_notes"])
    plain, _ = _run_as(isa, plain_xml, HELD, tmp_path)
    assert np.abs(plain.reshape(plain_ref.shape) - plain_ref).max() / plain_step > 10  # overflowed: the fault the grid avoids
