"""Distributed recovery: the same KD job under torchrun with 2 processes (DDP, gloo on CPU) ends
with the same student as 1 process (each global batch is split across the ranks)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("ddp_job.py")


def _run(nproc: int, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(JOB), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow  # two torchrun launches: ~10 s alone, more on busy cores
def test_two_processes_match_one(tmp_path):
    one = _run(1, tmp_path / "one.pt")
    two = _run(2, tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 3 * (256 // 32)
    first, last = one["losses"][:8], one["losses"][-8:]
    assert sum(last) < 0.8 * sum(first)  # it learned something
    for name, w in one["state"].items():
        torch.testing.assert_close(two["state"][name], w, atol=1e-4, rtol=1e-4)
    # Ranks see half a batch each: rank 0's loss differs from the full-batch loss, the weights do not.
    assert one["losses"] != two["losses"]
