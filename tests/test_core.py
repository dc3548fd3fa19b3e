"""The core against the authors' code and against exact computations.

Reference vectors (tests/data, copied from the authors' reference material): tiny models in
the official checkpoint format with the losses the authors' code computed for them.
"""
import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import fractalgen
from fractalgen import CheckpointError, save_official
from fractalgen.config import PRESETS, ConfigError, ModelConfig
from fractalgen.formats.official import official_state_dict
from fractalgen.levels.base import patchify
from fractalgen.levels.mar import revealed_positions

DATA = Path(__file__).parent / "data"
VECTOR_CONFIGS = json.loads((DATA / "configs.json").read_text())
OFFICIAL = ["fractalar_in64", "fractalmar_in64", "fractalmar_base_in256", "fractalmar_large_in256",
            "fractalmar_huge_in256"]


def vector(name):
    fields = {k: v for k, v in VECTOR_CONFIGS[name].items() if k not in ("eval_loss", "train_loss")}
    # The vectors were made with every dropout and the label dropout switched off.
    cfg = ModelConfig.from_official(fields, attn_dropout=0.0, proj_dropout=0.0, label_drop_prob=0.0, name=name)
    model = fractalgen.load(DATA / f"{name}.pth", config=cfg)
    v = np.load(DATA / f"{name}.npz")
    masks = None
    if "mask_level0" in v:  # the given level-0 mask; every deeper MAR level masks all of its tokens
        masks = [torch.from_numpy(v["mask_level0"]).bool()] + ["all"] * (cfg.num_levels - 1)
    return model, torch.from_numpy(v["images"]), torch.from_numpy(v["labels"]), masks, VECTOR_CONFIGS[name]


def seeded_model(name, seed=0, **changes):
    torch.manual_seed(seed)
    cfg = fractalgen.get_config(name)
    model = fractalgen.build(cfg.replace(**changes) if changes else cfg)
    with torch.no_grad():  # perturb so that no distribution is close to uniform
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


# ---- the authors' numbers ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar"])
def test_reference_vectors(name):
    model, images, labels, masks, ref = vector(name)
    with torch.no_grad():
        assert model.loss(images, labels, masks=masks).item() == pytest.approx(ref["train_loss"], abs=1e-4)
        assert model.loss(images, None, masks=masks, train=False).item() == pytest.approx(ref["eval_loss"], abs=1e-4)


def test_reference_vector_guiding_pixel():
    """tiny_mar_gp4: the authors' code rounds the guiding pixel's target after adding N(0, 0.01^2)
    noise (exact .5 ties of patch means go either way); the vector carries the targets exactly as
    their code drew them, and with those fed in both losses match to 1e-5."""
    model, images, labels, masks, ref = vector("tiny_mar_gp4")
    v = np.load(DATA / "tiny_mar_gp4.npz")
    with torch.no_grad():
        for train, mode, key in ((True, "train", "train_loss"), (False, "eval", "eval_loss")):
            targets = [None] + [torch.from_numpy(v[f"guide_target_{mode}_level{i}"]) for i in (1, 2)]
            loss = model.loss(images, labels if train else None, masks=masks, train=train, guide_targets=targets)
            assert loss.item() == pytest.approx(ref[key], abs=1e-5)
            wrong = [None] + [t.flip(0) for t in targets[1:]]  # the same targets, another order: the test can fail
            assert abs(model.loss(images, labels if train else None, masks=masks, train=train,
                                  guide_targets=wrong).item() - ref[key]) > 1e-3


def test_nll_uses_the_masks_given():
    """Likelihood mode with given MAR masks is deterministic and depends on them (no fresh random masks)."""
    model, images, _, masks, _ = vector("tiny_mar")
    with torch.no_grad():
        given = model.nll(images, masks=masks)
        assert torch.equal(given, model.nll(images, masks=masks))
        everything = model.nll(images, masks=["all"] * model.config.num_levels)
    assert not torch.allclose(given, everything)


def test_bits_per_dim_of_tiny_ar_vector():
    model, images, _, _, ref = vector("tiny_ar")
    assert fractalgen.bits_per_dim(model, images) == pytest.approx(ref["eval_loss"] / math.log(2), abs=1e-5)


# ---- exact computations ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar", "tiny_mar_gp4"])
def test_uniform_pixel_head_is_eight_bits(name):
    model = seeded_model(name)
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
    model = seeded_model(name)
    g = torch.Generator().manual_seed(1)
    values, logp = model.generate(labels=None, n=3, cfg=1.0, temperature=1.0, filter_threshold=0.0, generator=g)
    images = values.to(torch.uint8)
    dims = images[0].numel()
    with torch.no_grad():
        nll = model.nll(images)  # nats per dimension, per image
    torch.testing.assert_close(-logp.double().sum((1, 2, 3)), nll * dims, rtol=1e-4, atol=1e-3)


def test_mar_conditions_of_revealed_patches_equal_the_full_pass():
    """The MAR sampler runs its last block only at the revealed patches and their neighbours;
    the conditions it hands down equal those of the full pass (uneven reveal counts, borders)."""
    model = seeded_model("tiny_mar_gp4")
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
        assert len(got) == len(expected) == len(uniform) == 5
        for a, e in zip(got + uniform, expected + uniform_expected, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("guided", [False, True])
def test_ar_kv_cache_equals_full_recompute(guided):
    """Conditions the cached decoder hands down equal a full causal pass over the finished image."""
    model = seeded_model("tiny_ar")
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
    model = seeded_model("tiny_ar")
    head = model.pixel_head
    cond = torch.randn(5, head.cond_proj.in_features)
    ctx = fractalgen.sampling.SampleContext(guided=False, temperature=1.0, filter_threshold=0.0,
                                            num_iter=(1, 1), generator=torch.Generator().manual_seed(0))
    values, logp = head.sample(cond, torch.ones(5), ctx)
    with torch.no_grad():
        full = torch.log_softmax(head.logits(cond, values), -1).gather(2, values[..., None]).sum((1, 2))
    torch.testing.assert_close(logp.sum(1), full, rtol=1e-5, atol=1e-4)


# ---- sampling ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar", "tiny_mar_gp4"])
def test_sample_shapes_and_determinism(name):
    model = seeded_model(name)
    a = fractalgen.sample(model, labels=[0, 3, 9], cfg=4.0, seed=7, num_iter=(4,) * model.config.num_levels)
    b = fractalgen.sample(model, labels=[0, 3, 9], cfg=4.0, seed=7, num_iter=(4,) * model.config.num_levels)
    assert a.dtype == torch.uint8 and a.shape == (3, 3, 16, 16)
    assert torch.equal(a, b)
    u = fractalgen.sample(model, n=2, cfg_schedule="constant", temperature=1.1, seed=1)
    assert u.shape == (2, 3, 16, 16)


def test_unconditional_model():
    model = fractalgen.build(PRESETS["tiny_mar"].replace(num_classes=0))
    assert not hasattr(model, "class_embed")
    x = fractalgen.sample(model, n=2, seed=0, num_iter=(2, 2))
    assert model.loss(x, None).isfinite()


def test_guidance_filter():
    from fractalgen.sampling import guide
    cond = torch.tensor([[10.0, 0.0, -10.0]])
    uncond = torch.tensor([[0.0, 0.0, 5.0]])
    out = guide(torch.cat([cond, uncond]), torch.tensor([3.0]), filter_threshold=1e-4)
    # value 2 is very unlikely under the conditional: its unconditional logit is raised to
    # max(5, -10 - 10 + 5) = 5, no change; guidance keeps it far below value 0
    assert out.argmax().item() == 0 and out[0, 2] < out[0, 0] - 40


# ---- checkpoints --------------------------------------------------------------------------------

def read_layout(name):
    rows = (DATA / "layouts" / f"{name}.tsv").read_text().strip().splitlines()[1:]
    return {k: tuple(int(d) for d in shape.split("x")) for k, shape, _ in (r.split("\t") for r in rows)}


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_layouts(name):
    with torch.device("meta"):  # no 850M-parameter allocation
        model = fractalgen.build(name)
    ours = {k: tuple(v.shape) for k, v in official_state_dict(model).items()}
    assert ours == read_layout(name)


def test_official_export_round_trip(tmp_path):
    model, *_ = vector("tiny_mar_gp4")
    original = torch.load(DATA / "tiny_mar_gp4.pth", weights_only=True)["model"]
    save_official(model, tmp_path / "out.pth")
    exported = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert list(exported) == list(exported) and set(exported) == set(original)
    for k in original:
        assert torch.equal(exported[k], original[k]), k


def test_own_format_round_trip(tmp_path):
    model = seeded_model("tiny_mar_gp4")
    fractalgen.save(model, tmp_path / "m.safetensors", sampling={"cfg": 3.0})
    loaded = fractalgen.load(tmp_path / "m.safetensors")  # no config argument: it travels with the weights
    assert loaded.config == model.config and loaded.recommended == {"cfg": 3.0}
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_shape_mismatch_names_key(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state["model"]["class_emb.weight"] = torch.zeros(7, 64)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"class_emb\.weight.*\(7, 64\).*\(10, 64\)"):
        fractalgen.load(tmp_path / "bad.pth", config="tiny_ar")


def test_official_checkpoint_with_training_state(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state.update(epoch=3, args=argparse.Namespace(model="tiny_ar", lr=1e-4, img_size_list=[16, 4, 1]),
                 optimizer={"state": {}, "param_groups": [{"lr": 1e-4}]}, scaler={"scale": 65536.0})
    torch.save(state, tmp_path / "full.pth")
    assert isinstance(fractalgen.load(tmp_path / "full.pth"), fractalgen.FractalModel)  # config from args.model


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    torch.save({"model": {}, "payload": _Exploit(target)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing"):
        fractalgen.load(tmp_path / "evil.pth", config="tiny_ar")
    assert not target.exists()


def test_args_with_non_plain_values_refused(tmp_path):
    state = torch.load(DATA / "tiny_ar.pth", weights_only=True)
    state["args"] = argparse.Namespace(model="tiny_ar", weights=torch.zeros(2))
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="args"):
        fractalgen.load(tmp_path / "odd.pth", config="tiny_ar")


# ---- configs ------------------------------------------------------------------------------------

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


def test_training_lowers_loss():
    torch.manual_seed(0)
    model = fractalgen.build(PRESETS["tiny_ar"].replace(label_drop_prob=0.0)).train()
    images = torch.randint(0, 4, (4, 3, 16, 16), dtype=torch.uint8) * 60
    labels = torch.arange(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(images, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar_gp4"])
def test_bf16_autocast_runs(name):
    """The precision policy is the caller's: under bf16 autocast loss, backward and sampling work and
    the loss stays close to fp32 (fp32 islands: attention logits, pixel logits)."""
    model = seeded_model(name)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    masks = ["all"] * model.config.num_levels
    torch.manual_seed(0)
    reference = model.loss(images, torch.tensor([1, 2]), masks=masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        loss = model.loss(images, torch.tensor([1, 2]), masks=masks)
        loss.backward()
        out = fractalgen.sample(model, labels=[1, 2], cfg=2.0, seed=0, num_iter=(2,) * model.config.num_levels)
    assert loss.dtype == torch.float32 and abs(loss.item() - reference.item()) < 0.05 * reference.item()
    assert out.shape == images.shape


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


def test_sampling_precision_reaches_the_model_and_fp32_is_the_cpu_default():
    """precision bf16 runs the levels under bf16 autocast (a linear's output is bf16) and the inpainting
    path too; auto on a CPU is fp32, the very same images; fp32 holds even inside a caller's autocast;
    an unknown name fails before any work."""
    from fractalgen.nn import precision_in_effect, resolve_precision

    model = seeded_model("tiny_mar_gp4")
    seen = []
    model.levels[0].blocks[0].mlp.fc1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))

    def draw(precision, **kwargs):
        seen.clear()
        images = fractalgen.sample(model, labels=[1, 2], seed=0, num_iter=(2, 2, 2), precision=precision, **kwargs)
        return images, set(seen)

    fp32, dtypes = draw("fp32")
    assert dtypes == {torch.float32}
    assert torch.equal(draw("auto")[0], fp32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, dtypes = draw("fp32")
        assert torch.equal(inside, fp32) and dtypes == {torch.float32}
        assert draw("auto")[1] == {torch.bfloat16}  # auto keeps the caller's autocast
        assert precision_in_effect("auto", "cpu") == "bf16" and precision_in_effect("fp32", "cpu") == "fp32"
    assert precision_in_effect("auto", "cpu") == "fp32"
    bf16, dtypes = draw("bf16")
    assert dtypes == {torch.bfloat16} and bf16.shape == fp32.shape and bf16.dtype == torch.uint8
    seen.clear()
    known = torch.zeros(16, 16, dtype=torch.bool)
    known[:8] = True
    fractalgen.inpaint(model, fp32, known, labels=[1, 2], seed=0, num_iter=(2, 2, 2), precision="bf16")
    assert set(seen) == {torch.bfloat16}
    seen.clear()
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        fractalgen.sample(model, labels=[1, 2], seed=0, num_iter=(2, 2, 2), precision="fp16")
    assert seen == []  # refused before any work
    assert resolve_precision("auto", "cpu") == "fp32"


def test_sampling_leaves_no_inference_tensor_in_the_model():
    """Sampling runs under inference mode; what a module keeps from it (Normalize's tables) must
    still serve training, whose inputs may require grad."""
    model = seeded_model("tiny_ar")
    fractalgen.sample(model, labels=[0], seed=0)
    level = model.levels[0]
    assert level.normalize._tables and not any(t.is_inference() for pair in level.normalize._tables.values()
                                               for t in pair)
    patch = torch.rand(1, len(level.normalize.mean) * level.config.patch_size ** 2, requires_grad=True)
    level.normalize(patch * 255).sum().backward()  # the sampler's table; raised "Inference tensors ..." before


def test_auto_precision_is_bf16_only_on_gpus_with_native_bf16(monkeypatch):
    """auto: bf16 from compute capability 8.0 (Ampere) on, fp32 on older GPUs (bf16 emulated there);
    bf16 asked of a GPU that cannot run it is one error, not autocast's RuntimeError."""
    from fractalgen.errors import UserError
    from fractalgen.nn import resolve_precision

    for capability, expected in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolve_precision("auto", "cuda") == expected
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(UserError, match="cannot run bf16"):
        resolve_precision("bf16", "cuda")


def test_fp32_islands_hold_under_autocast(monkeypatch):
    """Autocast lists SDPA among its bf16 ops: the attention (and the pixel logits) must run with it
    switched off, on the fp32 tensors they are handed, or the fp32 islands are silently bf16."""
    from fractalgen.nn import attention

    seen = []
    sdpa = attention.F.scaled_dot_product_attention

    def recording(q, k, v, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), q.dtype))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording)
    model = seeded_model("tiny_mar_gp4").train()
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(images, torch.tensor([1, 2]), masks=["all"] * model.config.num_levels)
    loss.backward()
    assert seen and all(state == (False, torch.float32) for state in seen)
    head = model.pixel_head
    h = torch.randn(4, head.cond_proj.in_features)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert head.logits(h, torch.zeros(4, 3, dtype=torch.long)).dtype == torch.float32
        assert head._next_channel_logits(torch.randn(4, head.config.width), 0).dtype == torch.float32
