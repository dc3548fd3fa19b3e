"""The library's argument checks: one rule per argument, the same in every entry point, each refusal a
ValueError or TypeError (or the project's error class, a subclass) naming the argument."""
import numpy as np
import pytest
import torch
from frame import tiny_config

import fractalgen


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fractalgen.build(tiny_config()).eval()


def test_numpy_labels_are_labels(model):
    from_numpy = fractalgen.sample(model, labels=np.array([1, 0]), seed=0)
    assert torch.equal(from_numpy, fractalgen.sample(model, labels=[1, 0], seed=0))
    with pytest.raises(ValueError, match="class labels must be integers"):
        fractalgen.sample(model, labels=np.array([1.0, 0.0]), seed=0)


@pytest.mark.parametrize("n", [-1, 1.5, True, "2"])
def test_a_count_that_is_no_count_is_refused(model, n):
    with pytest.raises(ValueError, match=r"n \(how many images\) must be an integer >= 0"):
        fractalgen.sample(model, n=n)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, False])
def test_a_batch_size_that_is_no_batch_size_is_refused(model, batch_size):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        fractalgen.sample(model, labels=[1], batch_size=batch_size)


@pytest.mark.parametrize("call", ["inpaint", "edit"])
@pytest.mark.parametrize("labels", [[1.5, 0.0], torch.tensor([1.0, 0.0]), [True, False]])
def test_inpaint_and_edit_refuse_labels_sample_refuses(model, call, labels):
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[:4] = True
    with pytest.raises(ValueError, match="class labels must be integers"):
        if call == "inpaint":
            fractalgen.inpaint(model, images, known, labels=labels)
        else:
            fractalgen.edit(model, images, label=labels)
    with pytest.raises(ValueError, match="class labels must be integers"):
        fractalgen.sample(model, labels=labels)


def test_the_loss_takes_pixel_values_not_scaled_floats(model):
    labels = torch.tensor([0, 1])
    assert model.loss(torch.full((2, 1, 8, 8), 7, dtype=torch.uint8), labels).isfinite()
    assert model.loss(torch.full((2, 1, 8, 8), 7.0), labels).isfinite()  # whole numbers in 0..255 are pixels
    with pytest.raises(ValueError, match="pixel values 0..255"):
        model.loss(torch.rand(2, 1, 8, 8), labels)
    with pytest.raises(ValueError, match="pixel values 0..255"):
        model.loss(torch.full((2, 1, 8, 8), 300.0), labels)
    with pytest.raises(TypeError, match="uint8 pixel values"):
        model.loss(torch.zeros(2, 1, 8, 8, dtype=torch.bool), labels)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, "bfloat16"])
def test_weights_are_saved_in_floating_point_dtypes_only(model, tmp_path, dtype):
    with pytest.raises(ValueError, match="dtype must be a floating-point torch dtype"):
        fractalgen.save_pretrained(model, tmp_path / "folder", dtype=dtype)
    assert not (tmp_path / "folder" / "model.safetensors").exists()
    fractalgen.save_pretrained(model, tmp_path / "ok", dtype=torch.bfloat16)
    assert fractalgen.load(tmp_path / "ok").config.widths == model.config.widths
