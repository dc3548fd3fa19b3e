"""Property-based: every valid config builds, trains one step and samples; invalid ones say why."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fractalgen
from fractalgen.config import ConfigError, ModelConfig, config_and_presets


@st.composite
def valid_configs(draw):
    levels = draw(st.integers(1, 3))
    sizes = [1]
    for _ in range(levels):  # build the size chain bottom-up so each divides the previous
        sizes.insert(0, sizes[0] * draw(st.sampled_from([2, 3, 4])))
    if sizes[0] > 16:
        sizes[0] = sizes[1] * 2 if sizes[1] * 2 <= 16 else sizes[1]
        if sizes[0] == sizes[1]:
            sizes.pop(0)
    n = len(sizes)
    heads = [draw(st.sampled_from([1, 2])) for _ in range(n)]
    widths = [h * 4 * draw(st.integers(1, 3)) for h in heads]  # head dim a multiple of 4 (2-D rotary)
    channels = draw(st.integers(1, 3))
    return ModelConfig(
        img_sizes=tuple(sizes), widths=tuple(widths), blocks=tuple(draw(st.integers(0, 2)) for _ in range(n)),
        heads=tuple(heads), kinds=tuple(draw(st.sampled_from(["ar", "mar"])) for _ in range(n - 1)),
        channels=channels, num_classes=draw(st.integers(0, 3)), num_conds=draw(st.integers(1, 5)),
        guiding_pixel=draw(st.booleans()), pixel_mean=(0.5,) * channels, pixel_std=(0.5,) * channels,
        attn_dropout=0.0, proj_dropout=0.0,
    )


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=valid_configs(), seed=st.integers(0, 2**16))
def test_valid_configs_train_and_sample(cfg, seed):
    torch.manual_seed(seed)
    model = fractalgen.build(cfg)
    images = torch.randint(0, 256, (2, cfg.channels, cfg.img_size, cfg.img_size), dtype=torch.uint8)
    labels = torch.randint(0, max(cfg.num_classes, 1), (2,)) if cfg.num_classes else None
    loss = model.loss(images, labels)
    assert loss.isfinite()
    loss.backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
    out = fractalgen.sample(model, labels=labels, n=None if labels is not None else 2, cfg=2.0, seed=seed,
                            num_iter=(2,) * cfg.num_levels)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert fractalgen.bits_per_dim(model, images) > 0


INVALID = [
    (dict(img_sizes=(12, 5, 1)), "multiple"),
    (dict(img_sizes=(4, 4, 1)), "multiple"),
    (dict(img_sizes=(8,)), "at least two"),
    (dict(widths=(8, 8)), "entries"),
    (dict(kinds=("ar",)), "one entry per generator level"),
    (dict(kinds=("ar", "diffusion")), "unknown generator kind"),
    (dict(heads=(3, 2, 2)), "divisible"),
    (dict(widths=(6, 8, 8), heads=(1, 2, 2)), "multiple of 4"),
    (dict(channels=2), "pixel_mean"),
    (dict(num_conds=6), "num_conds"),
    (dict(num_classes=-1), "num_classes"),
    (dict(label_drop_prob=1.5), "label_drop_prob"),
    (dict(num_iter=(4,)), "num_iter"),
    (dict(cfg_schedule="cubic"), "cfg schedule"),
]


@pytest.mark.parametrize("change, message", INVALID)
def test_invalid_configs_rejected_at_construction(change, message):
    base = dict(img_sizes=(8, 2, 1), widths=(8, 8, 8), blocks=(1, 1, 1), heads=(2, 2, 2), kinds=("ar", "mar"),
                channels=1, pixel_mean=(0.5,), pixel_std=(0.5,))
    with pytest.raises(ConfigError, match=message):  # sampling settings: as an older config's fields carry them
        config_and_presets({**base, **change})
