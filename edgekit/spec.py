"""ModelSpec: what a deployed model looks like from outside. It travels into the bundle manifest."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy dtype name
    layout: str | None = None  # "NCHW", "NHWC" or None

    def check(self, array: np.ndarray) -> str | None:
        """Return what is wrong with one sample (batch included), or None."""
        if tuple(array.shape) != tuple(self.shape):
            return f"input {self.name!r} has shape {tuple(array.shape)}, the model takes {tuple(self.shape)}"
        if np.dtype(array.dtype) != np.dtype(self.dtype):
            return f"input {self.name!r} has dtype {array.dtype}, the model takes {self.dtype}"
        return None


@dataclass(frozen=True)
class ImagePreprocess:
    """RGB image -> resize shorter side -> center crop -> /255 -> (x - mean) / std -> layout."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    color: str = "RGB"
    kind: str = "image"


@dataclass(frozen=True)
class TextPreprocess:
    """One sentence -> WordPiece tokenizer (files in the bundle) -> ids + mask, padded to max_length."""

    tokenizer: str = "tokenizer"  # folder relative to the bundle (or absolute at export time)
    max_length: int = 128
    kind: str = "text"


Preprocess = ImagePreprocess | TextPreprocess


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocess: Preprocess | None = None
    task: str = "classification"  # "classification" (top-1 is meaningful) or "embedding"
    labels: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [asdict(t) for t in self.inputs]
        d["outputs"] = [asdict(t) for t in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        pre = d.get("preprocess")
        if pre is not None:
            pre = dict(pre)
            kind = pre.get("kind")
            if kind == "image":
                pre = ImagePreprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
            elif kind == "text":
                pre = TextPreprocess(**pre)
            else:
                raise ValueError(f"unknown preprocess kind {kind!r}")
        return cls(
            name=d["name"],
            inputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], t.get("layout")) for t in d["inputs"]),
            outputs=tuple(TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], t.get("layout")) for t in d["outputs"]),
            preprocess=pre,
            task=d.get("task", "classification"),
            labels=tuple(d["labels"]) if d.get("labels") else None,
        )
