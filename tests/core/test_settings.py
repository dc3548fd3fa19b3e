"""Sampling settings: one resolution (argument > the model's recommendation > the defaults),
used by every entry point, so the library and the command line draw the same images."""
import dataclasses

import numpy as np
import pytest
import torch
from frame import small_config, tiny_model
from PIL import Image

import fractalgen
from fractalgen.cli import main
from fractalgen.settings import DEFAULT_FILTER_THRESHOLD, SamplingSettings, SettingsError, resolve_settings


def tiny(kinds=("mar", "mar", "mar"), sizes=(8, 4, 2, 1), guiding=True, seed=0):
    model = tiny_model(small_config(sizes, kinds, guiding=guiding), seed, perturb=0.5)
    model.recommended = {"cfg": 2.0, "temperature": 1.0, "cfg_schedule": "linear", "num_iter": (4,) * (len(sizes) - 1)}
    return model


def test_precedence_argument_then_recommendation_then_preset():
    model = tiny()
    assert resolve_settings(model) == SamplingSettings(cfg=2.0, cfg_schedule="linear", temperature=1.0,
                                                       filter_threshold=DEFAULT_FILTER_THRESHOLD, num_iter=(4, 4, 4))
    model.recommended = {"cfg": 7.0, "num_iter": [3, 2, 1], "filter_threshold": 0.01}
    resolved = resolve_settings(model)
    assert (resolved.cfg, resolved.num_iter, resolved.filter_threshold) == (7.0, (3, 2, 1), 0.01)
    assert (resolved.temperature, resolved.cfg_schedule) == (1.0, "linear")  # not recommended: the defaults
    explicit = resolve_settings(model, cfg=1.5, num_iter=(5, 5, 5), temperature=0.9, cfg_schedule="constant",
                                filter_threshold=0.0)
    assert explicit == SamplingSettings(1.5, "constant", 0.9, 0.0, (5, 5, 5))
    for bad in ({"num_iter": (4,)}, {"temperature": 0.0}, {"cfg_schedule": "cubic"}, {"filter_threshold": -1.0}):
        with pytest.raises(SettingsError):
            resolve_settings(model, **bad)


def test_recommendation_travels_with_the_checkpoint(tmp_path):
    model = tiny()
    model.recommended = {"cfg": 4.0, "num_iter": [2, 2, 2]}
    fractalgen.save(model, tmp_path / "m.safetensors")  # defaults to the model's own recommendation
    loaded = fractalgen.load(tmp_path / "m.safetensors")
    assert loaded.recommended == {"cfg": 4.0, "num_iter": [2, 2, 2]}
    assert resolve_settings(loaded).num_iter == (2, 2, 2)
    assert fractalgen.build(model.config).recommended == {}  # a fresh model has none


def test_library_default_is_the_recommendation():
    model = tiny()
    model.recommended = {"cfg": 5.0, "temperature": 1.2, "num_iter": [2, 3, 2], "filter_threshold": 0.05}
    labels = [1, 2, 3]
    default = fractalgen.sample(model, labels=labels, seed=0)
    spelled = fractalgen.sample(model, labels=labels, seed=0, **vars(resolve_settings(model)))
    assert torch.equal(default, spelled)
    values, _ = model.generate(labels=labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default, values.round().clamp(0, 255).to(torch.uint8))  # model.generate resolves the same
    presets = fractalgen.sample(model, labels=labels, seed=0, cfg=2.0, temperature=1.0, num_iter=(4, 4, 4),
                                filter_threshold=1e-4)
    assert not torch.equal(default, presets)  # so the test can fail


@pytest.mark.parametrize("kinds, sizes, guiding", [(("mar", "mar", "mar"), (8, 4, 2, 1), True),
                                                   (("ar", "mar"), (8, 2, 1), False)])
def test_inpaint_with_nothing_known_is_sample(kinds, sizes, guiding):
    """With no settings at all: both take the checkpoint's recommendation (num_iter and filter included)."""
    model = tiny(kinds, sizes, guiding)
    model.recommended = {"cfg": 3.0, "num_iter": [2] * len(kinds), "filter_threshold": 0.2}
    s = model.config.img_size
    images = torch.randint(0, 256, (3, 1, s, s), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    nothing_known = torch.zeros(3, s, s, dtype=torch.bool)
    for labels in ([4, 0, 9], None):
        completed = fractalgen.inpaint(model, images, nothing_known, labels=labels, seed=11)
        sampled = fractalgen.sample(model, labels=labels, n=3, seed=11)
        assert torch.equal(completed, sampled)


def test_batch_i_is_seeded_seed_plus_i():
    model = tiny()
    labels = [0, 1, 2, 3, 4]
    batched = fractalgen.sample(model, labels=labels, seed=3, batch_size=2)
    pieces = [fractalgen.sample(model, labels=labels[i:i + 2], seed=3 + k, batch_size=None)
              for k, i in enumerate(range(0, 5, 2))]
    assert torch.equal(batched, torch.cat(pieces))


def read_samples(folder, n):
    files = sorted(folder.glob("0*.png"))
    assert len(files) == n
    return np.stack([np.asarray(Image.open(f)) for f in files])


def test_library_and_command_line_draw_the_same_images_from_the_bundled_model(tmp_path, capsys):
    """`fractalgen sample` with no flags but the classes, and fractalgen.sample with no settings."""
    assert main(["sample", "--classes", "3,7", "--out", str(tmp_path / "s"), "--threads", "1"]) == 0
    capsys.readouterr()
    model = fractalgen.load("mnist")
    library = fractalgen.sample(model, labels=[3, 7], seed=0)  # (2, 1, 28, 28)
    assert np.array_equal(read_samples(tmp_path / "s", 2), library[:, 0].numpy())
    preset = fractalgen.SAMPLING_PRESETS[model.config.name]
    assert resolve_settings(model).cfg == model.recommended["cfg"] != preset["cfg"]


def test_settings_are_frozen():
    settings = resolve_settings(tiny())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.cfg = 3.0


def test_library_leaves_torch_global_state_alone():
    """Seeded library calls draw from their own streams; threads are the command line's business."""
    model = tiny()
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    images = fractalgen.sample(model, labels=[1, 2], seed=0, num_iter=(2, 2, 2))
    first = fractalgen.nll_per_image(model, images, generator_seed=3)
    assert torch.equal(torch.get_rng_state(), state) and torch.get_num_threads() == threads
    assert torch.equal(first, fractalgen.nll_per_image(model, images, generator_seed=3))  # and stay reproducible
