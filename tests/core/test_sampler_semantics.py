"""What the sampler means, pinned to the authors' definitions (the paper and their sampling code):

- temperature MULTIPLIES the logits (1.1 sharpens);
- guidance is u + cfg * (c - u), centred on the UNconditional logits, after raising every
  unconditional logit whose conditional probability is below the filter threshold to
  max(u, c - max(c) + max(u));
- the MAR cosine schedule keeps floor(N * cos(pi/2 * (s+1) / num_iter)) tokens masked after
  step s, computed in float64;
- the linear guidance schedule ramps 1 + (cfg - 1) * (t + 1) / N along an AR level.

The pure functions are checked on hand-made logits and a table of counts written out by hand;
end to end, a tiny model's guided, tempered, filtered sampler is checked against the
distribution computed by enumeration, with the formulas written here (not the library's),
and each plausible misreading is shown to be rejected.
"""
import math

import pytest
import torch
from frame import small_config, tiny_model
from scipy import stats
from test_conditional import ALPHA, N_SAMPLES, chi_square_p

import fractalgen
from fractalgen.config import ModelConfig
from fractalgen.levels.base import patchify
from fractalgen.levels.mar import MARLevel
from fractalgen.sampling import (
    SampleContext,
    apply_temperature,
    constant_cfg,
    cosine_masked_after,
    falling_cfg,
    guide,
    linear_cfg,
)

# ---- pure functions on hand-made logits ----------------------------------------------------------


def test_temperature_multiplies_the_logits():
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    assert torch.equal(apply_temperature(logits, 2.0), torch.tensor([[2.0, -4.0, 1.0]]))
    assert torch.equal(apply_temperature(logits, 0.5), torch.tensor([[0.5, -1.0, 0.25]]))


def test_guidance_is_centred_on_the_unconditional_logits():
    cond = torch.tensor([[2.0, 0.0, 1.0]])
    uncond = torch.tensor([[0.0, 1.0, 1.0]])
    out = guide(torch.cat([cond, uncond]), torch.tensor([3.0]), filter_threshold=0.0)
    # u + 3 (c - u) = [0 + 6, 1 - 3, 1 + 0]; centred on c it would be [8, -3, 1]
    assert torch.equal(out, torch.tensor([[6.0, -2.0, 1.0]]))
    assert torch.equal(guide(torch.cat([cond, uncond]), torch.tensor([1.0]), 0.0), cond)  # cfg 1: conditional
    assert torch.equal(guide(torch.cat([cond, uncond]), torch.tensor([0.0]), 0.0), uncond)  # cfg 0: unconditional


def test_guidance_takes_one_scale_per_row():
    cond = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    uncond = torch.zeros(2, 2)
    out = guide(torch.cat([cond, uncond]), torch.tensor([2.0, 5.0]), 0.0)
    assert torch.equal(out, torch.tensor([[2.0, 0.0], [5.0, 0.0]]))


def test_filter_raises_unlikely_unconditional_logits():
    cond = torch.tensor([[10.0, 0.0, -10.0]])  # conditional probabilities ~ 1, 4.5e-5, 2e-9
    uncond = torch.tensor([[0.0, 3.0, -1.0]])
    out = guide(torch.cat([cond, uncond]), torch.tensor([2.0]), filter_threshold=1e-4)
    # values 1 and 2 are below the threshold: u -> max(u, c - max(c) + max(u)) = max(u, c - 10 + 3)
    #   value 1: max(3, -7) = 3 (unchanged); value 2: max(-1, -17) = -1 (unchanged); value 0 is above it.
    assert torch.allclose(out, torch.tensor([[20.0, -3.0, -19.0]]))
    uncond = torch.tensor([[0.0, -9.0, -30.0]])
    out = guide(torch.cat([cond, uncond]), torch.tensor([2.0]), filter_threshold=1e-4)
    # now the floor wins below the threshold: value 1: max(-9, 0 - 10 + 0) = -9; value 2: max(-30, -20) = -20
    assert torch.allclose(out, torch.tensor([[20.0, 9.0, 0.0]]))
    unfiltered = guide(torch.cat([cond, uncond]), torch.tensor([2.0]), filter_threshold=0.0)
    assert torch.allclose(unfiltered, torch.tensor([[20.0, 9.0, 10.0]]))  # u + 2 (c - u) = 2c - u


def test_guidance_and_filter_work_row_by_row():
    """A batch of rows guides each row on its own (the filter's maxima are per row)."""
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 6, generator=g) * torch.tensor([[1.0], [8.0], [3.0]])  # rows of different scale
    uncond = torch.randn(3, 6, generator=g) * 4
    scales = torch.tensor([2.0, 3.0, 5.0])
    batched = guide(torch.cat([cond, uncond]), scales, filter_threshold=0.05)
    one_by_one = torch.cat([guide(torch.stack([cond[i], uncond[i]]), scales[i:i + 1], 0.05) for i in range(3)])
    assert torch.equal(batched, one_by_one)
    assert not torch.equal(batched, guide(torch.cat([cond, uncond]), scales, 0.0))  # the filter acted


def test_cfg_schedules():
    progress = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(linear_cfg(5.0, progress), torch.tensor([1.0, 2.0, 5.0]))
    assert torch.equal(constant_cfg(5.0, progress), torch.tensor([5.0, 5.0, 5.0]))
    assert torch.equal(falling_cfg(5.0, progress), torch.tensor([5.0, 4.0, 1.0]))


# Tokens still masked after each step, floor(N * cos(pi/2 * (s+1) / num_iter)), worked out by hand.
COSINE_COUNTS = {
    (16, 4): [14, 11, 6, 0],  # 16 cos(pi/8) = 14.78, 16 cos(pi/4) = 11.31, 16 cos(3pi/8) = 6.12
    (64, 8): [62, 59, 53, 45, 35, 24, 12, 0],  # 62.77, 59.13, 53.21, 45.25, 35.56, 24.49, 12.49, 0
    (4, 3): [3, 2, 0],  # 4 cos(pi/6) = 3.46, 4 cos(pi/3) = 2.0000000000000004
    (256, 1): [0],
}


@pytest.mark.parametrize("total, num_iter", list(COSINE_COUNTS))
def test_cosine_schedule_rounds_down(total, num_iter):
    counts = [int(cosine_masked_after(s, num_iter, torch.tensor([total]))[0]) for s in range(num_iter)]
    assert counts == COSINE_COUNTS[(total, num_iter)]
    assert [cosine_masked_after(s, num_iter, total) for s in range(num_iter)] == counts  # on the host


def test_cosine_schedule_is_computed_in_float64():
    """64 tokens in 39 steps, step 25: 64 cos(pi/3) = 31.999999999999993 in float64 (31 stay masked);
    float32 arithmetic rounds the product to 32.0."""
    assert int(cosine_masked_after(25, 39, torch.tensor([64]))[0]) == 31 == cosine_masked_after(25, 39, 64)
    assert math.floor(64 * math.cos(math.pi / 2 * 26 / 39)) == 31
    assert int(torch.floor(torch.tensor([64.0]) * math.cos(math.pi / 2 * 26 / 39))) == 32  # the float32 trap
    assert int(cosine_masked_after(25, 39, torch.tensor([64.0], dtype=torch.float32))[0]) == 31


def test_mar_reveals_the_cosine_counts_step_by_step():
    """A MAR level with 16 tokens and 4 steps hands 2, 3, 5, 6 patches down (16 - [14, 11, 6, 0])."""
    n = 3
    config = ModelConfig(img_sizes=(4, 1), widths=(8, 8), blocks=(1, 1), heads=(2, 2), kinds=("mar",), channels=1,
                         num_classes=0, pixel_mean=(0.5,), pixel_std=(0.5,), attn_dropout=0.0, proj_dropout=0.0)
    model = fractalgen.build(config).eval()
    assert isinstance(model.levels[0], MARLevel)
    handed = []
    original = model._sample_level

    def spy(depth, ctx, conds, guidance, known):
        if depth == 1:
            handed.append(guidance.shape[0])
        return original(depth, ctx, conds, guidance, known)

    model._sample_level = spy
    model.generate(n=n, num_iter=(4,), generator=torch.Generator().manual_seed(0))
    assert handed == [n * k for k in (2, 3, 5, 6)]


# ---- end to end: a guided, tempered, filtered sampler against enumeration ----------------------------

def authors_probs(cond_logits, uncond_logits, temperature, cfg, threshold):
    """The authors' chain for one pixel, written out: temperature, filter, guidance, softmax."""
    c = cond_logits.double() * temperature
    u = uncond_logits.double() * temperature
    unlikely = torch.softmax(c, -1) < threshold
    u = torch.where(unlikely, torch.maximum(u, c - c.max() + u.max()), u)
    return torch.softmax(u + cfg * (c - u), -1)


def peaky_ar_model(seed=3):
    """2x2 grayscale, one AR level, 10 classes; random pixel-head biases make the distribution peaky."""
    model = tiny_model(small_config((2, 1), ("ar",)), seed, perturb=0.5)
    with torch.no_grad():
        model.pixel_head.logit_bias[0].add_(3.0 * torch.randn_like(model.pixel_head.logit_bias[0]))
    return model


@torch.no_grad()
def test_guided_tempered_filtered_sampler_matches_enumeration():
    """The first pixel of class-3 samples, cfg 3 on the linear schedule (its guidance at the first
    of 4 positions is 1 + 2 * 1/4 = 1.5), temperature 1.5, filter threshold 0.01."""
    model = peaky_ar_model()
    level = model.levels[0]
    temperature, cfg, threshold = 1.5, 3.0, 0.01
    images = fractalgen.sample(model, labels=[3] * N_SAMPLES, cfg=cfg, cfg_schedule="linear",
                               temperature=temperature, filter_threshold=threshold, seed=0, batch_size=None)
    first = images.view(N_SAMPLES, 4)[:, 0]

    rows = torch.cat([model.class_condition(torch.tensor([3]), 1), model.null_class])  # conditional, unconditional
    h = level.hidden(patchify(torch.zeros(2, 1, 2, 2), 1), rows)[:, 0]  # the condition of pixel 0 (2, width)
    logits = model.pixel_head.logits(h, torch.zeros(2, 1, dtype=torch.long))[:, 0]  # (2, 256)
    c, u = logits[0], logits[1]
    guidance = 1 + (cfg - 1) * 1 / 4
    expected = authors_probs(c, u, temperature, guidance, threshold)
    assert chi_square_p(first, expected) > ALPHA

    misreadings = {
        "temperature divides": authors_probs(c, u, 1 / temperature, guidance, threshold),
        "guidance centred on the conditional": torch.softmax(
            (c * temperature) + guidance * (c - u) * temperature, -1).double(),
        "no filter": authors_probs(c, u, temperature, guidance, 0.0),
        "constant schedule": authors_probs(c, u, temperature, cfg, threshold),
        "no guidance": authors_probs(c, u, temperature, 1.0, threshold),
    }
    for name, wrong in misreadings.items():
        assert chi_square_p(first, wrong) < ALPHA, name  # the test has the power to tell


def test_sample_context_doubles_guided_batches():
    ctx = SampleContext(guided=True, temperature=1.0, filter_threshold=0.0, num_iter=(1,), generator=None)
    t = torch.tensor([[1.0], [2.0]])
    assert torch.equal(ctx.doubled(t), torch.tensor([[1.0], [2.0], [1.0], [2.0]]))
    assert torch.equal(ctx.doubled_rows(torch.tensor([1]), 2), torch.tensor([1, 3]))
    plain = SampleContext(guided=False, temperature=1.0, filter_threshold=0.0, num_iter=(1,), generator=None)
    assert plain.doubled(t) is t and torch.equal(plain.doubled_rows(torch.tensor([1]), 2), torch.tensor([1]))


# ---- the MAR masks of training and likelihood (the authors' code) -------------------------------------

def test_training_mask_counts_follow_the_truncated_normal_ratio():
    """Per row, ceil(N * (1 - 0.25 |z|)) tokens masked with z ~ N(0, 1) truncated at |z| <= 4 (mask
    ratio ~ N(1, 0.25) folded below 1, truncated at 0); the masked positions are uniform."""
    from scipy.stats import norm

    from fractalgen.levels.mar import training_mask

    n, rows = 16, 20000
    mask = training_mask(rows, n, "cpu", torch.Generator().manual_seed(0))
    assert mask.shape == (rows, n) and mask.dtype == torch.bool
    counts = mask.sum(1)
    # count = ceil(n - 4|z|) = k  <=>  (n - k) / 4 <= |z| < (n - k + 1) / 4, |z| half-normal truncated at 4
    def half(t):
        return (2 * norm.cdf(min(t, 4.0)) - 1) / (2 * norm.cdf(4.0) - 1)

    probs = torch.tensor([half((n - k + 1) / 4) - half((n - k) / 4) for k in range(n + 1)], dtype=torch.float64)
    observed = torch.bincount(counts, minlength=n + 1).double()
    keep = probs * rows >= 5
    assert stats.chisquare(observed[keep].numpy(), (probs[keep] / probs[keep].sum() * observed[keep].sum()).numpy()
                           ).pvalue > ALPHA
    assert counts.min() >= 1 and counts.max() == n
    per_position = mask.double().mean(0)
    assert (per_position - per_position.mean()).abs().max() < 0.02  # no position favoured
    again = training_mask(rows, n, "cpu", torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)  # drawn from the generator given


def test_likelihood_mask_takes_one_uniform_count_for_the_batch():
    from fractalgen.levels.mar import likelihood_mask

    n, draws = 8, 8000
    g = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(draws):
        mask = likelihood_mask(3, n, "cpu", g)
        per_row = mask.sum(1)
        assert (per_row == per_row[0]).all()  # one count for the whole batch
        counts.append(int(per_row[0]))
    observed = torch.bincount(torch.tensor(counts), minlength=n + 1)[1:].double()
    assert observed.sum() == draws and stats.chisquare(observed.numpy()).pvalue > ALPHA  # uniform over 1..n


def test_uniform_training_mask_draws_a_uniform_count_per_row():
    from fractalgen.levels.mar import uniform_training_mask

    n, rows = 8, 16000
    mask = uniform_training_mask(rows, n, "cpu", torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert len(set(counts[:50].tolist())) > 1  # one count per row, not per batch
    observed = torch.bincount(counts, minlength=n + 1).double()
    assert observed[0] == 0 and stats.chisquare(observed[1:].numpy()).pvalue > ALPHA  # uniform over 1..n
    per_position = mask.double().mean(0)
    assert (per_position - per_position.mean()).abs().max() < 0.02  # no position favoured
    assert torch.equal(mask, uniform_training_mask(rows, n, "cpu", torch.Generator().manual_seed(0)))


# ---- training and likelihood modes of the model -------------------------------------------------------

def mar_model(**changes):
    config = small_config((4, 2, 1), ("mar", "mar"), widths=(16, 8, 8), **changes)
    return tiny_model(config, perturb=0.5).train()


@torch.no_grad()
def test_label_dropout_and_unconditional_likelihood():
    images = torch.randint(0, 256, (3, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.tensor([1, 5, 7])
    masks = ["all", "all"]
    always_dropped = mar_model(label_drop_prob=0.999)  # the config allows < 1
    torch.manual_seed(0)  # three draws below 0.999: every label dropped
    assert always_dropped.loss(images, labels, masks=masks) == always_dropped.loss(images, None, masks=masks)
    never_dropped = mar_model(label_drop_prob=0.0)
    assert never_dropped.loss(images, labels, masks=masks) != never_dropped.loss(images, None, masks=masks)
    # likelihood mode ignores the labels: the model's unconditional likelihood
    assert (never_dropped.loss(images, labels, masks=masks, train=False)
            == never_dropped.loss(images, None, masks=masks, train=False))


def test_each_mode_draws_its_own_masks(monkeypatch):
    """Training draws the training mask, likelihood (nll, loss(train=False)) the uniform-count one."""
    from fractalgen.levels import mar

    calls = []
    for name in ("training_mask", "likelihood_mask"):
        original = getattr(mar, name)
        monkeypatch.setattr(mar, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model = mar_model()
    images = torch.randint(0, 256, (2, 1, 4, 4), dtype=torch.uint8)
    model.loss(images, torch.tensor([1, 2]))
    assert calls == ["training_mask"] * 2
    calls.clear()
    with torch.no_grad():
        model.nll(images)
        model.loss(images, None, train=False)
    assert calls == ["likelihood_mask"] * 4
    calls.clear()
    uniform = []
    monkeypatch.setattr(mar, "uniform_training_mask",
                        lambda *a, _f=mar.uniform_training_mask, **k: uniform.append(1) or _f(*a, **k))
    model.loss(images, torch.tensor([1, 2]), masks=["uniform", "uniform"])  # TrainOptions(mar_masks="uniform")
    assert calls == [] and len(uniform) == 2


def test_per_image_mean_and_image_checks():
    from fractalgen.model import per_image_mean

    values = torch.tensor([3.0, 1.0, 2.0, 6.0])
    owner = torch.tensor([0, 1, 1, 2])
    assert torch.equal(per_image_mean(values, owner, 4), torch.tensor([3.0, 1.5, 6.0, 0.0], dtype=torch.float64))
    model = mar_model()
    for bad in (torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, 1, 4, 2, dtype=torch.uint8),
                torch.zeros(1, 4, 4, dtype=torch.uint8)):
        with pytest.raises(ValueError, match=r"images must be \(N, 1, 4, 4\)"):
            model.loss(bad)
