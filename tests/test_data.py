import numpy as np
import pytest
from PIL import Image

from edgekit.data import load_samples, preprocess_image
from edgekit.errors import UserError
from edgekit.spec import ImagePreprocess, ModelSpec, TensorSpec

SPEC = ModelSpec("m", (TensorSpec("image", (1, 3, 32, 32), "float32", "NCHW"),), (TensorSpec("logits", (1, 10)),),
                 ImagePreprocess(36, 32))


def test_images_are_resized_cropped_normalised(image_dir):
    cs = load_samples(image_dir, SPEC)
    assert len(cs) == 3 and cs.kind == "image"
    assert [s[0].shape for s in cs.samples] == [(1, 3, 32, 32)] * 3
    assert list(cs.sources) == ["img0.png", "img1.png", "img2.png"]  # sorted, deterministic
    assert cs.sha256 == load_samples(image_dir, SPEC).sha256


def test_preprocessing_matches_hand_computation():
    img = Image.new("RGB", (72, 36), (255, 128, 0))  # resize 36 on the short side keeps it; crop 32
    x = preprocess_image(img, ImagePreprocess(36, 32))
    expected = (np.array([255, 128, 0]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert x.shape == (3, 32, 32)
    np.testing.assert_allclose(x[:, 16, 16], expected, rtol=1e-5)


def test_npy_samples_must_have_the_model_shape(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float32))
    assert len(load_samples(tmp_path, SPEC)) == 1
    np.save(tmp_path / "b.npy", np.zeros((3, 32, 32), np.float32))
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-SHAPE" and "b.npy" in str(e.value) and "(1, 3, 32, 32)" in str(e.value)


def test_npz_needs_input_names_and_nan_is_rejected(tmp_path):
    np.savez(tmp_path / "a.npz", wrong=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-SHAPE" and "image" in str(e.value)
    x = np.zeros((1, 3, 32, 32), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "a.npz", image=x)
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-VALUE"


def test_empty_missing_and_unreadable_data(tmp_path):
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-EMPTY"
    with pytest.raises(UserError) as e:
        load_samples(tmp_path / "nope", SPEC)
    assert e.value.code == "E-DATA-UNREADABLE"
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError) as e:
        load_samples(tmp_path, SPEC)
    assert e.value.code == "E-DATA-UNREADABLE" and "broken.jpg" in str(e.value)


def test_text_is_tokenized_to_fixed_length(tmp_path):
    from edgekit.models import BUILTIN

    spec = BUILTIN["tiny_transformer"]().spec
    (tmp_path / "s.txt").write_text("A cat sat on the mat.\n\nAnother, longer sentence about phones and models.\n")
    cs = load_samples(tmp_path, spec)
    assert len(cs) == 2 and cs.sources == ("s.txt:1", "s.txt:3")
    ids, mask = cs.samples[0]
    assert ids.shape == (1, 16) and ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids[0, 0] == 101 and mask[0].sum() < 16 and mask[0, -1] == 0  # [CLS] first, padding last
