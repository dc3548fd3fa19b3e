"""The core against the authors' code: tiny models in the official checkpoint format (tests/data, copied
from the authors' reference material) with the losses the authors' code computed for them."""
import math

import numpy as np
import pytest
import torch
from frame import DATA, reference_vector

import fractalgen


@pytest.mark.parametrize("name", ["tiny_ar", "tiny_mar"])
def test_reference_vectors(name):
    model, images, labels, masks, ref = reference_vector(name)
    with torch.no_grad():
        assert model.loss(images, labels, masks=masks).item() == pytest.approx(ref["train_loss"], abs=1e-4)
        assert model.loss(images, None, masks=masks, train=False).item() == pytest.approx(ref["eval_loss"], abs=1e-4)


def test_reference_vector_guiding_pixel():
    """tiny_mar_gp4: the authors' code rounds the guiding pixel's target after adding N(0, 0.01^2)
    noise (exact .5 ties of patch means go either way); the vector carries the targets exactly as
    their code drew them, and with those fed in both losses match to 1e-5."""
    model, images, labels, masks, ref = reference_vector("tiny_mar_gp4")
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
    model, images, _, masks, _ = reference_vector("tiny_mar")
    with torch.no_grad():
        given = model.nll(images, masks=masks)
        assert torch.equal(given, model.nll(images, masks=masks))
        everything = model.nll(images, masks=["all"] * model.config.num_levels)
    assert not torch.allclose(given, everything)


def test_bits_per_dim_of_tiny_ar_vector():
    model, images, _, _, ref = reference_vector("tiny_ar")
    assert fractalgen.bits_per_dim(model, images) == pytest.approx(ref["eval_loss"] / math.log(2), abs=1e-5)
