"""Compression tests train small models: one intra-op thread each (on 2 shared cores torch's
default pool spins against other processes and runs ~7x slower)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
