"""Model configs: from the official dicts and by preset name; invalid ones say what is wrong."""

import pytest
import torch
from frame import VECTOR_CONFIGS

import fractalgen
from fractalgen.config import PRESETS, SAMPLING_PRESETS, ConfigError


def test_official_dict_config():
    cfg = fractalgen.get_config({**{k: v for k, v in VECTOR_CONFIGS["tiny_mar"].items() if "loss" not in k},
                                 "channels": 1})
    assert cfg.channels == 1 and cfg.kinds == ("mar", "mar") and cfg.num_conds == 5


@pytest.mark.parametrize("bad, message", [
    (dict(img_sizes=(16, 5, 1)), "multiple"),
    (dict(img_sizes=(16, 4, 2)), "last image size"),
    (dict(kinds=("ar", "gan")), "unknown generator kind"),
    (dict(heads=(3, 2, 2)), "divisible"),
    (dict(channels=0), "channels"),
])
def test_invalid_configs(bad, message):
    with pytest.raises(ConfigError, match=message):
        PRESETS["tiny_ar"].replace(**bad)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        fractalgen.build("fractalgan")


def test_sampling_presets_sit_beside_the_presets_and_become_the_recommendation():
    """A config holds the architecture only; a fresh model of a preset recommends the preset's sampling
    settings (the authors' published ones for the paper's models)."""
    assert set(SAMPLING_PRESETS) == set(PRESETS)
    assert not {"cfg", "temperature", "cfg_schedule", "num_iter"} & set(PRESETS["fractalmar_in64"].to_dict())
    with torch.device("meta"):
        official = fractalgen.build("fractalmar_base_in256")
    assert official.recommended == {"num_iter": (64, 16, 16), "cfg": 29.0, "temperature": 1.1}
    assert fractalgen.resolve_settings(official).to_dict() == {
        "cfg": 29.0, "cfg_schedule": "linear", "temperature": 1.1, "filter_threshold": 1e-4, "num_iter": [64, 16, 16]}
    tiny = fractalgen.build(PRESETS["mnist_mar"].replace(num_classes=4))  # a preset's shape, changed
    assert fractalgen.resolve_settings(tiny).num_iter == (16, 8) and tiny.recommended["cfg"] == 2.0
    assert fractalgen.build(PRESETS["mnist_mar"].replace(name="mine")).recommended == {}  # so the test can fail


def test_an_older_config_with_sampling_settings_still_builds():
    """Sampling settings in a config dict (as older configs carried them): the model's recommendation, and
    the config's old attributes read the preset's values with a warning."""
    fields = {**PRESETS["tiny_ar"].to_dict(), "name": "mine", "cfg": 3.0, "num_iter": [4, 4]}
    model = fractalgen.build(fields)
    assert model.recommended == {"cfg": 3.0, "num_iter": [4, 4]} and model.config.name == "mine"
    with pytest.warns(DeprecationWarning, match="sampling settings"):
        assert fractalgen.get_config(fields) == model.config
    with pytest.raises(ConfigError, match="'cfg'"):
        fractalgen.build({**fields, "cfg": "high"})
    with pytest.warns(DeprecationWarning, match="ModelConfig.cfg is deprecated"):
        assert PRESETS["mnist_ar"].cfg == 2.0
