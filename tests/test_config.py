import dataclasses

import pytest

from edgekit.config import default_config_path, load_config
from edgekit.errors import UserError
from edgekit.job import ExportJob


def test_shipped_default_is_mobilenet_v2_on_all_targets():
    job = load_config(None)
    assert default_config_path().is_file()
    assert job.model == "mobilenet_v2" and job.targets == "all"


@pytest.mark.parametrize("text, needle", [
    ("[export]\nmodel = 'tiny_cnn'\ncolour = 'red'\n", "colour"),
    ("[export]\ntargets = 'all'\n", "no model"),
    ("[other]\nmodel = 'x'\n", "[export]"),
    ("[export\n", "TOML"),
])
def test_bad_configs_are_coded(tmp_path, text, needle):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(f)
    assert e.value.code == "E-CONFIG" and (needle in str(e.value) or needle == "TOML")


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "nope.toml")
    assert e.value.code == "E-CONFIG"


# ---- the [compress] table ----------------------------------------------------------------------

def _compress_file(tmp_path, body: str):
    f = tmp_path / "c.toml"
    f.write_text("[export]\nmodel = 'tiny_cnn'\n\n" + body)
    return f


def test_compress_table_parses_into_a_frozen_stage_config(tmp_path):
    from edgekit.compress.stage import CompressConfig
    from edgekit.config import load_compress

    f = _compress_file(tmp_path, """
[compress]
steps = ["prune", "heads", "lowrank", "distill", "qat_distill", "theseus"]
[compress.heads]
ffn_ratio = 0.25
head_ratio = 0.5
[compress.prune]
ratio = 0.4
importance = "taylor"
layer_ratios = [["stem.0", 0.2]]
[compress.lowrank]
param_ratio = 0.5
[compress.distill]
temperature = 2.0
feature_pairs = [["head.0", "head.0"]]
[compress.train]
epochs = 3
[compress.theseus]
stack = "layers"
successor_layers = 1
schedule = "linear"
""")
    cfg = load_compress(f)
    assert isinstance(cfg, CompressConfig) and cfg.steps == ("prune", "heads", "lowrank", "distill", "qat_distill", "theseus")
    assert cfg.heads.ffn_ratio == 0.25 and cfg.heads.head_ratio == 0.5
    assert cfg.prune.ratio == 0.4 and cfg.prune.layer_ratios == (("stem.0", 0.2),)
    assert cfg.lowrank.param_ratio == 0.5 and cfg.lowrank.energy is None
    assert cfg.distill.feature_pairs == (("head.0", "head.0"),) and cfg.train.epochs == 3
    assert cfg.qat is not None and cfg.theseus.stack == "layers" and cfg.theseus.theseus.schedule == "linear"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = ()


def test_shipped_compress_example_parses():
    from edgekit.config import load_compress

    cfg = load_compress(default_config_path().parent / "compress_tiny_cnn.toml")
    assert cfg.steps == ("prune", "distill") and cfg.prune.ratio == 0.3
    assert load_compress(default_config_path()) is None


@pytest.mark.parametrize("body, code, needle", [
    ("[compress]\nsteps = ['prune']\nspeed = 1\n[compress.prune]\nratio = 0.3\n", "E-CONFIG", "speed"),
    ("[compress]\nsteps = ['shrink']\n", "E-CONFIG", "shrink"),
    ("[compress]\nsteps = 'prune'\n", "E-CONFIG", "list"),
    ("[compress]\nsteps = ['prune']\n[compress.prune]\nratio = 0.3\ncolour = 1\n", "E-CONFIG", "colour"),
    ("[compress]\nsteps = ['prune']\n[compress.prune]\nratio = 0.3\n[compress.lowrank]\nenergy = 0.9\n", "E-CONFIG", "no step uses it"),
    ("[compress]\nsteps = ['prune']\n[compress.prune]\nratio = 'half'\n", "E-CONFIG", "wrong type"),
    ("[compress]\nsteps = ['prune']\n[compress.prune]\nratio = 1.5\n", "E-COMPRESS-CONFIG", "outside (0, 1)"),
    ("[compress]\nsteps = ['prune']\n", "E-COMPRESS-CONFIG", "[prune]"),
    ("[compress]\nsteps = ['theseus']\n[compress.theseus]\nsuccessor_layers = 1\n", "E-CONFIG", "stack"),
])
def test_bad_compress_tables_are_coded(tmp_path, body, code, needle):
    from edgekit.config import load_compress

    with pytest.raises(UserError) as e:
        load_compress(_compress_file(tmp_path, body))
    assert e.value.code == code and needle in str(e.value) and "c.toml" in str(e.value)


@pytest.mark.skipif("compress" not in {f.name for f in dataclasses.fields(ExportJob)},
                    reason="ExportJob has no compress field yet (pipeline hook pending)")
def test_load_config_attaches_the_compress_stage():
    job = load_config(default_config_path().parent / "compress_tiny_cnn.toml")
    assert job.model == "tiny_cnn" and job.compress.steps == ("prune", "distill")
