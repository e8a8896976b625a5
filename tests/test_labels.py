"""Labelled data (edgekit.labels): one folder per class or a labels.csv, mapped to the model's
classes, classes interleaved for the calibration/held-out split; labelled accuracy (edgekit.accuracy)
of the FP32 model and of each exported file."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.accuracy import accuracy, top1
from edgekit.cli import main
from edgekit.data import load_samples, samples_from
from edgekit.errors import UserError
from edgekit.labels import round_robin
from edgekit.models import BUILTIN
from photos import photo_array

PHOTOS = Path(__file__).resolve().parents[1] / "calibration_data" / "images"


def _by_photo(dst: Path, rename=lambda photo: photo) -> Path:
    """The shipped photos, one folder per source photo (7 classes, 2 to 8 files each)."""
    for p in sorted(PHOTOS.glob("*.jpg")):
        d = dst / rename(p.stem.split("_")[1])
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, d / p.name)
    return dst


@pytest.fixture(scope="module")
def tiny():
    return BUILTIN["tiny_cnn"]()


def test_class_folders_label_in_imagefolder_order_and_interleave(tmp_path, tiny):
    data = load_samples(_by_photo(tmp_path / "d"), tiny.spec)
    classes = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert len(data) == 48 and data.labels is not None
    for src, y in zip(data.sources, data.labels):
        assert classes[y] == Path(src).parts[0]
    assert list(data.labels[:7]) == list(range(7))  # one of each class in turn
    held_out = set(data.labels[32:])
    assert len(held_out) >= 5, "the held-out third must mix classes, not hold the last folders only"
    assert "ImageFolder" in data.labels_note


def test_round_robin_keeps_each_class_in_order():
    assert round_robin([0, 0, 0, 1, 2, 2]) == [0, 3, 4, 1, 5, 2]


def test_folders_named_by_index_or_by_the_models_class_names(tmp_path, tiny):
    names = ("astronaut", "chelsea", "china", "coffee", "flower", "hubble", "rocket", "x", "y", "z")
    spec = replace(tiny.spec, labels=tuple(n.upper() for n in reversed(names)))
    data = load_samples(_by_photo(tmp_path / "names"), spec)
    for src, y in zip(data.sources, data.labels):
        assert spec.labels[y].lower() == Path(src).parts[0]
    idx = load_samples(_by_photo(tmp_path / "idx", lambda photo: str(names.index(photo) + 2)), tiny.spec)
    for src, y in zip(idx.sources, idx.labels):
        assert y == int(Path(src).parts[0])


def test_folders_that_are_not_classes_of_a_labelled_model_stay_unlabelled(tmp_path, tiny):
    spec = replace(tiny.spec, labels=tuple(f"class{i}" for i in range(10)))
    data = load_samples(_by_photo(tmp_path / "d"), spec)
    assert data.labels is None and "not classes of the model" in data.labels_note


def test_labels_csv(tmp_path, tiny):
    d = tmp_path / "flat"
    d.mkdir()
    files = sorted(PHOTOS.glob("*.jpg"))[:6]
    for p in files:
        shutil.copy(p, d / p.name)
    (d / "labels.csv").write_text("file,label\n" + "".join(f"{p.name},{i % 3}\n" for i, p in enumerate(files)))
    data = load_samples(d, tiny.spec)
    assert sorted(zip(data.sources, data.labels)) == sorted((p.name, i % 3) for i, p in enumerate(files))


@pytest.mark.parametrize("csv, what", [
    ("file,label\n00_astronaut_full.jpg,1\n", "no row"),
    ("file,label\n{all},banana\n", "classes the model does not have"),
    ("file,label\n{all}\n", "not `file,label`"),
    (b"file,label\n\xff\xfe\n", "UTF-8"),
])
def test_a_bad_labels_csv_is_a_coded_error(tmp_path, csv, what):
    d = tmp_path / "flat"
    d.mkdir()
    files = sorted(PHOTOS.glob("*.jpg"))[:2]
    for p in files:
        shutil.copy(p, d / p.name)
    if isinstance(csv, str):
        csv = csv.replace("{all}\n", "".join(f"{p.name}\n" for p in files)).replace("{all},banana\n", "".join(
            f"{p.name},banana\n" for p in files)).encode()
    (d / "labels.csv").write_bytes(csv)
    spec = replace(BUILTIN["tiny_cnn"]().spec, labels=tuple(f"c{i}" for i in range(10)))
    with pytest.raises(UserError) as e:
        load_samples(d, spec)
    assert e.value.code == "E-DATA-LABELS" and what in e.value.what


def test_a_labels_csv_without_the_header_is_not_a_labels_table(tmp_path, tiny):
    d = tmp_path / "flat"
    d.mkdir()
    shutil.copy(sorted(PHOTOS.glob("*.jpg"))[0], d / "a.jpg")
    (d / "labels.csv").write_text("name,class\nsomething,else\n")
    assert load_samples(d, tiny.spec).labels is None


def test_labels_outside_the_models_classes_are_refused_before_export(tmp_path, capsys):
    d = _by_photo(tmp_path / "d", lambda photo: {"astronaut": "12"}.get(photo, "1"))  # tiny_cnn has 10 classes
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--data", str(d), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "E-DATA-LABELS" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_xy_batches_label_in_memory_data(tiny):
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    data = samples_from([(x[:3], torch.tensor([1, 2, 3])), (x[3:], np.array([4, 5, 6]))], tiny.spec)
    assert data.labels == (1, 2, 3, 4, 5, 6)
    assert samples_from([(x[:3], np.array([0.5, 1, 2]))], tiny.spec).labels is None  # not whole numbers: ignored
    assert samples_from([x[:3]], tiny.spec).labels is None


def test_accuracy_scores_the_first_output(tiny):
    logits = np.zeros((4, 1, 10), np.float32)
    logits[np.arange(4), 0, [1, 2, 3, 4]] = 1
    worse = logits.copy()
    worse[3, 0, 9] = 2
    assert top1([logits], [1, 2, 3, 0]) == 0.75
    got = accuracy([logits], [worse], [1, 2, 3, 4], tiny.spec)
    assert got["fp32"] == 1.0 and got["artifact"] == 0.75 and got["drop_points"] == 25.0
    assert accuracy([logits], [worse], None, tiny.spec) is None


def test_an_export_on_class_folders_reports_accuracy_of_model_and_file(tmp_path, tiny):
    d = _by_photo(tmp_path / "d")
    assert main(["export", "tiny_cnn", "--targets", "onnx", "--data", str(d), "--samples", "16",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    import json

    report = json.loads((tmp_path / "b" / "report.json").read_text())
    acc = report["targets"]["onnx"]["accuracy"]
    data = load_samples(d, tiny.spec).head(16)
    with torch.no_grad():
        want = np.mean([int(tiny.module(torch.from_numpy(s[0])).argmax()) == y for s, y in zip(data.samples, data.labels)])
    assert acc["fp32"] == pytest.approx(want) and acc["artifact"] == pytest.approx(want) and acc["drop_points"] == 0
    assert any("one folder per class" in n for n in report["notes"])


def test_xy_labels_the_model_cannot_score_are_left_out_with_a_note(tmp_path):
    """The y of in-memory batches may be anything (here 0..9 for a 4-class model): not an error."""
    import edgekit
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4)).eval()
    x = torch.from_numpy(photo_array(PHOTOS.parent, 16, 10))
    b = edgekit.export(model, x[:1], targets="onnx", data=[(x, torch.arange(10))], out=tmp_path / "b")
    assert b.passed and "accuracy" not in b.results["onnx"].raw
    assert any("not used as labels" in n for n in b.report["notes"])
