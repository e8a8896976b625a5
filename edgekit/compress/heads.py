"""Attention-head and FFN-neuron pruning for transformer encoders.

A head is removed whole: its rows of the query, key and value projections and its columns of the
attention output projection; an FFN neuron is one row of the first FFN linear and the matching
column of the second. The result is a smaller dense model (no masks) that every target exports.

Encoder layers are recognised by their structure (an adapter per layout, ``LAYOUTS``):
- "fused_qkv": edgekit's TinyEncoderLayer (``qkv`` = [q; k; v] rows, ``proj``, ``heads``,
  ``ffn`` = Sequential(Linear, act, Linear)); pruned layers get a forward with an explicit head size;
- "bert": Hugging Face BERT layers (``attention.self.{query,key,value}``, ``attention.output.dense``,
  ``intermediate.dense``, ``output.dense``), whose attention reshapes by head size, so only the
  module attributes (num_attention_heads, all_head_size) need updating.

Importance of a head or neuron: the L1 or L2 norm of all the weights that leave with it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from edgekit.errors import UserError

from .count import SizeChange, measure

IMPORTANCE = {
    "l1": lambda w: w.abs().sum(1),
    "l2": lambda w: w.pow(2).sum(1),  # squared: sums over the pieces of one head add up to its squared norm
}


@dataclass(frozen=True)
class HeadPruneConfig:
    head_ratio: float | None = 0.5  # fraction of each layer's heads removed (None: keep all heads)
    ffn_ratio: float | None = 0.5  # fraction of each layer's FFN neurons removed (None: keep all)
    importance: str = "l2"
    layers: tuple[str, ...] | None = None  # encoder layer names; None: every recognised encoder layer
    min_heads: int = 1  # never fewer heads than this in a layer
    round_to: int = 1  # kept FFN neurons: a multiple of this (fast kernels)

    def __post_init__(self):
        if self.head_ratio is None and self.ffn_ratio is None:
            raise UserError("E-COMPRESS-CONFIG", "head pruning with neither head_ratio nor ffn_ratio does nothing",
                            "pass head_ratio and/or ffn_ratio, e.g. 0.5")
        for name, r in (("head_ratio", self.head_ratio), ("ffn_ratio", self.ffn_ratio)):
            if r is not None and not 0.0 < r < 1.0:
                raise UserError("E-COMPRESS-CONFIG", f"{name} {r} is outside (0, 1)", f"pass {name} as a fraction, e.g. 0.5")
        if self.importance not in IMPORTANCE:
            raise UserError("E-COMPRESS-CONFIG", f"unknown importance {self.importance!r}", f"choose from {', '.join(IMPORTANCE)}")
        if self.min_heads < 1 or self.round_to < 1:
            raise UserError("E-COMPRESS-CONFIG", "min_heads and round_to must be >= 1", "pass positive values")


@dataclass
class HeadPruneResult:
    model: nn.Module
    size: SizeChange
    layers: dict[str, dict] = field(default_factory=dict)  # layer -> {"heads": [before, after], "ffn": [before, after], "kept_heads": [...]}

    def to_dict(self) -> dict:
        return {"size": self.size.to_dict(), "layers": self.layers}


# ---- slicing helpers ---------------------------------------------------------------------------

def _keep_rows(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None)
    new.weight.data.copy_(layer.weight.data[idx])
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data[idx])
    return new


def _keep_cols(layer: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None)
    new.weight.data.copy_(layer.weight.data[:, idx])
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.data)
    return new


def _top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, keep).indices).values


def _n_keep(total: int, ratio: float | None, floor: int, round_to: int = 1) -> int:
    if ratio is None:
        return total
    keep = max(floor, total - int(round(ratio * total)))
    keep = -(-keep // round_to) * round_to
    return min(total, keep)


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)[None]).reshape(-1)


# ---- layouts -----------------------------------------------------------------------------------

class _FusedQKV:
    """edgekit's TinyEncoderLayer: qkv rows ordered (q|k|v, head, dim)."""

    @staticmethod
    def matches(m: nn.Module) -> bool:
        return isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear) \
            and isinstance(getattr(m, "heads", None), int) and isinstance(getattr(m, "ffn", None), nn.Sequential) \
            and len(m.ffn) == 3 and isinstance(m.ffn[0], nn.Linear) and isinstance(m.ffn[2], nn.Linear)

    @staticmethod
    def heads(m) -> tuple[int, int]:
        inner = m.qkv.out_features // 3
        return m.heads, inner // m.heads

    @staticmethod
    def head_weights(m, head_dim: int) -> list[torch.Tensor]:
        """One (heads, n) matrix per projection: all the weights of each head."""
        h = m.qkv.out_features // 3 // head_dim
        w = m.qkv.weight.detach().reshape(3, h, head_dim, -1)
        b = m.qkv.bias.detach().reshape(3, h, head_dim, 1) if m.qkv.bias is not None else torch.zeros(3, h, head_dim, 0)
        qkv = torch.cat([w, b], -1).permute(1, 0, 2, 3).reshape(h, -1)
        proj = m.proj.weight.detach().reshape(-1, h, head_dim).permute(1, 0, 2).reshape(h, -1)
        return [qkv, proj]

    @staticmethod
    def keep_heads(m, kept: torch.Tensor, head_dim: int) -> None:
        inner = m.qkv.out_features // 3
        rows = torch.cat([s * inner + _head_rows(kept, head_dim) for s in range(3)])
        m.qkv = _keep_rows(m.qkv, rows)
        m.proj = _keep_cols(m.proj, _head_rows(kept, head_dim))
        m.heads, m.head_dim = len(kept), head_dim
        if not isinstance(m, _PrunedTinyEncoderLayer):
            m.__class__ = _pruned_class(type(m))

    @staticmethod
    def ffn(m) -> tuple[nn.Linear, nn.Linear]:
        return m.ffn[0], m.ffn[2]

    @staticmethod
    def set_ffn(m, first: nn.Linear, second: nn.Linear) -> None:
        m.ffn[0], m.ffn[2] = first, second


class _PrunedTinyEncoderLayer(nn.Module):
    """Forward of a head-pruned TinyEncoderLayer: the attention width is heads * head_dim, no
    longer the model width (mixed into the layer's own class, so its state dict keeps its names)."""

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, hd = self.heads, self.head_dim
        q, k, v = self.qkv(x).reshape(b, t, 3, h, hd).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask_bias
        y = (att.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, h * hd)
        x = self.norm1(x + self.proj(y))
        return self.norm2(x + self.ffn(x))


_PRUNED_CLASSES: dict[type, type] = {}


def _pruned_class(base: type) -> type:
    """The head-pruned variant of a fused-qkv layer class (edgekit's TinyEncoderLayer: the named,
    picklable HeadPrunedTinyEncoderLayer; a look-alike class: one made once per class)."""
    from edgekit.models.tiny import TinyEncoderLayer

    if base is TinyEncoderLayer:
        return HeadPrunedTinyEncoderLayer
    if base not in _PRUNED_CLASSES:
        _PRUNED_CLASSES[base] = type("HeadPruned" + base.__name__, (_PrunedTinyEncoderLayer, base), {})
    return _PRUNED_CLASSES[base]


def _tiny_pruned_class() -> type:
    from edgekit.models.tiny import TinyEncoderLayer

    return type("HeadPrunedTinyEncoderLayer", (_PrunedTinyEncoderLayer, TinyEncoderLayer), {"__module__": __name__})


class _Bert:
    """Hugging Face BERT layer (BertLayer and look-alikes: MiniLM, DistilBERT-style naming excluded)."""

    @staticmethod
    def matches(m: nn.Module) -> bool:
        att = getattr(getattr(m, "attention", None), "self", None)
        return att is not None and all(isinstance(getattr(att, n, None), nn.Linear) for n in ("query", "key", "value")) \
            and isinstance(getattr(getattr(m.attention, "output", None), "dense", None), nn.Linear) \
            and isinstance(getattr(getattr(m, "intermediate", None), "dense", None), nn.Linear) \
            and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear)

    @staticmethod
    def heads(m) -> tuple[int, int]:
        att = m.attention.self
        return att.num_attention_heads, att.attention_head_size

    @staticmethod
    def head_weights(m, head_dim: int) -> list[torch.Tensor]:
        att = m.attention.self
        h = att.num_attention_heads
        out = []
        for lin in (att.query, att.key, att.value):
            w = lin.weight.detach().reshape(h, head_dim, -1)
            b = lin.bias.detach().reshape(h, head_dim, 1) if lin.bias is not None else w[..., :0]
            out.append(torch.cat([w, b], -1).reshape(h, -1))
        dense = m.attention.output.dense.weight.detach()
        out.append(dense.reshape(dense.shape[0], h, head_dim).permute(1, 0, 2).reshape(h, -1))
        return out

    @staticmethod
    def keep_heads(m, kept: torch.Tensor, head_dim: int) -> None:
        att, rows = m.attention.self, _head_rows(kept, head_dim)
        att.query, att.key, att.value = (_keep_rows(lin, rows) for lin in (att.query, att.key, att.value))
        m.attention.output.dense = _keep_cols(m.attention.output.dense, rows)
        att.num_attention_heads, att.all_head_size = len(kept), len(kept) * head_dim

    @staticmethod
    def ffn(m) -> tuple[nn.Linear, nn.Linear]:
        return m.intermediate.dense, m.output.dense

    @staticmethod
    def set_ffn(m, first: nn.Linear, second: nn.Linear) -> None:
        m.intermediate.dense, m.output.dense = first, second


LAYOUTS = {"fused_qkv": _FusedQKV, "bert": _Bert}
HeadPrunedTinyEncoderLayer = _tiny_pruned_class()


def _layout(m: nn.Module):
    for layout in LAYOUTS.values():
        if layout.matches(m):
            return layout
    return None


def encoder_layers(model: nn.Module) -> dict[str, str]:
    """Names of the recognised encoder layers -> their layout name."""
    out = {}
    for name, m in model.named_modules():
        for key, layout in LAYOUTS.items():
            if layout.matches(m):
                out[name] = key
                break
    return out


def _scores(pieces: list[torch.Tensor], importance: str) -> torch.Tensor:
    fn = IMPORTANCE[importance]
    return sum(fn(p.float()) for p in pieces)


def prune_heads(model: nn.Module, example_inputs: tuple, config: HeadPruneConfig, inplace: bool = False) -> HeadPruneResult:
    """Remove the least important heads and FFN neurons of every (or the named) encoder layer."""
    model = model if inplace else copy.deepcopy(model)
    found = encoder_layers(model)
    modules = dict(model.named_modules())
    if config.layers is not None:
        for n in config.layers:
            if n not in modules:
                raise UserError("E-COMPRESS-LAYER", f"head pruning: the model has no layer named {n!r}",
                                f"name encoder layers, e.g. {', '.join(list(found)[:4]) or '(none recognised)'}")
            if n not in found:
                raise UserError("E-COMPRESS-LAYER", f"head pruning: layer {n!r} ({type(modules[n]).__name__}) is not a recognised encoder layer",
                                f"name encoder layers of a known layout ({', '.join(LAYOUTS)}), e.g. {', '.join(list(found)[:4]) or '(none in this model)'}")
        names = list(config.layers)
    else:
        names = list(found)
    if not names:
        raise UserError("E-COMPRESS-UNSUPPORTED", f"{type(model).__name__} has no encoder layer of a known layout",
                        f"head pruning knows the layouts {', '.join(LAYOUTS)}; use structured pruning (prune) for other models")
    before = measure(model, example_inputs)
    report = {}
    for name in names:
        layer = modules[name]
        layout = LAYOUTS[found[name]]
        entry = {}
        if config.head_ratio is not None:
            h, hd = layout.heads(layer)
            keep = _n_keep(h, config.head_ratio, config.min_heads)
            kept = _top(_scores(layout.head_weights(layer, hd), config.importance), keep)
            if keep < h:
                layout.keep_heads(layer, kept, hd)
            entry.update(heads=[h, keep], kept_heads=kept.tolist())
        if config.ffn_ratio is not None:
            first, second = layout.ffn(layer)
            n = first.out_features
            keep = _n_keep(n, config.ffn_ratio, 1, config.round_to)
            pieces = [torch.cat([first.weight.detach(), (first.bias.detach()[:, None] if first.bias is not None else first.weight[:, :0])], 1),
                      second.weight.detach().t()]
            idx = _top(_scores(pieces, config.importance), keep)
            if keep < n:
                layout.set_ffn(layer, _keep_rows(first, idx), _keep_cols(second, idx))
            entry["ffn"] = [n, keep]
        report[name] = entry
    _sync_config(model)
    after = measure(model, example_inputs)
    return HeadPruneResult(model, SizeChange(before, after), report)


def _sync_config(model: nn.Module) -> None:
    """A Hugging Face config still names the original widths; record that heads were pruned."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "pruned_heads") and isinstance(cfg.pruned_heads, dict):
            cfg.pruned_heads = dict(cfg.pruned_heads)  # a copy: the original model's config stays untouched
