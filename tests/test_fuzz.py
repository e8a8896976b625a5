"""Seeded fuzzing of every untrusted input (hypothesis generates the cases, derandomized so CI is
reproducible): manifest.json, the bundle's verify_inputs.npz, run configs (TOML) and data files.

Each case must end in exit 0, 1 or 2 (or, for the in-process readers, a result or a coded UserError):
never exit 3, never a traceback, and no file outside the bundle changes.
"""
from __future__ import annotations

import copy
import io
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.errors import UserError
from tiny_bundle import tiny_bundle as _shared

def fuzz(n: int):
    """Seeded (derandomized) cases, no example database, no deadline: CI runs the same cases each time."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Values an attacker or a broken tool puts where edgekit expects something else.
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["/etc/passwd", "../../../etc/passwd", "~/.ssh/id_rsa", "a/../../b", "x" * 5000, "", ".", "\x00"]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    # plausible but wrong: another target, precision or file of the bundle
    st.sampled_from(["fp16", "int8", "dynamic", "bogus", "tflite", "ptl", "ptl-nnapi", "ncnn", "executorch", "onnx",
                     "reference.pt2", "verify_inputs.npz", "manifest.json", "report.json", "tiny_cnn-fp32.onnx"]),
)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _shared(tmp_path_factory)


def _paths(obj, prefix=()):
    """Every (path, value) of a JSON document, containers included."""
    yield prefix, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _mutate(doc, data):
    """One structural mutation: delete a key, swap a value for an odd one, or drop a list item."""
    doc = copy.deepcopy(doc)
    spots = [p for p, _ in _paths(doc) if p]
    in_artifacts = [p for p in spots if p[0] == "artifacts"]  # where verify reads the most: drawn half the time
    path = data.draw(st.sampled_from(in_artifacts if in_artifacts and data.draw(st.booleans()) else spots))
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    how = data.draw(st.sampled_from(["delete", "swap", "swap"]))
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(ODD)
    return doc


def _bytes_mutation(raw: bytes, data) -> bytes:
    how = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    pos = data.draw(st.integers(0, max(len(raw) - 1, 0)))
    if how == "flip":
        return raw[:pos] + bytes([raw[pos] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[pos + 1:]
    if how == "truncate":
        return raw[:pos]
    return raw[:pos] + data.draw(st.binary(min_size=1, max_size=64)) + raw[pos:]


def _snapshot(folder, skip):
    """Size and mtime of every file under ``folder`` except those under ``skip``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() and skip not in p.parents}


# Only the fields `edgekit verify` reads: a mutation elsewhere would re-run a valid bundle (slow, and
# already covered by the clean-bundle tests).
READ_FIELDS = ("format", "format_version", "model", "reference", "verification_inputs", "artifacts")


@fuzz(120)
@given(data=st.data())
def test_fuzzed_manifest_never_crashes_verify(clean, tmp_path_factory, capsys, data):
    from edgekit.cli import main

    work = tmp_path_factory.mktemp("fz")
    bundle = work / "bundle"
    shutil.copytree(clean, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if data.draw(st.booleans()):
        rest = {k: v for k, v in manifest.items() if k not in READ_FIELDS}
        raw = json.dumps({**rest, **_mutate({k: manifest[k] for k in READ_FIELDS}, data)}).encode()
    else:
        raw = _bytes_mutation((bundle / "manifest.json").read_bytes(), data)
    (bundle / "manifest.json").write_bytes(raw)
    outside = _snapshot(work.parent, skip=bundle)
    rc = main(["verify", str(bundle), "--quiet", "--samples", "2", "--timeout", "120"])
    err = capsys.readouterr().err
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert _snapshot(work.parent, skip=bundle) == outside


# Every field `edgekit verify` reads, each swapped for values of the wrong type or meaning (a
# deterministic sweep beside the random mutations above: a random draw rarely hits one given field).
READ_PATHS = [
    ("format_version",), ("model",), ("model", "source"), ("model", "spec", "task"), ("model", "spec", "labels"),
    ("model", "spec", "preprocess"), ("model", "spec", "inputs", 0, "name"), ("model", "spec", "inputs", 0, "shape"),
    ("model", "spec", "inputs", 0, "dtype"), ("model", "spec", "inputs", 0, "layout"), ("model", "spec", "outputs", 0, "name"),
    ("model", "spec", "outputs", 0, "shape"), ("reference", "file"), ("reference", "sha256"), ("verification_inputs", "file"),
    ("verification_inputs", "file_sha256"), ("artifacts", 0), ("artifacts", 0, "target"), ("artifacts", 0, "precision"),
    ("artifacts", 0, "path"), ("artifacts", 0, "files"), ("artifacts", 0, "files", 0, "path"),
    ("artifacts", 0, "files", 0, "sha256"), ("artifacts", 0, "files", 0, "size_bytes"), ("artifacts", 0, "meta"),
    ("artifacts", 0, "meta", "output_scales"), ("artifacts", 0, "meta", "reference"), ("artifacts", 0, "meta", "quant_notes"),
]
DELETE = object()
SWAPS = [DELETE, None, 7, -1, 2**70, 1.5, "bogus", "", [], {}, [1, 2], "fp16", "onnx", "int8", "reference.pt2"]


def _set(doc, path, value):
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if value is DELETE:
        parent.pop(path[-1], None) if isinstance(parent, dict) else parent.pop(path[-1])
    else:
        parent[path[-1]] = value


@pytest.mark.parametrize("path", READ_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_every_read_field_swapped_never_crashes_verify(clean, tmp_path, capsys, path):
    from edgekit.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(clean, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for value in SWAPS:
        doc = copy.deepcopy(manifest)
        _set(doc, path, value)
        (bundle / "manifest.json").write_text(json.dumps(doc))
        rc = main(["verify", str(bundle), "--quiet", "--samples", "2", "--timeout", "120"])
        err = capsys.readouterr().err
        assert rc in (0, 1, 2) and "Traceback" not in err and "internal error" not in err, (value, err)


@fuzz(80)
@given(data=st.data())
def test_fuzzed_verify_inputs_are_read_or_refused(clean, tmp_path_factory, data):
    from edgekit import bundle as B
    from edgekit import manifest as M

    bundle = tmp_path_factory.mktemp("fz") / "bundle"
    shutil.copytree(clean, bundle)
    path = bundle / "verify_inputs.npz"
    raw = path.read_bytes()
    if data.draw(st.booleans()):  # a structurally valid npz with odd arrays
        buf = io.BytesIO()
        name = data.draw(st.sampled_from(["image", "input", "x"]))
        shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=5)))
        dtype = data.draw(st.sampled_from(["float32", "float64", "int64", "uint8", ">f4"]))
        np.savez(buf, **{name: np.zeros(shape, dtype)})
        raw = buf.getvalue()
    else:
        raw = _bytes_mutation(raw, data)
    path.write_bytes(raw)
    m = json.loads((bundle / "manifest.json").read_text())
    m["verification_inputs"]["file_sha256"] = B.sha256_file(path)  # past the hash check, into the parser
    (bundle / "manifest.json").write_text(json.dumps(m))
    try:
        calib = B.load_verify_inputs(M.read(bundle))
    except UserError as exc:
        assert exc.code in ("E-BUNDLE-INVALID", "E-DATA-VALUE")
    else:
        assert len(calib) >= 1


TOML_BASE = """[export]
model = "tiny_cnn"
targets = ["onnx", "tflite"]
samples = 4
timeout_s = 60.0
quant = "int8"
calibrator = "percentile"
percentile = 99.9
keep_float = ["classifier"]
equalize = false
"""
TOML_VALUES = st.one_of(
    st.sampled_from(['"four"', "-5", "1e400", "nan", "inf", "[1, 2]", "{a = 1}", "true", '""', "0",
                     "1000000000000", '"../../etc"', "[[1]]", '"all"', '"fp16"', '"int8"', '"nope"']),
    st.integers(-10, 10).map(str))


@fuzz(150)
@given(data=st.data())
def test_fuzzed_run_config_is_a_job_or_a_coded_error(tmp_path_factory, data):
    from edgekit.config import load_config
    from edgekit.plan import plan

    lines = TOML_BASE.splitlines()
    kind = data.draw(st.sampled_from(["value", "drop", "bytes", "key"]))
    i = data.draw(st.integers(1, len(lines) - 1))
    if kind == "value":
        lines[i] = lines[i].split("=")[0] + "= " + data.draw(TOML_VALUES)
    elif kind == "drop":
        del lines[i]
    elif kind == "key":
        lines.insert(i, data.draw(st.sampled_from(["compress = 1", "model = 2", "[compress]", "[other]", "x = 1"])))
    text = "\n".join(lines) + "\n"
    raw = _bytes_mutation(text.encode(), data) if kind == "bytes" else text.encode()
    cfg = tmp_path_factory.mktemp("cfg") / "job.toml"
    cfg.write_bytes(raw)
    try:
        plan(load_config(cfg))
    except UserError:
        pass


@fuzz(120)
@given(data=st.data())
def test_fuzzed_data_files_are_read_or_refused(tmp_path_factory, data):
    from PIL import Image

    from edgekit.data import load_samples
    from edgekit.models import BUILTIN

    spec = BUILTIN["tiny_cnn"]().spec
    folder = tmp_path_factory.mktemp("data")
    t = spec.inputs[0]
    kind = data.draw(st.sampled_from(["npy", "npz", "png", "mixed"]))
    if kind in ("npy", "mixed"):
        buf = io.BytesIO()
        np.save(buf, np.zeros(t.shape, t.dtype))
        (folder / "a.npy").write_bytes(_bytes_mutation(buf.getvalue(), data))
    if kind == "npz":
        buf = io.BytesIO()
        np.savez(buf, **{t.name: np.zeros(t.shape, t.dtype)})
        (folder / "a.npz").write_bytes(_bytes_mutation(buf.getvalue(), data))
    if kind in ("png", "mixed"):
        buf = io.BytesIO()
        Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(buf, "PNG")
        (folder / "a.png").write_bytes(_bytes_mutation(buf.getvalue(), data))
    try:
        samples = load_samples(folder, spec)
    except UserError as exc:
        assert exc.code.startswith("E-DATA")
    else:
        assert all(spec.inputs[0].check(s[0]) is None for s in samples.samples)
