"""Conditional pixel prediction (paper figure 4): inpainting keeps what is known and draws the rest from
the model's own conditional distribution.

Exactness: known pixels come back bit-identical for every level kind, depth, guiding pixel and
colour mode; a fully unknown mask is the ordinary sampler. Distribution: on models small enough
to enumerate (2x2 and 4x4 grayscale), the empirical distribution of the sampled pixels matches
the probabilities computed directly from the model's logits (chi-square goodness of fit), and
the same test rejects a wrong distribution, so it has the power to fail.
"""
import re

import numpy as np
import pytest
import torch
from frame import small_config, tiny_model
from PIL import Image
from scipy import stats

import fractalgen
from fractalgen import conditional
from fractalgen.cli import demo, main
from fractalgen.levels.base import patchify
from fractalgen.sampling import apply_temperature, guide


def tiny(sizes, kinds, channels=1, guiding=False, num_classes=10, seed=0, peaky=0.0):
    """A small seeded model with perturbed weights; `peaky` scales random pixel-head biases so the
    pixel distribution concentrates on a few values (a chi-square test then has power)."""
    model = tiny_model(small_config(sizes, kinds, channels, guiding, num_classes), seed, perturb=0.5)
    with torch.no_grad():
        for bias in model.pixel_head.logit_bias:
            bias.add_(peaky * torch.randn_like(bias))
    return model


def random_images(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.channels, model.config.img_size
    return torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8)


# ---- exactness -------------------------------------------------------------------------------------

MODELS = {  # every level kind, one to three levels, guiding pixel, RGB and grayscale
    "ar1_gray": {"sizes": (4, 1), "kinds": ("ar",)},
    "mar1_rgb": {"sizes": (4, 1), "kinds": ("mar",), "channels": 3},
    "ar2_rgb": {"sizes": (8, 2, 1), "kinds": ("ar", "ar"), "channels": 3},
    "mar2_gray": {"sizes": (8, 2, 1), "kinds": ("mar", "mar")},
    "ar_mar_gray": {"sizes": (8, 2, 1), "kinds": ("ar", "mar")},
    "mar_ar_rgb": {"sizes": (8, 2, 1), "kinds": ("mar", "ar"), "channels": 3},
    "mar3_guiding_rgb": {"sizes": (8, 4, 2, 1), "kinds": ("mar", "mar", "mar"), "channels": 3, "guiding": True},
    "mar3_guiding_gray": {"sizes": (8, 4, 2, 1), "kinds": ("mar", "mar", "mar"), "guiding": True},
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("guided", [False, True])
def test_known_pixels_come_back_bit_identical(name, guided):
    model = tiny(**MODELS[name])
    s, c = model.config.img_size, model.config.channels
    images = random_images(model, 3)
    g = torch.Generator().manual_seed(1)
    known = torch.stack([
        torch.rand(s, s, generator=g) < 0.5,  # scattered: most patches partially known at every level
        ~conditional.box_mask(s, (1, 1, s - 1, s - 1)),  # a hole not aligned with any patch grid
        conditional.top_rows_known(s, 0.5),  # aligned: whole patches
    ])
    labels = [1, 4, 7] if guided else None
    out = fractalgen.inpaint(model, images, known, labels=labels, cfg=3.0, seed=0, n=2)
    assert out.dtype == torch.uint8 and out.shape == (6, c, s, s)
    for i in range(3):
        for j in range(2):
            assert torch.equal(out[2 * i + j][:, known[i]], images[i][:, known[i]])
    assert not torch.equal(out[0::2], out[1::2])  # the two samples per image differ


def test_per_channel_known_values_are_copied():
    """A (N, C, H, W) mask: the pixel head copies the given channels and draws the others."""
    model = tiny(**MODELS["mar_ar_rgb"])
    images = random_images(model, 2)
    known = torch.rand(images.shape, generator=torch.Generator().manual_seed(2)) < 0.5
    out = fractalgen.inpaint(model, images, known, seed=3)
    assert torch.equal(out[known], images[known])


def test_fully_known_input_returns_unchanged_without_running_the_model(monkeypatch):
    model = tiny(**MODELS["mar2_gray"])
    images = random_images(model, 2)

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(model, "generate", refuse)
    out = fractalgen.inpaint(model, images, torch.ones(2, 8, 8, dtype=torch.bool), n=3)
    assert torch.equal(out, images.repeat_interleave(3, 0))


def test_only_images_with_unknown_pixels_are_generated(monkeypatch):
    model = tiny(**MODELS["ar2_rgb"])
    images = random_images(model, 3)
    known = torch.ones(3, 8, 8, dtype=torch.bool)
    known[1, 5:, :] = False
    batches = []
    original = model.generate

    def spy(**kwargs):
        batches.append(kwargs["n"])
        return original(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    out = fractalgen.inpaint(model, images, known, seed=0)
    assert batches == [1]
    assert torch.equal(out[[0, 2]], images[[0, 2]]) and torch.equal(out[1][:, :5], images[1][:, :5])


@pytest.mark.parametrize("name", ["ar2_rgb", "mar2_gray", "mar3_guiding_rgb", "ar_mar_gray"])
@pytest.mark.parametrize("labels", [None, [2, 8]])
def test_fully_unknown_mask_is_the_ordinary_sampler(name, labels):
    model = tiny(**MODELS[name])
    s = model.config.img_size
    settings = {"cfg": 2.5, "temperature": 1.1, "num_iter": (3,) * model.config.num_levels, "seed": 5}
    unknown = torch.zeros(2, s, s, dtype=torch.bool)
    completed = fractalgen.inpaint(model, random_images(model, 2), unknown, labels=labels, **settings)
    sampled = fractalgen.sample(model, labels=labels, n=2, **settings)
    assert torch.equal(completed, sampled)


@pytest.mark.parametrize("name", ["mar3_guiding_gray", "ar2_rgb", "ar_mar_gray"])
def test_partially_known_patches_go_down_with_their_known_pixels(name):
    """Each level generates exactly the squares that hold an unknown pixel (not rounded to whole
    patches), and hands every known pixel inside them to the next level; the pixel head
    receives exactly the unknown pixels."""
    model = tiny(**MODELS[name])
    s = model.config.img_size
    images = random_images(model, 2)
    known = torch.rand(2, s, s, generator=torch.Generator().manual_seed(4)) < 0.7
    seen = {}  # depth -> (squares generated, known values received)
    original = model._sample_level

    def spy(depth, ctx, conds, cfg, known_part):
        squares, given = seen.get(depth, (0, 0))
        seen[depth] = (squares + cfg.shape[0], given + int(known_part.mask.sum()))
        return original(depth, ctx, conds, cfg, known_part)

    model._sample_level = spy
    fractalgen.inpaint(model, images, known, seed=0)
    c = model.config.channels
    for depth, size in enumerate(model.config.img_sizes):
        blocks = patchify(known[:, None].float(), size).view(2, -1, size * size)  # (N, squares, size^2)
        partial = blocks.lt(1).any(-1)  # squares holding an unknown pixel
        assert seen[depth][0] == int(partial.sum())
        assert seen[depth][1] == c * int(blocks[partial].sum())
    assert seen[model.config.num_levels][0] == int((~known).sum())


# ---- distributions: the samplers draw from the model's own conditionals ----------------------------------

N_SAMPLES = 20000
ALPHA = 1e-3  # a correct sampler fails a seeded test with probability 1e-3 over seeds


def chi_square_p(values: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit of samples (n,) in 0..255 to probs (256,); bins expected below 5 are pooled."""
    counts = torch.bincount(values.long(), minlength=256).double()
    expected = probs.double() * counts.sum()
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # float rounding: scipy wants equal totals
    return stats.chisquare(obs.numpy(), exp.numpy()).pvalue


def assert_matches(values, probs, wrong):
    """values follow probs, and the test would have rejected the distribution `wrong`."""
    assert chi_square_p(values, probs) > ALPHA
    assert chi_square_p(values, wrong) < ALPHA


def pixel_probs(model, cond, temperature=1.0, cfg=None):
    """The pixel head's distribution of a grayscale pixel from its condition(s) (rows: cond, or cond + uncond)."""
    logits = model.pixel_head.logits(cond, torch.zeros(cond.shape[0], 1, dtype=torch.long))[:, 0]
    logits = apply_temperature(logits, temperature)
    if cfg is not None:
        logits = guide(logits, torch.tensor([cfg]), 1e-4)
    return torch.softmax(logits.double(), -1)[0]


@torch.no_grad()
def ar_condition(level, patches, cond, t):
    """Condition an AR level hands down for patch t given patches (R, N, C*p*p) before it."""
    return level.hidden(patches, cond)[:, t]


@pytest.mark.parametrize("temperature", [1.0, 1.5])
@torch.no_grad()
def test_unconditional_ar_sampling_draws_from_the_model(temperature):
    """2x2 grayscale, one AR level: the first pixel, and the second given a frequent first value."""
    model = tiny((2, 1), ("ar",), num_classes=0, peaky=3.0)
    level, null = model.levels[0], model.null_class
    images = fractalgen.sample(model, n=N_SAMPLES, temperature=temperature, seed=0).view(N_SAMPLES, 4)

    zeros = torch.zeros(1, 4, 1)
    p_first = pixel_probs(model, ar_condition(level, zeros, null, 0), temperature)
    wrong = pixel_probs(model, ar_condition(level, zeros, null, 0), temperature * 0.8)
    assert_matches(images[:, 0], p_first, wrong)

    v = int(torch.bincount(images[:, 0].long()).argmax())  # a frequent first value
    assert (images[:, 0] == v).sum() > 2000
    given = zeros.clone()
    given[0, 0] = v
    p_second = pixel_probs(model, ar_condition(level, given, null, 1), temperature)
    marginal_second = pixel_probs(model, ar_condition(level, zeros, null, 1), temperature)  # the wrong v (0)
    assert_matches(images[images[:, 0] == v, 1], p_second, marginal_second)


@pytest.mark.parametrize("guided", [False, True])
@torch.no_grad()
def test_ar_inpainting_draws_from_the_conditional(guided):
    """Known first row of a 2x2 image, class-conditional: the third pixel follows
    p(x2 | class, x0, x1), with classifier-free guidance combined as the pixel head does."""
    model = tiny((2, 1), ("ar",), peaky=3.0, seed=1)
    level = model.levels[0]
    image = torch.tensor([[[[40, 200], [0, 0]]]], dtype=torch.uint8)
    known = torch.tensor([[True, True], [False, False]])
    cfg = 3.0 if guided else 1.0
    out = fractalgen.inpaint(model, image, known, labels=3, cfg=cfg, cfg_schedule="constant", temperature=1.0,
                             seed=0, n=N_SAMPLES).view(N_SAMPLES, 4)
    assert (out[:, :2] == torch.tensor([40, 200], dtype=torch.uint8)).all()

    patches = patchify(image.float(), 1).expand(2, -1, -1)  # (2, 4, 1): the known pixels, for both halves
    cond = torch.cat([model.class_condition(torch.tensor([3]), 1), model.null_class])  # conditional, unconditional
    h = ar_condition(level, patches, cond, 2)
    p = pixel_probs(model, h if guided else h[:1], cfg=cfg if guided else None)
    wrong = pixel_probs(model, h[1:])  # the unconditional distribution
    assert_matches(out[:, 2], p, wrong)


@torch.no_grad()
def test_ar_inpainting_cannot_look_ahead():
    """Documented behaviour: with the known pixels AFTER the unknown one in raster order, an AR
    model draws the unknown pixel from its marginal, p(x0), ignoring the later known pixels."""
    model = tiny((2, 1), ("ar",), num_classes=0, peaky=3.0, seed=2)
    image = torch.tensor([[[[0, 250], [3, 77]]]], dtype=torch.uint8)
    known = torch.tensor([[False, True], [True, True]])
    out = fractalgen.inpaint(model, image, known, seed=0, n=N_SAMPLES, temperature=1.0)
    level = model.levels[0]
    p_marginal = pixel_probs(model, ar_condition(level, torch.zeros(1, 4, 1), model.null_class, 0))
    p_shifted = pixel_probs(model, ar_condition(level, patchify(image.float(), 1), model.null_class, 1))
    assert_matches(out[:, 0, 0, 0], p_marginal, p_shifted)


@torch.no_grad()
def condition_by_hand(model, x, row, col, label):
    """The pixel head's condition for pixel (row, col) of x (1, 1, S, S) when every other pixel is known."""
    cond = [model.class_condition(torch.tensor([label]), 1)]
    for level in model.levels:
        p, g = level.config.patch_size, level.config.grid
        t = (row // p) * g + col // p  # the square holding the unknown pixel at this level
        patches = patchify(x, p)  # (1, N, p*p)
        if level.config.kind == "ar":
            cond = [ar_condition(level, patches, cond[0], t)]  # sees the squares before t only
        else:
            mask = torch.zeros(1, level.config.seq_len, dtype=torch.bool)
            mask[0, t] = True  # only that square is masked; every other one is revealed
            cond = level.neighbour_conds(level.hidden(patches, mask, cond), torch.tensor([0]), torch.tensor([t]))
        x = patches[:, t].view(1, 1, p, p)  # descend into that square
        row, col = row % p, col % p
    return cond[0]


@pytest.mark.parametrize("kinds", [("mar",), ("ar", "ar"), ("mar", "mar")])
@torch.no_grad()
def test_inpainting_one_unknown_pixel_draws_from_the_model_conditional(kinds):
    """One unknown pixel: for MAR (one unknown token) its distribution is the model's conditional
    given every other pixel; with two levels the unknown pixel sits in a partially known patch,
    so the condition is computed through both levels by hand (level 0 with that patch masked
    or next in raster order, level 1 with the patch's other pixels known)."""
    sizes = (2, 1) if len(kinds) == 1 else (4, 2, 1)
    model = tiny(sizes, kinds, peaky=3.0, seed=3)
    s = sizes[0]
    image = random_images(model, 1, seed=9)
    row, col = s - 1, s - 2  # the unknown pixel: last row, second-last column (not last in raster order)
    known = torch.ones(s, s, dtype=torch.bool)
    known[row, col] = False
    out = fractalgen.inpaint(model, image, known, labels=6, cfg=1.0, temperature=1.0, seed=0,
                             n=N_SAMPLES, num_iter=(4,) * len(kinds))
    drawn = out[:, 0, row, col]
    p = pixel_probs(model, condition_by_hand(model, image.float(), row, col, label=6))
    wrong = pixel_probs(model, condition_by_hand(model, torch.zeros_like(image, dtype=torch.float), row, col, 6))
    assert_matches(drawn, p, wrong)


# ---- helpers that build the mask -------------------------------------------------------------------

def test_mask_helpers():
    assert conditional.centre_box(28) == (7, 7, 21, 21)  # the documented default known centre
    inside = conditional.box_mask(8, (2, 1, 5, 3))
    assert inside.sum() == 6 and inside[1, 2] and inside[2, 4] and not inside[3, 2] and not inside[1, 5]
    assert conditional.top_rows_known(28).sum() == 7 * 28


def test_outpaint_uncrop_edit_keep_their_regions():
    model = tiny(**MODELS["mar2_gray"])
    images = random_images(model, 2)
    out = fractalgen.outpaint(model, images, (2, 2, 6, 4), seed=0)
    assert torch.equal(out[:, :, 2:4, 2:6], images[:, :, 2:4, 2:6])
    out = fractalgen.uncrop(model, images, seed=0)
    assert torch.equal(out[:, :, 2:6, 2:6], images[:, :, 2:6, 2:6])
    assert not torch.equal(out, images)
    scales = []  # the guidance scale every pixel receives
    original = model.pixel_head.sample
    model.pixel_head.sample = lambda cond, cfg, *args: scales.append(cfg) or original(cond, cfg, *args)
    out = fractalgen.edit(model, images, label=[3, 4], cfg=3.0, seed=0)
    assert torch.equal(out[:, :, :2], images[:, :, :2])
    assert torch.cat(scales).lt(3.0).any()  # the recommended linear ramp
    scales.clear()
    fractalgen.edit(model, images, label=[3, 4], cfg=3.0, cfg_schedule="constant", seed=0)
    assert torch.cat(scales).eq(3.0).all()


@pytest.mark.parametrize("call, message", [
    (lambda m, x: fractalgen.inpaint(m, x, torch.ones(2, 7, 7, dtype=torch.bool)), "known mask must be"),
    (lambda m, x: fractalgen.inpaint(m, x[:, :, :4], torch.ones(2, 8, 8, dtype=torch.bool)), "images must be"),
    (lambda m, x: fractalgen.inpaint(m, x.float(), torch.ones(2, 8, 8, dtype=torch.bool)), "uint8"),
    (lambda m, x: fractalgen.inpaint(m, x, torch.ones(2, 8, 8)), "must be bool"),
    (lambda m, x: fractalgen.edit(m, x, label=10), "label 10 is out of range"),
    (lambda m, x: fractalgen.inpaint(m, x, torch.ones(2, 8, 8, dtype=torch.bool), labels=[1, 2, 3]), "one per image"),
    (lambda m, x: fractalgen.outpaint(m, x, (3, 3, 3, 5)), "box 3,3,3,5"),
    (lambda m, x: fractalgen.uncrop(m, x, fraction=0.0), "fraction"),
])
def test_bad_input_is_one_clear_error(call, message):
    model = tiny(**MODELS["mar2_gray"])
    with pytest.raises(conditional.ConditionalInputError, match=message):
        call(model, random_images(model, 2))


def test_unconditional_model_rejects_labels():
    model = tiny(**MODELS["mar2_gray"], num_classes=0)
    with pytest.raises(conditional.ConditionalInputError, match="unconditional"):
        fractalgen.edit(model, random_images(model, 1), label=1)


def test_demo_examples(tmp_path):
    model = tiny(**MODELS["mar2_gray"])
    images = random_images(model, 3)
    paths = demo.demo_examples(model, tmp_path, images, torch.tensor([0, 1, 9]), seed=0)
    assert [p.name for p in paths] == ["inpaint_lower_half.png", "edit_to_class.png"]
    for p in paths:
        with Image.open(p) as picture:
            assert picture.width > 3 * 8 and picture.height > 3 * 8


# ---- command line ------------------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.safetensors"
    fractalgen.save(tiny(**MODELS["mar2_gray"]), path)
    return path


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["inpaint", "outpaint", "uncrop", "edit"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "--image" in capsys.readouterr().out


def test_cli_inpaint_end_to_end(tmp_path, checkpoint, capsys):
    """A 10x8 input is centre-cropped to 8x8 (columns 1..8) and kept at that size."""
    picture = np.random.default_rng(0).integers(0, 256, (8, 10))
    image = write_png(tmp_path / "digit.png", picture)
    out = tmp_path / "out"
    rc = main(["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--box", "1,4,9,8",
               "--samples", "2", "--label", "3", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and "centre-cropped to 8x8" in captured.err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["digit_inpaint_0.png", "digit_inpaint_0_full.png", "digit_inpaint_1.png",
                       "digit_inpaint_1_full.png", "digit_inpaint_strip.png"]
    for i in range(2):
        completion = np.asarray(Image.open(out / f"digit_inpaint_{i}.png"))
        assert completion.shape == (8, 8)
        assert (completion[:4] == picture[:4, 1:9]).all()  # the kept rows, bit-identical
        # The completed square pasted back into the 10x8 picture: the regenerated pixels replaced, the rest kept.
        full = np.asarray(Image.open(out / f"digit_inpaint_{i}_full.png"))
        assert full.shape == (8, 10)
        assert (full[:4] == picture[:4]).all() and (full[:, [0, 9]] == picture[:, [0, 9]]).all()
        assert (full[4:, 1:9] == completion[4:]).all()  # same size square: pasted as is
    assert "pasted back into the 10x8 picture" in captured.out
    # Never overwrite: a second run into the same folder is refused and leaves the files alone.
    before = (out / written[0]).read_bytes()
    rc = main(["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--box", "1,4,9,8",
               "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert (out / written[0]).read_bytes() == before


@pytest.mark.parametrize("command, extra", [("outpaint", ["--box", "2,2,6,6"]), ("uncrop", []),
                                            ("edit", ["--label", "5"])])
def test_cli_other_commands(tmp_path, checkpoint, command, extra, autocast_seen):
    """Each command runs; --precision reaches the model (bf16 autocast on around it, off by default)."""
    image = write_png(tmp_path / "x.png", np.full((8, 8), 128))
    for precision in ("auto", "bf16"):
        out = tmp_path / precision
        rc = main([command, "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(out),
                   "--precision", precision] + extra)
        assert rc == 0 and (out / f"x_{command}_strip.png").is_file()
    assert autocast_seen == [False, True]


def test_cli_says_when_a_colour_picture_is_made_gray(tmp_path, checkpoint, capsys):
    image = tmp_path / "colour.png"
    Image.fromarray(np.full((8, 8, 3), (200, 30, 30), dtype=np.uint8)).save(image)
    rc = main(["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--box", "0,4,8,8",
               "--out", str(tmp_path / "o")])
    assert rc == 0 and "a colour image (RGB), made grayscale" in capsys.readouterr().err


def test_cli_edit_strip_is_captioned(tmp_path, checkpoint):
    image = write_png(tmp_path / "x.png", np.full((8, 8), 128))
    assert main(["edit", "--checkpoint", str(checkpoint), "--image", str(image), "--label", "5",
                 "--out", str(tmp_path / "o")]) == 0
    strip = np.asarray(Image.open(tmp_path / "o" / "x_edit_strip.png").convert("L"))
    title = strip[:14]  # the caption band above the images: dark text on white
    assert (title < 100).any() and (title == 255).mean() > 0.5


def test_cli_mask_without_unknown_pixels_returns_the_input(tmp_path, checkpoint, capsys):
    picture = np.random.default_rng(1).integers(0, 256, (8, 8))
    image = write_png(tmp_path / "x.png", picture)
    mask = write_png(tmp_path / "m.png", np.zeros((8, 8)))
    rc = main(["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--mask", str(mask),
               "--out", str(tmp_path / "o")])
    assert rc == 0 and "no pixel to regenerate" in capsys.readouterr().err
    assert (np.asarray(Image.open(tmp_path / "o" / "x_inpaint_0.png")) == picture).all()


@pytest.mark.parametrize("case, message", [
    ("mask_size", "mask .* is 4x4 but image .* is 8x8"),
    ("empty_image", "cannot read image"),
    ("label", "label 10 is out of range"),
    ("box", "--box must be four integers"),
    ("box_range", "box 0,0,9,8 must satisfy"),
    ("missing", "image not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, checkpoint, capsys, case, message):
    image = write_png(tmp_path / "x.png", np.zeros((8, 8)))
    args = ["inpaint", "--checkpoint", str(checkpoint), "--image", str(image), "--out", str(tmp_path / "o"),
            "--box", "0,0,4,4"]
    if case == "mask_size":
        args[-2:] = ["--mask", str(write_png(tmp_path / "m.png", np.zeros((4, 4))))]
    elif case == "empty_image":
        (tmp_path / "empty.png").write_bytes(b"")
        args[4] = str(tmp_path / "empty.png")
    elif case == "label":
        args += ["--label", "10"]
    elif case == "box":
        args[-1] = "0,0,a,4"
    elif case == "box_range":
        args[-1] = "0,0,9,8"
    elif case == "missing":
        args[4] = str(tmp_path / "nope.png")
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()
