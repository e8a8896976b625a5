"""Tasks beyond classification (edgekit.tasks): the metrics on hand-built arrays with known answers,
the inference rule and its coded errors, and real exports of a segmentation and a detection model
(defined here) through the API to onnx and tflite, judged by their task's metrics; a broken file
and broken outputs fail."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgekit
from edgekit.cli import main
from edgekit.converters.base import FP32_TOLERANCE, INT8_END_TO_END_TOLERANCE
from edgekit.errors import UserError
from edgekit.parity import compare
from edgekit.spec import ModelSpec, TensorSpec
from edgekit.tasks import (Task, detection_metrics, fit, infer, iou_matrix, match, parse, pixel_agreement,
                           relative_error, task_tolerance, to_xyxy)

# ---- metrics on hand-built arrays -------------------------------------------------------------


def _boxes(n_images=3, k=4, seed=0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 100, (n_images, 1, k, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(20, 40, corner.shape)], -1)
    return boxes, rng.uniform(0.2, 1.0, (n_images, 1, k))


DET = Task("detection", "boxes", "scores")


def test_iou_of_known_boxes():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [10, 10, 0, 0]], float)
    iou = iou_matrix(to_xyxy(a, "xyxy"), to_xyxy(b, "xyxy"))
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0, 1.0])  # corners in any order are the same box
    assert to_xyxy(np.array([5.0, 5, 10, 10]), "cxcywh").tolist() == [0, 0, 10, 10]
    assert to_xyxy(np.array([1.0, 2, 3, 4]), "xywh").tolist() == [1, 2, 4, 6]


def test_matching_is_one_to_one_and_drops_low_iou_pairs():
    iou = np.array([[0.9, 0.6], [0.8, 0.1], [0.0, 0.2]])
    pairs, matcher = match(iou)
    assert matcher in ("hungarian (scipy)", "greedy")
    assert sorted(pairs) == [(0, 1), (1, 0)]  # the best total IoU; row 2 has no partner >= 0.5
    from edgekit.tasks import _greedy

    assert _greedy(iou, 0.5) == [(0, 0)]  # greedy takes 0.9 first; the others fall below 0.5


def test_a_shifted_reordered_box_set_still_matches():
    boxes, scores = _boxes()
    got = boxes[:, :, ::-1] + 0.3  # other order, every coordinate shifted by 0.3 (about 1% of a box side)
    d = detection_metrics(DET, boxes, got, scores, scores[:, :, ::-1])
    assert (d.ref_boxes, d.got_boxes, d.matched, d.missing, d.extra) == (12, 12, 12, 0, 0)
    assert 0.95 < d.mean_iou < 1 and d.score_max_abs == 0
    res = compare("t", "int8", [boxes, scores], [got, scores[:, :, ::-1]], ["boxes", "scores"], INT8_END_TO_END_TOLERANCE, DET)
    assert res.status == "pass", res.failures
    assert res.outputs[0].max_abs_rel > INT8_END_TO_END_TOLERANCE.max_abs_rel  # element by element it would have failed


def test_a_missing_box_fails_and_is_counted():
    boxes, scores = _boxes()
    got = boxes.copy()
    got[1, 0, 2] = [500, 500, 520, 520]  # one detection moved where no reference box is
    res = compare("t", "fp32", [boxes, scores], [got, scores], ["boxes", "scores"], FP32_TOLERANCE, DET)
    d = res.detection
    assert (d.matched, d.missing, d.extra) == (11, 1, 1) and d.mean_iou == pytest.approx(1.0)
    assert res.status == "fail" and "1 missing and 1 extra of 12" in res.failures[0]
    m = res.to_dict()["metrics"]
    assert m["matched_fraction"] == pytest.approx(11 / 12) and m["missing_boxes"] == 1
    # int8 allows 1 in 10 detections without its counterpart (task_tolerance): 1 of 12 passes, 2 fail
    assert compare("t", "int8", [boxes, scores], [got, scores], ["boxes", "scores"], INT8_END_TO_END_TOLERANCE, DET).passed
    got[2, 0, 0] = [600, 600, 620, 620]
    res = compare("t", "int8", [boxes, scores], [got, scores], ["boxes", "scores"], INT8_END_TO_END_TOLERANCE, DET)
    assert res.status == "fail" and res.detection.missing == 2


def test_quantized_boxes_within_their_steps_are_judged_in_steps():
    """A random-init detector's boxes are near-tied: int8 noise of a few output steps reorders them so
    IoU matching misses many, though every value is within the step bound (bench: yolos_tiny). As for
    any quantized output, within the steps passes; beyond them the detection criteria apply again."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([np.full((4, 1, 25, 2), 0.5), np.full((4, 1, 25, 2), 0.52)], -1) + rng.normal(0, 0.003, (4, 1, 25, 4))
    scores = rng.uniform(0.01, 0.03, (4, 1, 25))
    step = 0.001
    got_b = boxes + rng.integers(-8, 9, boxes.shape) * step
    got_s = scores + rng.integers(-8, 9, scores.shape) * step
    args = (["boxes", "scores"], INT8_END_TO_END_TOLERANCE, DET)
    res = compare("t", "int8", [boxes, scores], [got_b, got_s], *args, output_scales=[step, step])
    assert res.detection.matched_fraction < 0.9 and res.passed, res.failures  # 8 steps: within 32
    far = compare("t", "int8", [boxes, scores], [got_b * 1.5, got_s], *args, output_scales=[step, step])
    assert not far.passed and any("matched" in f for f in far.failures)
    assert not compare("t", "int8", [boxes, scores], [got_b, got_s], *args).passed  # no steps known: IoU rules


def test_nan_boxes_and_scores_fail_without_crashing():
    boxes, scores = _boxes()
    got_b, got_s = boxes.copy(), scores.copy()
    got_b[0, 0, 1] = np.nan
    got_s[1, 0, 0] = np.inf
    res = compare("t", "fp32", [boxes, scores], [got_b, got_s], ["boxes", "scores"], FP32_TOLERANCE, DET)
    assert res.status == "fail" and res.detection.missing == 1 and any("score error of matched boxes inf" in f for f in res.failures)
    json.dumps(res.to_dict())  # JSON-safe: inf written as a string


def test_min_score_decides_what_is_a_detection_and_score_error_is_judged():
    boxes, scores = _boxes()
    low = scores.copy()
    low[0, 0, 0] = 0.1  # below min_score in the artifact only: a missing detection
    task = Task("detection", "boxes", "scores", min_score=0.15)
    d = detection_metrics(task, boxes, boxes, scores, low)
    assert d.missing == 1 and d.extra == 0
    near = scores.copy()
    near[0, 0, 0] = 0.149  # just below min_score, within the score tolerance: a score error, not a lost box
    d = detection_metrics(task, boxes, boxes, np.maximum(scores, 0.16), near, score_tol=0.02)
    assert d.missing == 0 and d.extra == 0 and d.score_max_abs > 0
    res = compare("t", "fp32", [boxes, scores], [boxes, scores + 1e-3], ["boxes", "scores"], FP32_TOLERANCE, DET)
    assert res.status == "fail" and "score error" in res.failures[0]


def test_class_scores_give_label_agreement():
    boxes, _ = _boxes(k=3)
    logits = np.random.default_rng(1).normal(size=(3, 1, 3, 5))
    flipped = logits.copy()
    flipped[0, 0, 0] = -flipped[0, 0, 0]  # one box's class changes
    d = detection_metrics(DET, boxes, boxes, logits, flipped)
    assert d.label_agreement == pytest.approx(8 / 9)


def test_pixel_agreement_of_a_known_mask():
    ref = np.zeros((1, 1, 3, 4, 4))
    ref[0, 0, 1] = 1.0  # every pixel is class 1
    got = ref.copy()
    got[0, 0, 2, :2, :] = 2.0  # the top half says class 2
    assert pixel_agreement(ref, got) == 0.5
    res = compare("t", "fp32", [ref], [ref + 1e-9], ["mask"], FP32_TOLERANCE, Task("segmentation"))
    assert res.status == "pass" and res.outputs[0].pixel_agreement == 1.0 and res.outputs[0].top1_agreement is None
    res = compare("t", "int8", [ref], [got], ["mask"], INT8_END_TO_END_TOLERANCE, Task("segmentation"))
    assert res.status == "fail" and any("per-pixel argmax agreement 50.000%" in f for f in res.failures)


def test_regression_and_embedding_use_relative_error_not_top1():
    ref = np.array([[[1.0]], [[2.0]], [[1e-9]]])
    got = ref.copy()
    got[2] = -1e-9  # a near-zero regression value changes sign: not a failure of a regression
    res = compare("t", "fp32", [ref], [got], ["y"], FP32_TOLERANCE, Task("regression"))
    assert res.status == "pass" and res.outputs[0].top1_agreement is None and res.outputs[0].rel_error < 1e-8
    scaled = compare("t", "int8", [ref], [ref * 1.3], ["y"], INT8_END_TO_END_TOLERANCE, Task("regression"))
    assert scaled.status == "fail" and any("relative error 0.3" in f for f in scaled.failures)
    emb = np.random.default_rng(0).normal(size=(4, 1, 8))
    assert relative_error(emb, emb * 1.01, per_sample=True) == pytest.approx(0.01)
    assert compare("t", "fp32", [emb], [emb], ["e"], FP32_TOLERANCE, Task("embedding")).outputs[0].rel_error == 0


def test_task_tolerances_derive_from_the_target_tolerance():
    fp32, int8 = task_tolerance(FP32_TOLERANCE), task_tolerance(INT8_END_TO_END_TOLERANCE)
    assert (fp32.min_agreement, fp32.min_mean_iou, fp32.max_score_err_rel) == (0.999, 0.999, 1e-4)
    assert (int8.min_agreement, int8.min_mean_iou) == (0.9, pytest.approx(0.85))
    assert fp32.max_rel_error == pytest.approx(0.01414, abs=1e-4) and int8.max_rel_error == pytest.approx(0.2)


# ---- parsing, inference, coded errors ---------------------------------------------------------

def test_parse_and_canonical_string():
    t = parse(" detection:boxes=pred_boxes, scores=pred_logits,format=cxcywh,min_score=0.5")
    assert t == Task("detection", "pred_boxes", "pred_logits", "cxcywh", 0.5)
    assert parse(str(t)) == t and str(Task("segmentation")) == "segmentation"


@pytest.mark.parametrize("text, words", [
    ("segmentaton", "unknown task 'segmentaton'"),
    ("detection:box=a", "task option 'box=a'"),
    ("detection:format=yolo", "format='yolo'"),
    ("detection:min_score=high", "min_score='high'"),
    ("regression:boxes=a", "takes no options"),
    ("", "not a task name"),
])
def test_malformed_tasks_are_coded_errors(text, words):
    with pytest.raises(UserError) as exc:
        parse(text)
    assert exc.value.code == "E-ARGS" and words in exc.value.what and exc.value.fix


def test_inference_rule():
    assert infer([("out", (1, 5, 16, 16))]) == Task("segmentation")
    assert infer([("out", (1, 1, 16, 16))]) is None  # one channel: a mask or a depth map, not class logits
    assert infer([("out", (1, 5, 1, 1))]) is None and infer([("logits", (1, 10))]) is None
    assert infer([("pred_logits", (1, 9, 3)), ("pred_boxes", (1, 9, 4))]) == Task("detection", "pred_boxes", "pred_logits")
    assert infer([("boxes", (1, 9, 4)), ("scores", (1, 8))]) is None  # 9 boxes, 8 scores: not a detection


def test_a_task_that_does_not_fit_the_outputs_is_a_coded_error():
    outs = [("logits", (1, 10))]
    with pytest.raises(UserError) as exc:
        fit("detection", outs)
    assert exc.value.code == "E-ARGS" and "logits (1, 10)" in exc.value.what and "boxes=NAME" in exc.value.fix
    with pytest.raises(UserError, match="no output is"):
        fit("segmentation", outs)
    with pytest.raises(UserError, match="no output named 'nope'"):
        fit("detection:boxes=nope,scores=logits", outs)
    assert fit("detection", [("a", (1, 6, 4)), ("b", (1, 6))]) == Task("detection", "a", "b")  # found by shape


def test_a_manifest_spec_with_a_bad_task_is_refused():
    spec = ModelSpec("m", (TensorSpec("x", (1, 3)),), (TensorSpec("y", (1, 4)),))
    d = spec.to_dict()
    for task, options in (("detection", {"boxes": "y", "scores": "y"}), ("bogus", {}), ("detection", {"evil": 1})):
        with pytest.raises(ValueError):
            ModelSpec.from_dict({**d, "task": task, "task_options": options})


# ---- real exports -----------------------------------------------------------------------------

class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))

    def forward(self, image):
        return self.body(image)  # (B, 4, H, W) class logits


class BoxHead(nn.Module):
    """A detection-like model: K=6 boxes (x1, y1, x2, y2) in pixels and a score per box, as a dict."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.boxes = nn.Linear(8, 6 * 4)
        self.scores = nn.Linear(8, 6)

    def forward(self, image):
        h = F.relu(self.conv(image)).mean((2, 3))
        raw = torch.sigmoid(self.boxes(h)).view(-1, 6, 2, 2)
        corner, size = raw[:, :, 0] * 24, 4 + raw[:, :, 1] * 8
        return {"boxes": torch.cat([corner, corner + size], -1), "scores": torch.sigmoid(self.scores(h))}


def _photos(n=6, size=32):
    """Real photos from calibration_data/images, resized and normalized: parity runs on real data."""
    from PIL import Image

    from edgekit.models import calibration_root

    files = sorted((calibration_root() / "images").glob("*.jpg"))[:n]
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size)), np.float32) / 255 for f in files]
    return ((np.stack(arrays) - 0.45) / 0.25).transpose(0, 3, 1, 2).astype(np.float32).copy()


def _model(cls):
    torch.manual_seed(0)
    return cls().eval()


EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("det") / "boxes"
    return edgekit.export(_model(BoxHead), EXAMPLE, targets=["onnx", "tflite"], data=_photos(), out=out)


def test_segmentation_is_inferred_and_judged_per_pixel(tmp_path):
    bundle = edgekit.export(_model(Segmenter), EXAMPLE, targets=["onnx", "tflite"], data=_photos(), out=tmp_path / "seg")
    assert bundle.passed, {k: r.failures for k, r in bundle.results.items()}
    spec = bundle.manifest["model"]["spec"]
    assert spec["task"] == "segmentation" and spec["task_options"] == {}
    for r in bundle.results.values():
        assert r.metrics["pixel_agreement"] == 1.0 and r.metrics["top1_agreement"] is None
        assert r.raw["task"] == "segmentation" and r.raw["task_tolerance"]["min_agreement"] == 0.999
    assert any("task segmentation inferred" in n for n in bundle.report["notes"])
    md = (bundle.path / "report.md").read_text()
    assert "task metrics |" in md and "pixels 100.000%" in md
    assert "pixels 100.000%" in (bundle.path / "report.html").read_text()
    again = edgekit.verify(bundle.path)  # verify reads the task from the manifest
    assert again.passed and again.results["onnx"].metrics["pixel_agreement"] == 1.0


def test_detection_is_inferred_and_matched(det_bundle):
    assert det_bundle.passed, {k: r.failures for k, r in det_bundle.results.items()}
    spec = det_bundle.manifest["model"]["spec"]
    assert spec["task"] == "detection" and spec["task_options"] == {"boxes": "boxes", "scores": "scores"}
    for r in det_bundle.results.values():
        d = r.raw["detection"]
        assert d["ref_boxes"] == d["matched"] == 6 * 6 and d["mean_iou"] > 0.999 and r.metrics["matched_fraction"] == 1.0
    assert "boxes 100.0% matched, IoU 1.0000" in (det_bundle.path / "report.md").read_text()
    from edgekit.summary import summary_markdown

    assert "boxes 100.0% matched" in summary_markdown(det_bundle.report)


def test_broken_detection_outputs_fail(det_bundle):
    """The artifact's real outputs, one box moved off its object: the detection check fails and says so."""
    from edgekit import manifest as M

    x = _photos()
    boxes, scores = det_bundle.run("onnx", x)
    spec = M.read(det_bundle.path).spec
    with torch.no_grad():
        want = _model(BoxHead)(torch.from_numpy(x))
    ref = [want["boxes"].numpy()[:, None], want["scores"].numpy()[:, None]]
    got = [boxes[:, None].copy(), scores[:, None]]
    assert compare("onnx", "fp32", ref, got, spec.output_names, FP32_TOLERANCE, spec.task_spec).status == "pass"
    got[0][2, 0, 1] += 30.0
    res = compare("onnx", "fp32", ref, got, spec.output_names, FP32_TOLERANCE, spec.task_spec)
    assert res.status == "fail" and res.detection.missing == 1 and "1 missing and 1 extra" in res.failures[0]


def test_a_perturbed_artifact_fails_verify_on_its_task_metric(det_bundle, tmp_path):
    from artifact_edit import perturb_tensor

    from edgekit import bundle as B

    copy = tmp_path / "b"
    shutil.copytree(det_bundle.path, copy)
    art = next(a for a in B.read_manifest(copy)["artifacts"] if a["target"] == "onnx")
    bias = _model(BoxHead).scores.bias.detach().numpy()
    perturb_tensor([copy / f["path"] for f in art["files"]], bias, index=2, delta=0.5)  # one box's score is wrong
    v = edgekit.verify(copy)
    assert v.results["tflite"].passed and v.results["onnx"].status == "fail"
    assert any("max score error" in f for f in v.results["onnx"].failures)


def test_explicit_task_and_coded_errors_through_api_and_cli(tmp_path, capsys):
    bundle = edgekit.export(_model(Segmenter), EXAMPLE, targets="onnx", data=_photos(3), out=tmp_path / "emb", task="embedding")
    r = bundle.results["onnx"]
    assert bundle.passed and r.raw["task"] == "embedding" and r.metrics["rel_error"] < 1e-5 and "pixel_agreement" not in r.metrics
    with pytest.raises(UserError) as exc:
        edgekit.export(_model(Segmenter), EXAMPLE, targets="onnx", data=_photos(3), out=tmp_path / "x", task="detection")
    assert exc.value.code == "E-ARGS" and "does not fit" in exc.value.what
    with pytest.raises(UserError, match="unknown task"):
        edgekit.export(_model(Segmenter), EXAMPLE, targets="onnx", out=tmp_path / "x", task="segment")
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--task", "segmentation", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("E-ARGS: --task segmentation does not fit") and "logits (1, 10)" in err
    cfg = tmp_path / "run.toml"
    cfg.write_text('[export]\nmodel = "tiny_cnn"\ntargets = ["onnx"]\ntask = "regresion"\n')
    assert main(["run", str(cfg), "--quiet"]) == 2 and "E-CONFIG" in capsys.readouterr().err
    cfg.write_text('[export]\nmodel = "tiny_cnn"\ntargets = ["onnx"]\n')
    assert main(["run", str(cfg), "--task", "detection", "--quiet"]) == 2 and "E-ARGS: --task detection" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
