"""Settings travel as one value: built once, checked by one validator at every door, handed down whole;
the old spellings (settings by position, `samples=`, fractalgen.generation) still work, with a warning."""
import argparse
import importlib
import json
import sys
import warnings

import pytest
import torch

import fractalgen
from fractalgen.cli.options import setting
from fractalgen.config import ConfigError, ModelConfig, config_and_presets
from fractalgen.formats.checks import CheckpointError, check_sampling
from fractalgen.settings import (
    SCHEDULE_NAMES,
    SamplingSettings,
    SettingsError,
    check_setting,
    resolve_settings,
)

torch.set_num_threads(1)


def tiny(kinds=("mar", "mar")):
    config = ModelConfig(img_sizes=(8, 2, 1), widths=(16,) * 3, blocks=(1,) * 3, heads=(2,) * 3, kinds=kinds,
                         channels=1, num_classes=10, num_conds=5 if "mar" in kinds else 1, attn_dropout=0.0,
                         proj_dropout=0.0, pixel_mean=(0.5,), pixel_std=(0.5,))
    torch.manual_seed(0)
    model = fractalgen.build(config).eval()
    model.recommended = {"cfg": 2.0, "num_iter": (2, 2)}
    return model


# Each (setting, value): accepted or refused alike by every door.
VALUES = [("cfg", 3.0, True), ("cfg", 2e4, False), ("cfg", -2e4, False), ("cfg", float("nan"), False),
          ("temperature", 0.0, False), ("temperature", 1.1, True), ("temperature", 2e4, False),
          ("filter_threshold", -0.1, False), ("filter_threshold", 0.0, True), ("filter_threshold", 1.5, False),
          ("cfg_schedule", "falling", True), ("cfg_schedule", "cubic", False),
          ("num_iter", [4, 2], True), ("num_iter", [0, 2], False), ("num_iter", [2], False)]


@pytest.mark.parametrize("name, value, ok", VALUES)
def test_one_validator_at_every_door(name, value, ok):
    model = tiny()
    base = SamplingSettings(2.0, "linear", 1.0, 1e-4, (2, 2))
    doors = {
        "library": lambda: resolve_settings(model, **{name: value}),
        "value": lambda: SamplingSettings(**{**base.to_dict(), name: value}) and check_setting(name, value, 2),
        # an older config carrying the setting beside its fields
        "config": lambda: config_and_presets({**model.config.to_dict(), name: value})
        if name != "filter_threshold" else check_setting(name, value, 2),
        "file": lambda: check_sampling({name: value}, "m.safetensors", model.config),
    }
    if name != "cfg_schedule" and value != [2]:  # the schedule flag is a `choices=` of the same list; a
        # flag cannot know the model's levels: resolve_settings checks the count once the model is loaded
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        doors["flag"] = lambda: setting(name)(text)
    errors = (SettingsError, ConfigError, CheckpointError, argparse.ArgumentTypeError)
    for call in doors.values():
        if ok:
            call()
        else:
            with pytest.raises(errors):
                call()


def test_one_list_of_schedule_names():
    from fractalgen import config
    from fractalgen.sampling import CFG_SCHEDULES

    assert SCHEDULE_NAMES == tuple(CFG_SCHEDULES) == config.CFG_SCHEDULES


def test_a_bad_setting_reads_alike_in_a_file_and_a_flag():
    with pytest.raises(SettingsError) as caught:
        check_setting("temperature", 0.0)
    assert (caught.value.setting, caught.value.wanted, caught.value.phrase) == ("temperature", "> 0", "a number > 0")
    with pytest.raises(argparse.ArgumentTypeError, match="^must be > 0, got 0$"):
        setting("temperature")("0")
    with pytest.raises(CheckpointError, match="field 'temperature' must be a number > 0, got 0"):
        check_sampling({"temperature": 0}, "m.safetensors", tiny().config)


def test_generate_takes_the_settings_whole():
    model = tiny()
    settings = resolve_settings(model, cfg=3.0, temperature=1.1)
    whole, _ = model.generate(labels=[1, 2], settings=settings, generator=torch.Generator().manual_seed(0))
    loose, _ = model.generate(labels=[1, 2], cfg=3.0, temperature=1.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(whole, loose)
    with pytest.raises(SettingsError):  # settings made for another model
        model.generate(labels=[1], settings=settings.replace(num_iter=(2, 2, 2)))


def test_sample_and_inpaint_take_settings_and_overrides_alike():
    model = tiny()
    settings = resolve_settings(model, cfg=3.0)
    a = fractalgen.sample(model, labels=[1, 2], settings=settings, seed=0)
    b = fractalgen.sample(model, labels=[1, 2], cfg=3.0, seed=0)
    c = fractalgen.sample(model, labels=[1, 2], settings=resolve_settings(model, cfg=5.0), cfg=3.0, seed=0)
    assert torch.equal(a, b) and torch.equal(a, c)  # a keyword overrides the value's setting
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    nothing = torch.zeros(8, 8, dtype=torch.bool)
    d = fractalgen.inpaint(model, images, nothing, labels=[1, 2], settings=settings, seed=0)
    assert torch.equal(a, d)


def test_old_spellings_work_with_a_warning():
    model = tiny()
    new = fractalgen.sample(model, [1, 2], None, cfg=3.0, cfg_schedule="constant", seed=0)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = fractalgen.sample(model, [1, 2], None, 3.0, "constant", None, None, None, 0)
    assert torch.equal(new, old)
    images = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    nothing = torch.zeros(8, 8, dtype=torch.bool)
    new = fractalgen.inpaint(model, images, nothing, 1, cfg=3.0, seed=0, n=2)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = fractalgen.inpaint(model, images, nothing, 1, 3.0, None, None, 0, 2)
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning, match="samples"):
        assert torch.equal(fractalgen.inpaint(model, images, nothing, 1, cfg=3.0, seed=0, samples=2), new)
    with pytest.warns(DeprecationWarning, match="by position"):
        assert resolve_settings(model, 3.0) == resolve_settings(model, cfg=3.0)
    with pytest.raises(TypeError, match="both"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            fractalgen.sample(model, [1], None, 3.0, cfg=2.0)


def test_old_module_name_imports_with_a_warning():
    sys.modules.pop("fractalgen.generation", None)
    with pytest.warns(DeprecationWarning, match="fractalgen.samples"):
        old = importlib.import_module("fractalgen.generation")
    from fractalgen.samples import sample

    assert old.sample is sample is fractalgen.sample


def test_a_folder_recommendation_is_what_sampling_resolves(tmp_path):
    model = tiny()
    folder = fractalgen.save_pretrained(model, tmp_path / "m", sampling={"cfg": 4.5, "temperature": 0.9})
    loaded = fractalgen.load(folder)
    assert loaded.recommended["cfg"] == 4.5
    assert json.loads((folder / "config.json").read_text())["sampling"]["cfg"] == 4.5
    assert resolve_settings(loaded).cfg == 4.5


def test_one_label_check_with_one_message():
    from fractalgen.codec import CodecError
    from fractalgen.conditional import ConditionalInputError
    from fractalgen.model import check_labels

    model = tiny()
    wording = "label 10 is out of range: the model has 10 classes, so labels are 0..9"
    images = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    calls = [(ValueError, lambda: model.generate(labels=[10], num_iter=(1, 1))),
             (ConditionalInputError, lambda: fractalgen.inpaint(model, images, torch.ones(8, 8, dtype=torch.bool),
                                                                labels=10)),
             (CodecError, lambda: fractalgen.compress(model, images, labels=[10])),
             (ValueError, lambda: fractalgen.nll_per_image(model, images, labels=[10])),
             (ValueError, lambda: check_labels(torch.tensor([3, 10]), 10))]
    for error, call in calls:
        with pytest.raises(error, match=wording):
            call()
    check_labels(torch.tensor([0, 9]), 10)


def test_one_name_for_how_many_and_for_overwrite(tmp_path, capsys):
    from fractalgen.cli import main

    model = tiny()
    fractalgen.save(model, tmp_path / "m.safetensors")
    from PIL import Image

    Image.fromarray(torch.zeros(8, 8, dtype=torch.uint8).numpy()).save(tmp_path / "d.png")
    for flag, out in (("--n", "a"), ("--samples", "b")):
        assert main(["inpaint", "--checkpoint", str(tmp_path / "m.safetensors"), "--image", str(tmp_path / "d.png"),
                     "--box", "0,4,8,8", flag, "2", "--num-iter", "1,1", "--out", str(tmp_path / out),
                     "--threads", "1"]) == 0
        assert len(list((tmp_path / out).glob("d_inpaint_?.png"))) == 2
    assert "--samples is deprecated" in capsys.readouterr().err
    for flag in ("--overwrite", "--force"):
        assert main(["export", "--checkpoint", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "f"),
                     flag]) == 0
    assert "--force is deprecated" in capsys.readouterr().err


def test_ar_dropouts_are_config_fields_written_only_when_changed():
    from fractalgen.config import AR_ATTN_DROPOUT, AR_RESIDUAL_DROPOUT, PRESETS

    config = PRESETS["tiny_ar"]
    assert (config.ar_residual_dropout, config.ar_attn_dropout) == (AR_RESIDUAL_DROPOUT, AR_ATTN_DROPOUT)
    assert "ar_residual_dropout" not in config.to_dict()  # files read as they did
    quiet = config.replace(ar_residual_dropout=0.0)
    assert ModelConfig.from_dict(quiet.to_dict()) == quiet
    block = fractalgen.build(quiet).levels[0].blocks[0]
    assert all(m.p == 0.0 for m in block.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ConfigError, match="ar_attn_dropout"):
        config.replace(ar_attn_dropout=1.0)
