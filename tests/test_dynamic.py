"""Dynamic shapes (edgekit.dynamic, edgekit.size_probes): the --dynamic notation and torch.export's,
ranges kept in the spec and manifest, real photos rebuilt at other sizes, every artifact judged at
the bounds and middle of its ranges (and caught when it honours only the example's size), and coded
refusals for targets and precisions with fixed shapes only."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

import edgekit
from edgekit import bundle as B
from edgekit import dynamic
from edgekit.cli import main
from edgekit.errors import UserError
from edgekit.spec import ModelSpec, TensorSpec
from photos import photo_array

SIZE = 32


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, image):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.conv(image)), 1).flatten(1))


@pytest.fixture(scope="module")
def photos(calib_root):
    return photo_array(calib_root, SIZE, 12)


def _model():
    torch.manual_seed(0)
    return Net().eval()


def coded(fn, code: str) -> UserError:
    with pytest.raises(UserError) as info:
        fn()
    assert info.value.code == code, info.value
    return info.value


# --- the notation --------------------------------------------------------------------------------

def test_the_command_line_forms():
    names = ["input_ids", "attention_mask"]
    batch = dynamic.parse("batch=1..8", names)
    assert (batch.name, batch.min, batch.max, batch.axes) == ("batch", 1, 8, (("input_ids", 0), ("attention_mask", 0)))
    seq = dynamic.parse("seq:input_ids.1,attention_mask.1=8..128", names)
    assert (seq.name, seq.axes, seq.step) == ("seq", (("input_ids", 1), ("attention_mask", 1)), 1)
    side = dynamic.parse("x.2=160..320/32", ["x"])
    assert (side.name, side.min, side.max, side.step) == ("x_2", 160, 320, 32)
    assert side.sizes() == (160, 224, 320) and side.fits(192) and not side.fits(200) and not side.fits(352)


@pytest.mark.parametrize("text", ["batch=8..1", "x.2=10..20/3", "x=1..4", "x.2=1..", "batch=0..4", "x.2=1..4/0",
                                  "1bad:x.0=1..2", "x.0=1..99999999"])
def test_malformed_ranges_are_coded(text):
    coded(lambda: dynamic.parse(text, ["x"]), "E-DYNAMIC-SHAPES")


def test_torch_notation_with_a_shared_dim_and_a_multiple():
    seq = Dim("seq", min=4, max=64)
    dims = dynamic.from_torch({"ids": {1: seq}, "mask": {1: seq}, "x": {2: Dim("h", min=2, max=8) * 16}}, ["ids", "mask", "x"])
    assert dims == (dynamic.DynamicDim("seq", 4, 64, (("ids", 1), ("mask", 1))), dynamic.DynamicDim("h", 32, 128, (("x", 2),), 16))
    assert dynamic.from_torch(({0: Dim("b", max=4)}, None), ["a", "b"])[0].axes == (("a", 0),)
    coded(lambda: dynamic.from_torch({"y": {0: seq}}, ["x"]), "E-DYNAMIC-SHAPES")
    coded(lambda: dynamic.from_torch({"x": {0: Dim.AUTO}}, ["x"]), "E-DYNAMIC-SHAPES")
    coded(lambda: dynamic.from_torch({"x": {0: Dim("b")}}, ["x"]), "E-DYNAMIC-SHAPES")  # no upper bound: nothing to verify


def test_ranges_are_checked_against_the_model():
    example = (torch.zeros(1, 3, SIZE, SIZE),)
    coded(lambda: dynamic.resolve(["y.0=1..4"], ["image"], example), "E-DYNAMIC-SHAPES")  # no such input
    coded(lambda: dynamic.resolve(["image.4=1..4"], ["image"], example), "E-DYNAMIC-SHAPES")  # no such axis
    coded(lambda: dynamic.resolve(["image.2=64..128"], ["image"], example), "E-DYNAMIC-SHAPES")  # the example is 32
    coded(lambda: dynamic.resolve(["a:image.0=1..4", "b:image.0=1..2"], ["image"], example), "E-DYNAMIC-SHAPES")
    assert dynamic.resolve("batch=1..4", ["image"], example)[0].axes == (("image", 0),)


def test_the_spec_carries_the_ranges_and_a_manifest_cannot_smuggle_bad_ones():
    spec = ModelSpec("m", (TensorSpec("x", (1, 3, 32, 32)),), (TensorSpec("y", (1, 5)),),
                     dynamic=(dynamic.parse("batch=1..4", ["x"]), dynamic.parse("x.2=16..64/16", ["x"])))
    d = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(d) == spec
    for bad in ([{"name": "b", "min": 1, "max": 4, "axes": [{"input": "nope", "axis": 0}]}],
                [{"name": "b", "min": 5, "max": 4, "axes": [{"input": "x", "axis": 0}]}],
                [{"name": "b", "min": 1, "max": 4, "axes": [{"input": "x", "axis": 9}]}],
                [{"name": "__import__('os')", "min": 1, "max": 4, "axes": [{"input": "x", "axis": 0}]}],
                {"name": "b"}, [{"name": "b"}]):
        with pytest.raises(ValueError):
            ModelSpec.from_dict({**d, "dynamic": bad})


def test_probes_are_real_samples_at_other_sizes(photos):
    dims = (dynamic.parse("batch=1..4", ["image", "ids"]), dynamic.parse("ids.1=2..12", ["image", "ids"]),
            dynamic.parse("image.2=16..64/16", ["image", "ids"]))
    ids = [np.arange(8, dtype=np.int64)[None] + k for k in range(len(photos))]
    samples = [(photos[k:k + 1], ids[k]) for k in range(len(photos))]
    image, tokens = dynamic.probe(dims, ["image", "ids"], samples, {"batch": 3, "ids_1": 12, "image_2": 64}, 2)
    assert image.shape == (3, 3, 64, SIZE) and tokens.shape == (3, 12)
    assert np.array_equal(tokens[:, :8], np.concatenate(ids[2:5])) and not tokens[:, 8:].any()  # padded with 0
    up = image[0, :, ::2]  # every other row of a 2x bilinear upsampling lies between the photo's rows
    assert np.abs(up - photos[2]).max() < np.abs(photos[2]).max() and np.corrcoef(up.ravel(), photos[2].ravel())[0, 1] > 0.95
    image, tokens = dynamic.probe(dims, ["image", "ids"], samples, {"batch": 1, "ids_1": 2, "image_2": 16}, 0)
    assert image.shape == (1, 3, 16, SIZE) and np.array_equal(tokens, ids[0][:, :2])
    assert dynamic.export_example(dims[:1], ["image", "ids"], samples)[0].shape[0] == 2  # never 1: torch specializes it


def test_runner_shape_check():
    meta = dynamic.meta((dynamic.parse("batch=1..4", ["x"]),))
    assert dynamic.shape_problem(meta, "x", (1, 3, 8), (4, 3, 8)) is None
    assert "1..4" in dynamic.shape_problem(meta, "x", (1, 3, 8), (5, 3, 8))
    assert dynamic.shape_problem(meta, "x", (1, 3, 8), (2, 3, 9)) is not None
    assert dynamic.shape_problem({}, "x", (1, 3, 8), (2, 3, 8)) is not None


# --- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dyn_bundle(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("dyn") / "net"
    bundle = edgekit.export(_model(), torch.from_numpy(photos[:1]), targets=["onnx", "executorch"], data=photos[:, None],
                            samples=4, out=out,
                            dynamic_shapes={"image": {0: Dim("batch", min=1, max=4), 2: Dim("h", min=1, max=3) * 16}})
    return bundle, out


def test_export_verifies_every_target_at_the_bounds_and_middle(dyn_bundle):
    bundle, out = dyn_bundle
    assert bundle.passed, bundle.report["targets"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [d["name"] for d in manifest["model"]["spec"]["dynamic"]] == ["batch", "h"]
    for target in ("onnx", "executorch"):
        d = bundle.report["targets"][target]["dynamic"]
        assert [r["sizes"] for r in d["sizes"]] == [{"batch": 1, "h": 16}, {"batch": 2, "h": 32}, {"batch": 4, "h": 48}]
        assert all(r["status"] == "pass" and r["max_abs"] < 1e-5 for r in d["sizes"]), d
    assert "## Dynamic shapes" in (out / "report.md").read_text()
    outs = bundle.run("onnx", np.repeat(np.zeros((1, 3, 48, SIZE), np.float32), 3, axis=0))
    assert outs[0].shape == (3, 5)
    again = edgekit.verify(out)
    assert again.passed and all(len(t["dynamic"]["sizes"]) == 3 for t in again.report["targets"].values())


def test_a_file_that_honours_only_the_example_size_is_caught(dyn_bundle, tmp_path, photos):
    """The probes can fail: the onnx file replaced by a fixed-shape export of the same model (its hash
    updated, as a careless converter would write it) passes at the example's size and errors at the others."""
    import shutil

    _, out = dyn_bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["target"] == "onnx")
    onnx_file = copy / entry["path"]
    torch.onnx.export(_model(), (torch.from_numpy(photos[:1]),), str(onnx_file), dynamo=True, input_names=["image"],
                      output_names=["output"], external_data=False)
    for f in entry["files"]:
        f["sha256"] = B.sha256_file(copy / f["path"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = edgekit.verify(copy, samples=4).report["targets"]
    assert report["executorch"]["status"] == "pass"
    onnx = report["onnx"]
    assert onnx["status"] == "error" and onnx["error"]["code"] == "E-DYNAMIC-SIZE", onnx
    assert onnx["metrics"]["max_abs"] < 1e-5  # right at the example's size: only the probes catch it
    assert [r["status"] for r in onnx["dynamic"]["sizes"]] == ["error", "error", "error"]


def test_targets_with_fixed_shapes_are_refused_or_reported(tmp_path, capsys):
    from edgekit.job import ExportJob
    from edgekit.plan import plan

    args = ["export", "tiny_cnn", "--out", str(tmp_path / "b"), "--quiet", "--dynamic", "batch=1..2"]
    assert main([*args, "--targets", "coreml"]) == 2
    assert "E-DYNAMIC-UNSUPPORTED" in capsys.readouterr().err
    assert main([*args, "--targets", "onnx", "--quant", "int8"]) == 2
    assert "E-DYNAMIC-UNSUPPORTED" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    convs, _, _, _, fixed = plan(ExportJob("tiny_cnn", dynamic_shapes=("batch=1..2",)))
    assert {c.info.name for c in convs} == {c.info.name for c in edgekit.converters.all_converters() if c.info.dynamic}
    assert fixed and all(r.status == "unsupported" and r.error["code"] == "E-DYNAMIC-UNSUPPORTED" for r in fixed)
    assert "coreml" in {r.target for r in fixed} and "ptl-nnapi" in {r.target for r in fixed}


def test_a_run_config_takes_the_same_ranges(tmp_path):
    from edgekit.config import load_config

    cfg = tmp_path / "job.toml"
    cfg.write_text('[export]\nmodel = "tiny_cnn"\ntargets = "onnx"\ndynamic_shapes = ["batch=1..2", "image.2=32..64/32"]\n')
    assert load_config(cfg).dynamic_shapes == ("batch=1..2", "image.2=32..64/32")
    cfg.write_text('[export]\nmodel = "tiny_cnn"\ndynamic_shapes = 3\n')
    coded(lambda: load_config(cfg), "E-CONFIG")


def test_a_program_saved_with_dynamic_shapes_keeps_its_ranges(tmp_path, photos):
    """A .pt2 captured with bounded Dims is exported with those ranges and verified at them; where a
    target takes fixed shapes only, it is exported at its example's size and the report says why;
    an axis without an upper bound cannot be verified, so it stays fixed, said too."""
    program = torch.export.export(_model(), (torch.from_numpy(photos[:2]),),
                                  dynamic_shapes=({0: Dim("batch", min=1, max=4), 3: Dim("w")},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    data = [photos[k:k + 2] for k in range(0, 12, 2)]
    b = edgekit.export(str(path), targets="onnx", data=data, out=tmp_path / "b")
    assert b.passed, b.report["targets"]
    assert [r["sizes"] for r in b.report["targets"]["onnx"]["dynamic"]["sizes"]] == [{"image_0": n} for n in (1, 2, 4)]
    assert any("image.3 have no upper bound" in n for n in b.report["notes"])
    both = edgekit.export(str(path), targets=["onnx", "coreml"], data=data, out=tmp_path / "c")
    assert "dynamic" not in both.report["targets"]["onnx"]
    assert any("coreml export(s) fixed shapes only" in n for n in both.report["notes"])
