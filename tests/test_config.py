import pytest

from edgekit.config import default_config_path, load_config
from edgekit.errors import UserError


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
