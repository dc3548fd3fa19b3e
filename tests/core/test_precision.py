"""Precision: bf16 autocast in training and sampling, the fp32 islands inside it, and what `auto` chooses."""

import pytest
import torch
from frame import tiny_model

import fractalgen


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar_gp4"])
def test_bf16_autocast_runs(name):
    """The precision policy is the caller's: under bf16 autocast loss, backward and sampling work and
    the loss stays close to fp32 (fp32 islands: attention logits, pixel logits)."""
    model = tiny_model(name, perturb=0.3)
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


def test_sampling_precision_reaches_the_model_and_fp32_is_the_cpu_default():
    """precision bf16 runs the levels under bf16 autocast (a linear's output is bf16) and the inpainting
    path too; auto on a CPU is fp32, the very same images; fp32 holds even inside a caller's autocast;
    an unknown name fails before any work."""
    from fractalgen.nn import precision_in_effect, resolve_precision

    model = tiny_model("tiny_mar_gp4", perturb=0.3)
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


def test_bf16_is_refused_where_the_gpu_only_emulates_it(monkeypatch):
    """V100 and T4 (compute capability 7.x) report bf16 as supported, but emulate it: training or sampling
    there in bf16 is slower than fp32, so asking for it is one error line; 8.0 and up run it."""
    from fractalgen.errors import UserError
    from fractalgen.nn import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    for capability in ((7, 0), (7, 5)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        with pytest.raises(UserError, match=f"compute capability {capability[0]}.{capability[1]}.*only emulates"):
            resolve_precision("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_precision("bf16", "cuda") == "bf16"


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
    model = tiny_model("tiny_mar_gp4", perturb=0.3).train()
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
