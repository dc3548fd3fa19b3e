"""The model against exact computations: a uniform pixel head is eight bits, the sampler's log-probability
is the likelihood, the caches equal full passes, the chunked cross-entropy equals the plain one."""

import pytest
import torch
from frame import tiny_model

import fractalgen
from fractalgen.levels.base import patchify
from fractalgen.levels.mar import revealed_positions


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar", "tiny_mar_gp4"])
def test_uniform_pixel_head_is_eight_bits(name):
    model = tiny_model(name, perturb=0.3)
    with torch.no_grad():  # a zero final norm makes every logit 0: a uniform 256-way categorical
        for p in (model.pixel_head.norm.weight, model.pixel_head.norm.bias, *model.pixel_head.logit_bias):
            p.zero_()
        for level in model.levels:
            if hasattr(level, "guide_head"):
                for p in (level.guide_head.norm.weight, level.guide_head.norm.bias, *level.guide_head.logit_bias):
                    p.zero_()
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    per_level = 8.0 * (1 + sum(hasattr(lv, "guide_head") for lv in model.levels))  # guide losses add 8 each
    assert fractalgen.bits_per_dim(model, images) == pytest.approx(per_level, abs=1e-5)


@pytest.mark.parametrize("name", ["tiny_ar", "mnist_ar"])
def test_sampler_log_probability_equals_likelihood(name):
    """The log-probability the sampler accumulates while drawing an image (temperature 1, no
    guidance) equals minus the likelihood-mode loss of that image times its dimensions."""
    model = tiny_model(name, perturb=0.3)
    g = torch.Generator().manual_seed(1)
    values, logp = model.generate(labels=None, n=3, cfg=1.0, temperature=1.0, filter_threshold=0.0, generator=g)
    images = values.to(torch.uint8)
    dims = images[0].numel()
    with torch.no_grad():
        nll = model.nll(images)  # nats per dimension, per image
    torch.testing.assert_close(-logp.double().sum((1, 2, 3)), nll * dims, rtol=1e-4, atol=1e-3)


def test_mar_conditions_of_revealed_patches_equal_the_full_pass():
    """The MAR sampler runs its last block only at the revealed patches and the neighbours whose
    conditions the next level reads; the conditions it hands down equal those of the full pass
    (uneven reveal counts, borders). A MAR level above a MAR level hands down five, the one above
    the pixel head one (its own hidden state: the pixel head reads no other)."""
    model = tiny_model("tiny_mar_gp4", perturb=0.3)
    assert [level.config.conds_down for level in model.levels] == [5, 5, 1]
    g = torch.Generator().manual_seed(0)
    for level in model.levels:
        B, N, C, p = 3, level.config.seq_len, model.config.channels, level.config.patch_size
        patches = torch.randint(0, 256, (B, N, C * p * p), generator=g).float()
        mask = torch.rand(B, N, generator=g) < 0.7
        reveal = mask & (torch.rand(B, N, generator=g) < 0.5)
        reveal[0] = False
        reveal[0, N - 1] = True  # row 0 reveals one patch, in the corner
        conds = [torch.randn(B, level.config.cond_width, generator=g) for _ in range(level.num_conds)]
        guide = torch.randn(B, C, generator=g) if level.config.guiding_pixel else None
        with torch.no_grad():
            expected = level.neighbour_conds(level.hidden(patches, mask, conds, guide), *reveal.nonzero(as_tuple=True))
            got = level.revealed_conds(patches, mask, conds, guide, *revealed_positions(reveal))
            # Every row revealing as many patches (what the sampler knows without asking the device).
            first = torch.rand(B, N, generator=g).argsort(1)[:, :3].sort(1).values
            uniform = level.revealed_conds(patches, mask, conds, guide, first)
            rows = torch.arange(B)[:, None].expand_as(first).flatten()
            uniform_expected = level.neighbour_conds(level.hidden(patches, mask, conds, guide), rows, first.flatten())
        assert len(got) == len(expected) == len(uniform) == level.config.conds_down
        for a, e in zip(got + uniform, expected + uniform_expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_ar_kv_cache_equals_full_recompute(guided):
    """Conditions the cached decoder hands down equal a full causal pass over the finished image."""
    model = tiny_model("tiny_ar", perturb=0.3)
    level = model.levels[0]
    seen = []
    original = model._sample_level

    def spy(depth, ctx, conds, cfg, known):
        if depth == 1:
            seen.append(conds[0].clone())
        return original(depth, ctx, conds, cfg, known)

    model._sample_level = spy
    labels = torch.tensor([1, 5])
    values, _ = model.generate(labels=labels, cfg=3.0 if guided else 1.0, generator=torch.Generator().manual_seed(0))
    assert len(seen) == level.config.seq_len
    cached = torch.stack(seen, dim=1)  # (R, N, D): R = 2B when guided
    cond = model.class_condition(labels, 2)
    if guided:
        cond = torch.cat([cond, model.null_class.expand(2, -1)])
        values = torch.cat([values, values])
    with torch.no_grad():
        full = level.hidden(patchify(values, level.config.patch_size), cond)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)


def test_pixel_head_cache_equals_full_logits():
    model = tiny_model("tiny_ar", perturb=0.3)
    head = model.pixel_head
    cond = torch.randn(5, head.cond_proj.in_features)
    ctx = fractalgen.sampling.SampleContext(guided=False, temperature=1.0, filter_threshold=0.0,
                                            num_iter=(1, 1), generator=torch.Generator().manual_seed(0))
    values, logp = head.draw_channels(cond, torch.ones(5), ctx)
    with torch.no_grad():
        full = torch.log_softmax(head.logits(cond, values), -1).gather(2, values[..., None]).sum((1, 2))
    torch.testing.assert_close(logp.sum(1), full, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_tied_cross_entropy_equals_the_plain_one(layout):
    """The chunked cross-entropy of the pixel heads: values and gradients of the plain computation,
    with chunks that do not divide the rows, for the transposed (channel-major view) states and
    targets the pixel head hands it (double precision: any difference is a bug, not rounding)."""
    from fractalgen.nn import tied_cross_entropy

    torch.manual_seed(0)
    T, M, V, W = 3, 37, 11, 5
    if layout == "contiguous":
        h = torch.randn(T, M, W, dtype=torch.float64, requires_grad=True)
    else:
        h = torch.randn(M, T, W, dtype=torch.float64).transpose(0, 1).requires_grad_()
    table = torch.randn(T, V, W, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(T, 1, V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (T, M)) if layout == "contiguous" else torch.randint(0, V, (M, T)).t()
    weights = torch.rand(T, M, dtype=torch.float64)  # an uneven incoming gradient

    logits = torch.baddbmm(bias, h, table.transpose(1, 2))
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(T, M)
    expected = torch.autograd.grad((plain * weights).sum(), (h, table, bias))
    fused = tied_cross_entropy(h, table, bias, targets, chunk=8)
    got = torch.autograd.grad((fused * weights).sum(), (h, table, bias))
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_cross_entropy_chunk_follows_the_device():
    """Small chunks on a CPU (its caches), large ones on a GPU (its launches); any chunk gives the same
    values and gradients."""
    from fractalgen.nn.cross_entropy import CHUNK_ROWS, CHUNK_ROWS_GPU, chunk_rows, tied_cross_entropy

    assert chunk_rows("cpu") == CHUNK_ROWS < CHUNK_ROWS_GPU == chunk_rows("cuda") == chunk_rows("mps")
    torch.manual_seed(0)
    h = torch.randn(3, 2100, 6, dtype=torch.float64, requires_grad=True)
    table, bias = torch.randn(3, 11, 6, dtype=torch.float64), torch.randn(3, 1, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 2100))
    results = [tied_cross_entropy(h, table, bias, targets, chunk=chunk) for chunk in (None, CHUNK_ROWS_GPU, 7)]
    grads = [torch.autograd.grad(r.sum(), h)[0] for r in results]
    for r, g in zip(results[1:], grads[1:], strict=True):
        torch.testing.assert_close(r, results[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=1e-12)


def test_mlp_in_pieces_equals_the_whole(monkeypatch):
    """Without gradients on a CPU the MLP runs on pieces of rows (no fresh multi-MB buffer per block);
    its output equals the whole product's, and with gradients it runs whole."""
    from fractalgen.nn import blocks

    torch.manual_seed(0)
    mlp = blocks.MLP(32, 128, dropout=0.0).eval()
    x = torch.randn(3, 70, 32)
    calls = []
    mlp.fc1.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        whole = mlp(x)
    monkeypatch.setattr(blocks, "MLP_PIECE_ELEMENTS", 64 * 128)  # pieces of 64 rows
    calls.clear()
    with torch.no_grad():
        pieces = mlp(x)
    assert calls == [64, 64, 64, 18]
    torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-6)
    calls.clear()
    with_grad = mlp(x)
    assert calls == [210] and with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), whole, rtol=1e-6, atol=1e-6)


def test_mlp_without_gradients_computes_gelu_in_place_to_the_same_bits():
    """Without gradients GELU overwrites fc1's fresh output: the same bits as F.gelu, the input untouched,
    and with gradients its backward still gets the input it reads."""
    from fractalgen.nn import blocks

    torch.manual_seed(0)
    mlp = blocks.MLP(32, 128, dropout=0.0).eval()
    x = torch.randn(70, 32)
    kept = x.clone()
    reference = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x))).detach()
    with torch.no_grad():
        assert torch.equal(mlp(x), reference)
    assert torch.equal(x, kept)
    y = x.clone().requires_grad_()
    mlp(y).sum().backward()
    y_ref = x.clone().requires_grad_()
    mlp.fc2(torch.nn.functional.gelu(mlp.fc1(y_ref))).sum().backward()
    assert torch.equal(y.grad, y_ref.grad)
