"""Tasks: what a model's outputs mean, and so which metrics judge a file against its reference.

=============== ==================================================================================
classification  top-1 agreement of the logits (and max abs, cosine, SQNR): the default
segmentation    per-pixel argmax agreement of (B, C, H, W) class logits (and max abs, cosine, SQNR)
detection       boxes and scores compared after IoU matching: matched fraction, mean IoU, score error
regression      relative error and cosine over all samples together (no top-1)
embedding       relative error and cosine per sample (no top-1)
=============== ==================================================================================

A task is a small frozen ``Task`` written as ``NAME`` or, for detection, with the outputs named:
``detection:boxes=NAME,scores=NAME[,format=xyxy|xywh|cxcywh][,min_score=X]`` (``--task`` on the
command line, ``task=`` in ``edgekit.export``, ``task = "..."`` in a run config). ``infer`` picks
one when the outputs make it obvious; ``fit`` checks a task against the outputs (a coded E-ARGS).

Criteria derive from the target's Tolerance (one per target and precision, in the capability table),
so a task needs no tolerance table of its own: ``task_tolerance`` states each rule.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgekit.errors import UserError

if TYPE_CHECKING:
    from edgekit.converters.base import Tolerance

TASKS = ("classification", "segmentation", "detection", "regression", "embedding")
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
BOX_NAMES = ("boxes", "pred_boxes", "bboxes", "bbox")  # an output named so (or ending in _NAME) holds boxes
SCORE_NAMES = ("scores", "logits", "pred_logits", "confidences", "conf")  # ... per-box scores or class logits
IOU_MATCH = 0.5  # a reference box and an artifact box are the same detection at IoU >= 0.5 (COCO AP50)
MAX_BOXES = 1000  # per image and side: the highest-scoring boxes are matched (pass min_score for more)
_KEYS = {"boxes": "boxes", "scores": "scores", "format": "box_format", "min_score": "min_score"}
_FIX = ("pass --task classification|segmentation|detection|regression|embedding; detection may name "
        "its outputs: detection:boxes=NAME,scores=NAME[,format=cxcywh][,min_score=0.5]")

Shapes = Sequence[tuple[str, tuple[int, ...]]]  # (output name, shape as the ModelSpec holds it)


def _bad(what: str, fix: str = _FIX) -> UserError:
    return UserError("E-ARGS", what, fix)


@dataclass(frozen=True)
class Task:
    """One task; the detection fields name its outputs (None: found by name, see ``fit``)."""

    name: str = "classification"
    boxes: str | None = None  # detection: the output holding (..., K, 4) boxes
    scores: str | None = None  # detection: the output holding (..., K) scores or (..., K, C) class scores
    box_format: str = "xyxy"
    min_score: float | None = None  # detection: boxes scoring below are not detections (None: every box is)

    def __post_init__(self):
        if self.name not in TASKS:
            raise _bad(f"unknown task {self.name!r:.80} (the tasks are {', '.join(TASKS)})")
        detection = (self.boxes, self.scores, self.min_score) != (None, None, None) or self.box_format != "xyxy"
        if detection and self.name != "detection":
            raise _bad(f"task {self.name} takes no options (boxes, scores, format, min_score are detection's)",
                       f"pass --task {self.name}, or --task detection:...")
        for key in ("boxes", "scores"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, str) or not 0 < len(v) <= 256):
                raise _bad(f"detection {key}={v!r:.80} is not an output name", "name an output of the model")
        if self.boxes is not None and self.boxes == self.scores:
            raise _bad(f"detection boxes and scores are the same output {self.boxes!r:.80}", "name two different outputs")
        if self.box_format not in BOX_FORMATS:
            raise _bad(f"detection format={self.box_format!r:.40} is not one of {', '.join(BOX_FORMATS)}",
                       "pass format=xyxy (corners), xywh (corner and size) or cxcywh (center and size, as DETR)")
        if self.min_score is not None and (isinstance(self.min_score, bool) or not isinstance(self.min_score, (int, float))
                                           or not math.isfinite(self.min_score)):
            raise _bad(f"detection min_score={self.min_score!r:.40} is not a finite number", "pass e.g. min_score=0.5")

    def options(self) -> dict:
        """The fields beyond the name that differ from their defaults (what the manifest records)."""
        return {k: v for k, v in asdict(self).items() if k != "name" and v != Task.__dataclass_fields__[k].default}

    def __str__(self) -> str:
        inv = {v: k for k, v in _KEYS.items()}
        opts = ",".join(f"{inv[k]}={v}" for k, v in self.options().items())
        return f"{self.name}:{opts}" if opts else self.name

    def role(self, name: str, shape: tuple[int, ...]) -> str:
        """What one output is under this task: class, pixels, boxes, scores, regression, embedding or values."""
        if self.name == "classification":
            return "class"
        if self.name == "segmentation":
            return "pixels" if is_segmentation(shape) else "values"
        if self.name == "detection":
            return "boxes" if name == self.boxes else "scores" if name == self.scores else "values"
        return self.name


def parse(text) -> Task:
    """``"segmentation"`` or ``"detection:boxes=b,scores=s,format=cxcywh,min_score=0.3"`` -> Task (E-ARGS if malformed)."""
    if isinstance(text, Task):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _bad(f"task {text!r:.80} is not a task name")
    name, _, rest = text.strip().partition(":")
    fields = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in _KEYS or not value.strip():
            raise _bad(f"task option {item!r:.80} is not one of {'=, '.join(_KEYS)}= with a value", _FIX)
        fields[_KEYS[key.strip()]] = value.strip()
    if "min_score" in fields:
        try:
            fields["min_score"] = float(fields["min_score"])
        except ValueError:
            raise _bad(f"detection min_score={fields['min_score']!r:.40} is not a number", "pass e.g. min_score=0.5") from None
    return Task(name.strip(), **fields)


def is_segmentation(shape: tuple[int, ...]) -> bool:
    """The segmentation rule: a 4-D output (B, C, H, W) with C > 1 classes and H > 1, W > 1 pixels."""
    return len(shape) == 4 and shape[1] > 1 and shape[2] > 1 and shape[3] > 1


def _named(name: str, keys: tuple[str, ...]) -> bool:
    return any(name == k or name.endswith("_" + k) for k in keys)


def _detection_problem(boxes: tuple[int, ...], scores: tuple[int, ...]) -> str | None:
    if len(boxes) < 2 or boxes[-1] != 4:
        return f"boxes have shape {boxes}, not (..., K, 4)"
    if len(scores) not in (len(boxes) - 1, len(boxes)) or scores[:len(boxes) - 1] != boxes[:-1]:
        return f"scores have shape {scores}, not {boxes[:-1]} (one score per box) or {(*boxes[:-1], 'C')} (class scores)"
    return None


def _find(shapes: dict, keys: tuple[str, ...], other: str | None) -> list[str]:
    return [n for n in shapes if _named(n, keys) and n != other]


def _complete(task: Task, shapes: dict) -> Task | str:
    """Detection with its output names filled in (by name, else by shape), or what is missing."""
    boxes = [task.boxes] if task.boxes else _find(shapes, BOX_NAMES, task.scores)
    if not task.boxes and not boxes:
        boxes = [n for n, s in shapes.items() if len(s) >= 2 and s[-1] == 4 and n != task.scores]
    found = []
    for b in boxes:
        scores = [task.scores] if task.scores else _find(shapes, SCORE_NAMES, b) or [n for n in shapes if n != b]
        found += [(b, s) for s in scores if b in shapes and s in shapes and _detection_problem(shapes[b], shapes[s]) is None]
    if len(found) == 1:
        return Task("detection", *found[0], task.box_format, task.min_score)
    named = [n for n in (task.boxes, task.scores) if n and n not in shapes]
    if named:
        return f"the model has no output named {', '.join(map(repr, named))}"
    if task.boxes and task.scores:
        return f"{task.boxes}/{task.scores}: {_detection_problem(shapes[task.boxes], shapes[task.scores])}"
    return ("no single pair of a box output (..., K, 4) and a score output (..., K) or (..., K, C)" if not found
            else f"several box/score pairs fit ({', '.join(f'{b}/{s}' for b, s in found)})")


def misfit(task: Task, outputs: Shapes) -> str | None:
    """What makes ``task`` not fit the outputs, or None. Detection must name its outputs already."""
    shapes = dict(outputs)
    if task.name == "segmentation" and not any(is_segmentation(s) for s in shapes.values()):
        return "no output is (B, C, H, W) class logits with C > 1 and H, W > 1"
    if task.name == "detection":
        if not (task.boxes and task.scores):
            return "detection names no boxes and scores outputs"
        done = _complete(task, shapes)
        return done if isinstance(done, str) else None
    return None


def fit(task: Task | str, outputs: Shapes) -> Task:
    """``task`` checked against the outputs, detection's output names filled in; E-ARGS names what does not fit."""
    task = parse(task)
    shapes = dict(outputs)
    listed = ", ".join(f"{n} {tuple(s)}" for n, s in shapes.items())
    if task.name == "detection":
        done = _complete(task, shapes)
        if isinstance(done, str):
            raise _bad(f"--task detection does not fit the model's outputs ({listed}): {done}",
                       "name them: --task detection:boxes=NAME,scores=NAME (boxes (..., K, 4); scores (..., K) or (..., K, C)), "
                       "or choose another --task")
        return done
    problem = misfit(task, outputs)
    if problem:
        raise _bad(f"--task {task.name} does not fit the model's outputs ({listed}): {problem}",
                   "choose the task the outputs have (see `edgekit export --help`), or return such an output")
    return task


def infer(outputs: Shapes) -> Task | None:
    """The task the outputs make obvious, or None: detection when a box output and a score output are
    found by name (``BOX_NAMES``/``SCORE_NAMES``) and fit; else segmentation when an output follows
    ``is_segmentation``."""
    shapes = dict(outputs)
    if any(_named(n, BOX_NAMES) for n in shapes) and any(_named(n, SCORE_NAMES) for n in shapes):
        done = _complete(Task("detection"), shapes)
        if isinstance(done, Task):
            return done
    if any(is_segmentation(s) for s in shapes.values()):
        return Task("segmentation")
    return None


# ---- criteria ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskTolerance:
    """A task's pass criteria, derived from the target's Tolerance by ``task_tolerance``."""

    min_agreement: float  # per-pixel argmax, matched detections, detection class labels
    min_mean_iou: float  # detection: mean IoU of the matched boxes
    max_score_err_rel: float  # detection: max |score error| of matched boxes / max |reference score|
    max_rel_error: float  # regression, embedding: ||artifact - reference|| / ||reference||


def task_tolerance(tol: "Tolerance") -> TaskTolerance:
    """The rules: agreement 1 - (1 - min_top1) / 4, at most 0.999 (a pixel or a box flips far less often
    than a whole image's top-1; ties at class boundaries still flip); mean IoU 1 - max_abs_rel within
    [0.5, 0.999] (a box loses about as much IoU as its coordinates err relative to their range); score
    error the target's own max_abs_rel; relative error sqrt(2 (1 - min_cosine)) (the error orthogonal to
    the reference that the cosine bound allows, so a scale error the cosine cannot see is caught too)."""
    return TaskTolerance(min_agreement=min(0.999, 1 - (1 - tol.min_top1) / 4),
                         min_mean_iou=min(0.999, max(0.5, 1 - tol.max_abs_rel)),
                         max_score_err_rel=tol.max_abs_rel,
                         max_rel_error=math.sqrt(2 * max(0.0, 1 - tol.min_cosine)))


# ---- per-output metrics -----------------------------------------------------------------------

def pixel_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Fraction of pixels whose argmax class (axis -3 of (..., C, H, W)) is the same."""
    return float((np.argmax(ref, axis=-3) == np.argmax(got, axis=-3)).mean())


def relative_error(ref: np.ndarray, got: np.ndarray, per_sample: bool) -> float:
    """||got - ref|| / ||ref||: the worst sample (first axis), or over all samples together."""
    r = np.asarray(ref, np.float64).reshape(len(ref) if per_sample else 1, -1)
    e = np.asarray(got, np.float64).reshape(r.shape) - r
    num, den = np.linalg.norm(e, axis=1), np.linalg.norm(r, axis=1)
    rel = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, 0.0))
    return float(rel.max()) if rel.size else 0.0


# ---- detection --------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionMetrics:
    boxes: str
    scores: str
    images: int
    ref_boxes: int  # detections in the reference (score >= min_score)
    got_boxes: int  # detections in the artifact's outputs
    matched: int  # reference detections with an artifact box at IoU >= IOU_MATCH
    missing: int  # reference detections with no artifact box there (scoring at least min_score - score tolerance)
    extra: int  # artifact detections with no reference box there (same rule, the other way)
    mean_iou: float | None  # over the matched pairs
    min_iou: float | None
    score_max_abs: float  # max |score error| over the matched pairs (every class score when (K, C))
    score_ref_max: float  # max |reference score|: the scale the error is judged against
    label_agreement: float | None  # (K, C) scores: matched pairs with the same argmax class
    matcher: str  # "hungarian (scipy)" or "greedy"

    @property
    def matched_fraction(self) -> float:
        """Detections of either side that have their counterpart."""
        total = self.ref_boxes + self.got_boxes
        return 1 - (self.missing + self.extra) / total if total else 1.0

    @property
    def score_err_rel(self) -> float:
        if self.score_ref_max > 0:
            return self.score_max_abs / self.score_ref_max
        return 0.0 if self.score_max_abs == 0 else math.inf

    def to_dict(self) -> dict:
        return {**asdict(self), "matched_fraction": self.matched_fraction, "score_err_rel": self.score_err_rel}


def to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    """(..., 4) boxes as corners (x1, y1, x2, y2) with x1 <= x2, y1 <= y2."""
    b = np.asarray(boxes, np.float64)
    if fmt == "xywh":
        b = np.concatenate([b[..., :2], b[..., :2] + b[..., 2:]], axis=-1)
    elif fmt == "cxcywh":
        b = np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], axis=-1)
    lo, hi = np.minimum(b[..., :2], b[..., 2:]), np.maximum(b[..., :2], b[..., 2:])
    return np.concatenate([lo, hi], axis=-1)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box of ``a`` (M, 4) with every one of ``b`` (K, 4) -> (M, K); 1 for two equal empty boxes."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).prod(-1)
    union = area(a)[:, None] + area(b)[None, :] - inter
    same = (a[:, None, :] == b[None, :, :]).all(-1)
    with np.errstate(invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), same.astype(np.float64))
    return np.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0)  # a NaN or infinite box overlaps nothing


def match(iou: np.ndarray, threshold: float = IOU_MATCH) -> tuple[list[tuple[int, int]], str]:
    """Pairs (reference, artifact) with IoU >= threshold, one-to-one: Hungarian (scipy, the largest
    total IoU) when scipy is installed, else greedy (highest IoU first). -> (pairs, matcher)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        return _greedy(iou, threshold), "greedy"
    if iou.size == 0:
        return [], "hungarian (scipy)"
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= threshold], "hungarian (scipy)"


def _greedy(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    pairs, rows, cols = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = np.unravel_index(flat, iou.shape)
        if iou[r, c] < threshold:
            break
        if r not in rows and c not in cols:
            pairs.append((int(r), int(c)))
            rows.add(r)
            cols.add(c)
    return pairs


def _score(scores: np.ndarray) -> np.ndarray:
    return scores.max(-1) if scores.ndim == 2 else scores


def _detections(scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Indices of one image's boxes scoring >= threshold (None: all), at most MAX_BOXES (highest first)."""
    s = _score(scores)
    keep = np.arange(len(s)) if threshold is None else np.flatnonzero(s >= threshold)
    if len(keep) > MAX_BOXES:
        keep = keep[np.argsort(-s[keep], kind="stable")[:MAX_BOXES]]
    return keep


def _matched(boxes_a: np.ndarray, boxes_b: np.ndarray, a: np.ndarray, b: np.ndarray):
    iou = iou_matrix(boxes_a[a], boxes_b[b])
    pairs, matcher = match(iou)
    return [(a[i], b[j], iou[i, j]) for i, j in pairs], matcher


def detection_metrics(task: Task, boxes_ref: np.ndarray, boxes_got: np.ndarray,
                      scores_ref: np.ndarray, scores_got: np.ndarray, score_tol: float = 0.0) -> DetectionMetrics:
    """Match every image's reference detections with the artifact's (IoU >= IOU_MATCH) and compare the pairs.

    Arrays are stacked outputs: boxes (..., K, 4), scores (..., K) or (..., K, C); every leading axis
    is an image. With ``min_score``, a detection is missing (or extra) only when the other side has no
    box there scoring at least ``min_score - score_tol``: a score just across the threshold is a score
    error (judged as such), not a lost box."""
    k = boxes_ref.shape[-2]
    br, bg = (to_xyxy(b.reshape(-1, k, 4), task.box_format) for b in (boxes_ref, boxes_got))
    tail = scores_ref.shape[boxes_ref.ndim - 1:]
    sr, sg = (np.asarray(s, np.float64).reshape(-1, k, *tail) for s in (scores_ref, scores_got))
    wide = None if task.min_score is None else task.min_score - score_tol
    counts = np.zeros(4, int)  # ref detections, got detections, missing, extra
    ious, errs, labels, matcher = [], [0.0], [], "greedy"
    for i in range(len(br)):
        r, g = _detections(sr[i], task.min_score), _detections(sg[i], task.min_score)
        pairs, matcher = _matched(br[i], bg[i], r, _detections(sg[i], wide))
        back, _ = _matched(bg[i], br[i], g, _detections(sr[i], wide))
        counts += (len(r), len(g), len(r) - len(pairs), len(g) - len(back))
        for a, b, iou in pairs:
            ious.append(iou)
            err = float(np.abs(sr[i][a] - sg[i][b]).max())
            errs.append(err if math.isfinite(err) else math.inf)
            if tail:
                labels.append(np.argmax(sr[i][a]) == np.argmax(sg[i][b]))
    return DetectionMetrics(task.boxes, task.scores, len(br), *map(int, counts[:2]), len(ious), *map(int, counts[2:]),
                            float(np.mean(ious)) if ious else None, float(np.min(ious)) if ious else None,
                            max(errs), float(np.abs(sr).max()) if sr.size else 0.0,
                            float(np.mean(labels)) if labels else None, matcher)


def check_detection(d: DetectionMetrics, tt: TaskTolerance) -> list[str]:
    """The detection criteria this result misses, each as a readable sentence."""
    what = f"{d.boxes}/{d.scores}"
    fails = []
    if d.matched_fraction < tt.min_agreement:
        fails.append(f"{what}: {d.matched} of {d.ref_boxes} reference boxes matched (IoU >= {IOU_MATCH}), {d.missing} missing "
                     f"and {d.extra} extra of {d.got_boxes}: matched {d.matched_fraction:.2%} is below {tt.min_agreement:.1%}")
    if d.mean_iou is not None and d.mean_iou < tt.min_mean_iou:
        fails.append(f"{what}: mean IoU of matched boxes {d.mean_iou:.4f} is below {tt.min_mean_iou:.4g}")
    if not math.isfinite(d.score_max_abs) or d.score_err_rel > tt.max_score_err_rel:
        fails.append(f"{what}: max score error of matched boxes {d.score_max_abs:.3g} exceeds {tt.max_score_err_rel:g} x "
                     f"max|reference score| {d.score_ref_max:.3g}")
    if d.label_agreement is not None and d.label_agreement < tt.min_agreement:
        fails.append(f"{what}: class agreement of matched boxes {d.label_agreement:.2%} is below {tt.min_agreement:.1%}")
    return fails


def resolve(given: Task | str | None, spec_task: str, outputs: Shapes) -> tuple[Task, str | None]:
    """The task of an export: ``given`` fitted to the outputs; else the one ``infer`` finds when the
    model's spec says only classification or embedding (the defaults a derived spec gets); else the
    spec's own. -> (task, a note for the report when it was inferred)."""
    if given is not None:
        return fit(given, outputs), None
    found = infer(outputs) if spec_task in ("classification", "embedding") else None
    if found is None:
        return parse(spec_task), None
    return found, f"task {found} inferred from the outputs ({', '.join(n for n, _ in outputs)}); pass --task to choose another"
