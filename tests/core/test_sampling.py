"""Sampling through the library: shapes and seeds, unconditional models, the guidance filter, and a model
left fit for training afterwards."""

import pytest
import torch
from frame import tiny_model

import fractalgen
from fractalgen.config import PRESETS


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar", "tiny_mar_gp4"])
def test_sample_shapes_and_determinism(name):
    model = tiny_model(name, perturb=0.3)
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


def test_sampling_leaves_no_inference_tensor_in_the_model():
    """Sampling runs under inference mode; what a module keeps from it (Normalize's tables) must
    still serve training, whose inputs may require grad."""
    model = tiny_model("tiny_ar", perturb=0.3)
    fractalgen.sample(model, labels=[0], seed=0)
    level = model.levels[0]
    assert level.normalize._tables and not any(t.is_inference() for pair in level.normalize._tables.values()
                                               for t in pair)
    patch = torch.rand(1, len(level.normalize.mean) * level.config.patch_size ** 2, requires_grad=True)
    level.normalize(patch * 255).sum().backward()  # the sampler's table; raised "Inference tensors ..." before
