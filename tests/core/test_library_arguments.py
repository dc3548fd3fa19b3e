"""The library's argument checks: one rule per argument, the same in every entry point, each refusal a
ValueError or TypeError (or the project's error class, a subclass) naming the argument."""
import numpy as np
import pytest
import torch
from frame import tiny_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize("seed", [-1, 2**31, 2**70, 1.5, "7", True])
def test_a_seed_outside_the_command_lines_range_is_refused_by_name(model, seed):
    """One rule for seeds: an integer in 0..SEED_MAX (None: torch's global stream), as --seed takes it; a
    float is not truncated, and 2**70 is not torch's overflow."""
    images, known = torch.zeros(1, 1, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.bool)
    for call in (lambda: fractalgen.sample(model, n=1, seed=seed),
                 lambda: fractalgen.inpaint(model, images, known, seed=seed),
                 lambda: fractalgen.edit(model, images, 1, seed=seed)):
        with pytest.raises(ValueError, match=r"seed must be an integer in 0\.\.2147483647"):
            call()


def test_counts_whose_images_cannot_fit_are_refused_by_name(model):
    """Not torch's 'integer multiplication overflow', nor an allocation until the machine gives out."""
    with pytest.raises(ValueError, match=r"n \(how many images\) = 4611686018427387904 asks for [\d.]+ GiB of images"):
        fractalgen.sample(model, n=2**62, batch_size=None)
    images, known = torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"n \(completions per image\) = 1099511627776 asks for [\d.]+ GiB"):
        fractalgen.inpaint(model, images, known, n=2**40)
    with pytest.raises(ValueError, match=r"n \(completions per image\) must be an integer >= 1, got '2'"):
        fractalgen.inpaint(model, images, known, n="2")


@pytest.mark.parametrize("labels", [2**70, [0, -2**64], np.array([2**63], dtype=np.uint64)])
def test_labels_beyond_64_bits_are_out_of_range_not_an_overflow(model, labels):
    with pytest.raises(ValueError, match=r"label (1180591620717411303424|-18446744073709551616|9223372036854775808) "
                                         r"is out of range"):
        fractalgen.sample(model, labels=labels)


# ---- fuzzed arguments: images, or a ValueError/TypeError naming an argument ------------------------------

NAMES = ("label", "n (", "batch_size", "seed", "cfg", "temperature")  # what each refusal must name
ODD = st.floats() | st.text(max_size=2) | st.booleans() | st.just(np.float64(1.0)) | st.integers(2**63, 2**70)
COUNTS = st.none() | st.integers(-2, 3) | st.just(np.int64(2)) | st.integers(2**40, 2**70) | ODD
LABEL = st.integers(-2, 3) | ODD
LABELS = (st.none() | LABEL | st.lists(LABEL, max_size=3) | st.lists(st.integers(-1, 2), max_size=3).map(np.array)
          | st.lists(st.integers(0, 1), max_size=3).map(torch.tensor)
          | st.lists(st.floats(0, 2), min_size=1, max_size=2).map(torch.tensor))
SETTING = st.none() | st.floats() | st.integers(-3, 3) | st.text(max_size=2) | st.just(1e5) | st.just([1.0])


ARGUMENTS = {"n": COUNTS, "labels": LABELS, "batch_size": COUNTS, "seed": st.none() | st.integers(-1, 2**31) | ODD,
             "cfg": SETTING, "temperature": SETTING}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(["sample", "inpaint", "edit"]),
       chosen=st.dictionaries(st.sampled_from(sorted(ARGUMENTS)), st.none(), min_size=1, max_size=3).flatmap(
           lambda names: st.fixed_dictionaries({name: ARGUMENTS[name] for name in names})))
def test_fuzzed_arguments_give_images_or_name_the_argument(model, call, chosen):
    """A few arguments drawn (the rest as a caller would give them): images, or a ValueError or TypeError
    (the project's errors are ValueErrors) whose one line names an argument."""
    images = torch.randint(0, 256, (2, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[:3] = True
    given = {"labels": [1, 0], "seed": 0, **chosen}
    labels, n, batch_size = given.pop("labels"), given.pop("n", None), given.pop("batch_size", None)
    try:
        if call == "sample":
            out = fractalgen.sample(model, labels=labels, n=n, batch_size=batch_size, **given)
        elif call == "inpaint":
            out = fractalgen.inpaint(model, images, known, labels=labels, **({} if n is None else {"n": n}), **given)
        else:
            out = fractalgen.edit(model, images, labels, known, **({} if n is None else {"n": n}), **given)
    except (ValueError, TypeError) as e:
        assert any(name in str(e) for name in NAMES) and "\n" not in str(e), str(e)
        return
    assert out.dtype == torch.uint8 and tuple(out.shape[1:]) == (1, 8, 8)
    if call != "sample":  # the known rows come back as they were
        assert out.shape[0] == 2 * (1 if n is None else n)
        assert torch.equal(out[:, :, :3], images.repeat_interleave(out.shape[0] // 2, 0)[:, :, :3])
