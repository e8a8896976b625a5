"""A third-party target, defined here, joins edgekit through the `edgekit.targets` entry-point group
without touching edgekit: it shows up in the capability table, exports, and its file is verified in
its own runtime (TorchScript's interpreter) in the confined subprocess like every built-in target."""
from __future__ import annotations

import json
import textwrap

import pytest
from plugin_site import installed

PLUGIN = textwrap.dedent('''
    """A tiny real target: TorchScript (torch.jit.trace + freeze) run by torch.jit.load."""
    from pathlib import Path

    import numpy as np
    import torch

    from edgekit.converters.base import FP32_TOLERANCE, Artifact, Converter, TargetInfo


    class TorchScriptTarget(Converter):
        info = TargetInfo(name="torchscript-demo", title="TorchScript (demo plug-in)", suffix=".pt", precisions=("fp32",),
                          tolerances={"fp32": FP32_TOLERANCE}, delegates=("cpu",), extra="-", modules=(),
                          runtime_modules=("torch",), packages=("torch",), exporter="torch.jit.trace + freeze",
                          runtime="torch.jit.load")

        def export_fp32(self, model, spec, out_dir, example_inputs):
            path = Path(out_dir) / f"{spec.name}-fp32.pt"
            with torch.no_grad():
                torch.jit.freeze(torch.jit.trace(model.eval(), tuple(example_inputs))).save(str(path))
            return Artifact(self.info.name, "fp32", path.name, (path.name,), {})

        def runner(self, artifact, root, threads=1, strict=True):
            module = torch.jit.load(str(Path(root) / artifact.path))

            def run(inputs):
                with torch.no_grad():
                    out = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs])
                return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
            return run


    CONVERTER = TorchScriptTarget()
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    with installed(tmp_path / "site", monkeypatch, "mynpu_edgekit", {"__init__.py": "", "target.py": PLUGIN},
                   {"torchscript_demo": "mynpu_edgekit.target:CONVERTER"}) as site:
        yield site


def test_plugin_target_is_listed_exported_and_verified(plugin, tmp_path, capsys):
    from edgekit.cli import main
    from edgekit.converters import target_names

    assert target_names()[-1] == "torchscript-demo" and target_names()[0] == "tflite"
    assert main(["targets", "--json"]) == 0
    assert any(r["name"] == "torchscript-demo" for r in json.loads(capsys.readouterr().out))
    out = tmp_path / "b"
    assert main(["export", "tiny_cnn", "--targets", "torchscript-demo,onnx", "--samples", "4", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    t = report["targets"]["torchscript-demo"]
    assert t["status"] == "pass" and t["metrics"]["max_abs"] < 1e-5 and t["confinement"]["confined"] in (True, False)
    assert main(["verify", str(out), "--quiet"]) == 0


def test_a_broken_entry_point_is_a_coded_error(plugin, capsys):
    from edgekit.cli import main
    from edgekit.converters import refresh

    (plugin / "mynpu_edgekit-1.0.dist-info" / "entry_points.txt").write_text(
        "[edgekit.targets]\nbroken = mynpu_edgekit.missing:CONVERTER\n")
    refresh()
    assert main(["export", "tiny_cnn", "--targets", "broken", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("E-TARGET-UNKNOWN")
