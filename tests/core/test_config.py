"""Model configs: from the official dicts and by preset name; invalid ones say what is wrong."""

import pytest
from frame import VECTOR_CONFIGS

import fractalgen
from fractalgen.config import PRESETS, ConfigError


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
