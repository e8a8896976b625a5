"""Two targets that write a file of the same name (two plug-in targets, real TorchScript files): the
second is refused with E-ARTIFACT-CLASH, the first target's file is not overwritten, and nothing a
target did not list ships in the bundle."""
from __future__ import annotations

import json
import textwrap

import pytest
from plugin_site import installed

PLUGIN = textwrap.dedent('''
    from pathlib import Path

    import numpy as np
    import torch

    from edgekit.converters.base import FP32_TOLERANCE, Artifact, Converter, TargetInfo


    class SameName(Converter):
        def __init__(self, name, scale):
            self.info = TargetInfo(name=name, title=name, suffix=".pt", precisions=("fp32",),
                                   tolerances={"fp32": FP32_TOLERANCE}, delegates=("cpu",), extra="-", modules=(),
                                   runtime_modules=("torch",), packages=("torch",), exporter="torch.jit.trace",
                                   runtime="torch.jit.load")
            self.scale = scale

        def export_fp32(self, model, spec, out_dir, example_inputs):
            class Scaled(torch.nn.Module):
                def __init__(self, inner, scale):
                    super().__init__()
                    self.inner, self.scale = inner, scale

                def forward(self, *x):
                    return self.inner(*x) * self.scale
            with torch.no_grad():
                torch.jit.trace(Scaled(model.eval(), self.scale), tuple(example_inputs)).save(str(Path(out_dir) / "model.pt"))
            (Path(out_dir) / "scratch.tmp").write_text("not listed: must not ship")
            return Artifact(self.info.name, "fp32", "model.pt", ("model.pt",), {})

        def runner(self, artifact, root, threads=1, strict=True):
            module = torch.jit.load(str(Path(root) / artifact.path))

            def run(inputs):
                with torch.no_grad():
                    return [module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]).numpy()]
            return run


    FIRST = SameName("clash-a", 1.0)   # exact
    SECOND = SameName("clash-b", 2.0)  # would overwrite clash-a's file with a wrong one
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    with installed(tmp_path / "site", monkeypatch, "clash_targets", {"__init__.py": PLUGIN},
                   {"clash_a": "clash_targets:FIRST", "clash_b": "clash_targets:SECOND"}) as site:
        yield site


def test_a_file_two_targets_write_is_refused_for_the_second(plugin, tmp_path):
    from edgekit.cli import main

    out = tmp_path / "b"
    assert main(["export", "tiny_cnn", "--targets", "clash-a,clash-b", "--samples", "4", "--out", str(out), "--quiet"]) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["clash-a"]["status"] == "pass"  # its file was not overwritten by clash-b's x2 model
    b = report["targets"]["clash-b"]
    assert b["status"] == "error" and b["error"]["code"] == "E-ARTIFACT-CLASH" and "clash-a" in b["error"]["message"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["target"] for a in manifest["artifacts"]] == ["clash-a"]
    assert not (out / "scratch.tmp").exists() and not [p for p in out.iterdir() if p.name.startswith(".export-")]
    assert main(["verify", str(out), "--quiet"]) == 0  # the shipped file is clash-a's
