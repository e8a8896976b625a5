"""ModelSpec: what a deployed model looks like from outside. It travels into the bundle manifest."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
LAYOUTS = (None, "NCHW", "NHWC")
MAX_ELEMENTS = 1 << 31  # per tensor: a spec read from an untrusted manifest must not size a huge allocation


def _require(ok: bool, what: str) -> None:
    """Specs are validated at construction (a manifest is untrusted input): ValueError says what is wrong."""
    if not ok:
        raise ValueError(what)


def _is_int(v, low: int, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # numpy dtype name
    layout: str | None = None  # "NCHW", "NHWC" or None

    def __post_init__(self):
        _require(isinstance(self.name, str) and 0 < len(self.name) <= 256, f"tensor name {self.name!r} is not a short string")
        _require(isinstance(self.shape, tuple) and len(self.shape) <= 8 and all(_is_int(d, 0, MAX_ELEMENTS) for d in self.shape),
                 f"tensor {self.name!r}: shape {self.shape!r} is not a tuple of at most 8 non-negative integers")
        _require(int(np.prod(self.shape, dtype=np.float64)) <= MAX_ELEMENTS, f"tensor {self.name!r}: shape {self.shape} is too large")
        _require(self.dtype in DTYPES, f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        _require(self.layout in LAYOUTS, f"tensor {self.name!r}: layout {self.layout!r} is not NCHW, NHWC or none")

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

    def __post_init__(self):
        _require(_is_int(self.resize, 1, 16384) and _is_int(self.crop, 1, 16384), "image resize/crop must be integers in 1..16384")
        for name, v in (("mean", self.mean), ("std", self.std)):
            _require(isinstance(v, tuple) and 1 <= len(v) <= 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v),
                     f"image {name} must be a tuple of 1 to 4 numbers")
        _require(all(x != 0 for x in self.std), "image std must not hold 0")
        _require(self.color in ("RGB", "L"), f"image color {self.color!r} is not RGB or L")


@dataclass(frozen=True)
class TextPreprocess:
    """One sentence -> WordPiece tokenizer (files in the bundle) -> ids + mask, padded to max_length."""

    tokenizer: str = "tokenizer"  # folder relative to the bundle (or absolute at export time)
    max_length: int = 128
    kind: str = "text"

    def __post_init__(self):
        _require(isinstance(self.tokenizer, str) and self.tokenizer != "", "text tokenizer must be a folder path")
        _require(_is_int(self.max_length, 1, 1 << 16), "text max_length must be an integer in 1..65536")


Preprocess = ImagePreprocess | TextPreprocess


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocess: Preprocess | None = None
    task: str = "classification"  # one of edgekit.tasks.TASKS: what the outputs mean, so how parity judges them
    labels: tuple[str, ...] | None = field(default=None, repr=False)
    task_options: tuple[tuple[str, str | float], ...] = ()  # detection: (("boxes", NAME), ("scores", NAME), ...)
    dynamic: tuple = ()  # edgekit.dynamic.DynamicDim: input axes whose size varies in a range (inputs' shapes: the example's)

    def __post_init__(self):
        _require(isinstance(self.name, str) and 0 < len(self.name) <= 256, f"model name {self.name!r} is not a short string")
        for kind, tensors in (("inputs", self.inputs), ("outputs", self.outputs)):
            _require(isinstance(tensors, tuple) and 0 < len(tensors) <= 64 and all(isinstance(t, TensorSpec) for t in tensors),
                     f"model {kind} must be 1 to 64 TensorSpecs")
            names = [t.name for t in tensors]
            _require(len(set(names)) == len(names), f"model {kind} have repeated names: {names}")
        _require(self.preprocess is None or isinstance(self.preprocess, (ImagePreprocess, TextPreprocess)),
                 "preprocess must be an ImagePreprocess, a TextPreprocess or None")
        _require(isinstance(self.task, str), "task must be a string")
        _require(isinstance(self.task_options, tuple) and all(isinstance(o, tuple) and len(o) == 2 for o in self.task_options),
                 "task_options must be a tuple of (key, value) pairs")
        problem = self._task_problem()
        _require(problem is None, f"task {self.task!r:.80}: {problem}")
        _require(self._dynamic_problem() is None, f"dynamic shapes: {self._dynamic_problem()}")
        _require(self.labels is None or (isinstance(self.labels, tuple) and all(isinstance(x, str) for x in self.labels)),
                 "labels must be a tuple of strings")

    def _task_problem(self) -> str | None:
        from edgekit.errors import UserError
        from edgekit.tasks import misfit

        try:
            task = self.task_spec
        except UserError as exc:
            return f"{exc.what} ({exc.fix})"
        except TypeError:
            return f"unknown task option(s) {', '.join(k for k, _ in self.task_options)}"
        return misfit(task, [(t.name, t.shape) for t in self.outputs])

    def _dynamic_problem(self) -> str | None:
        from edgekit.dynamic import DynamicDim

        if not isinstance(self.dynamic, tuple) or len(self.dynamic) > 8 or not all(isinstance(d, DynamicDim) for d in self.dynamic):
            return "at most 8 DynamicDims"
        shapes = {t.name: t.shape for t in self.inputs}
        for d in self.dynamic:
            for name, axis in d.axes:
                if name not in shapes or axis >= len(shapes[name]) or not d.fits(shapes[name][axis]):
                    return f"{d.describe()} does not fit the inputs {shapes}"
        return None

    @property
    def task_spec(self):
        """The edgekit.tasks.Task of this spec (its name and options)."""
        from edgekit.tasks import Task

        return Task(self.task, **dict(self.task_options))

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
        d["task_options"] = dict(self.task_options)
        d["dynamic"] = [x.to_dict() for x in self.dynamic]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """Raises ValueError (never KeyError or TypeError) when ``d`` is not a valid spec."""
        try:
            return cls._from_dict(d)
        except ValueError:
            raise
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed model spec ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def _from_dict(cls, d: dict) -> "ModelSpec":
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
            task_options=_task_options(d.get("task_options")),
            dynamic=_dynamic(d.get("dynamic")),
        )


def _task_options(opts) -> tuple:
    """The manifest's {"boxes": NAME, ...} as ModelSpec.task_options (keys checked by Task itself)."""
    if opts is None:
        return ()
    if not isinstance(opts, dict) or len(opts) > 8 or not all(isinstance(k, str) for k in opts):
        raise ValueError("task_options must be an object of at most 8 options")
    return tuple(opts.items())


def _dynamic(dims) -> tuple:
    """The manifest's dynamic dimensions (a list of at most 8) as DynamicDims."""
    from edgekit.dynamic import DynamicDim

    if not dims:
        return ()
    if not isinstance(dims, list) or len(dims) > 8:
        raise ValueError("dynamic must be a list of at most 8 dimensions")
    return tuple(DynamicDim.from_dict(x) for x in dims)
