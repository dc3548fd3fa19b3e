"""The sampler never waits on the host per step when nothing is known and nothing is coded, and a
training step waits once, for its status, plus what the MAR levels' data-dependent shapes need.

On a GPU every op whose result the host must read (a scalar, a data-dependent shape) stops the
queue until the device catches up. The same ops run on the CPU, so we count them there under a
dispatch mode: the count per `sample` call must not grow with the number of steps.
"""
import collections
import os
import traceback

import pytest
import torch
from frame import tiny_config, tiny_data, tiny_model, train_options
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fractalgen
from fractalgen.nn.attention import Attention
from fractalgen.nn.decode import AttentionStep
from fractalgen.sampling import Known

# Ops that read device data back to the host: a scalar (item, bool(), ==), a data-dependent shape,
# or a check of the values (multinomial validates its probabilities with two scalar reads). The mode
# sees the outermost op only (under inference mode nonzero arrives as nonzero_numpy, and a boolean
# index does its nonzero inside aten::index), so those are named too.
HOST_READS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::nonzero",
              "aten::nonzero_numpy", "aten::argwhere", "aten::masked_select", "aten::multinomial",
              "aten::unique_consecutive", "aten::_unique2", "aten::repeat_interleave"}
INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in HOST_READS:
            self.ops.append(name)
        elif name in INDEXING and any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1]):
            self.ops.append(f"{name} (boolean mask)")
        return func(*args, **(kwargs or {}))


def host_reads(model, num_iter, labels=(0, 3, 9)):
    with HostReads() as counter:
        fractalgen.sample(model, labels=list(labels), cfg=3.0, seed=1, num_iter=num_iter, batch_size=None)
    return counter.ops


@pytest.mark.parametrize("name", ["tiny_mar", "tiny_mar_gp4"])
def test_mar_sampling_reads_the_host_a_constant_number_of_times(name):
    model = tiny_model(name)
    levels = model.config.num_levels
    few, many = host_reads(model, (2,) * levels), host_reads(model, (8,) * levels)
    assert few == many
    assert len(many) <= 2, many  # the labels' range check, not one per step


def test_ar_sampling_reads_the_host_a_constant_number_of_times():
    """AR levels take one step per patch: a grid of 4 patches against one of 16."""
    small, large = tiny_model("tiny_ar", img_sizes=(8, 4, 1)), tiny_model("tiny_ar")
    assert host_reads(small, None) == host_reads(large, None)
    assert len(host_reads(large, None)) <= 2


def test_unguided_sampling_reads_the_host_a_constant_number_of_times():
    model = tiny_model("tiny_mar")
    with HostReads() as few:
        fractalgen.sample(model, n=2, seed=1, num_iter=(2, 2))
    with HostReads() as many:
        fractalgen.sample(model, n=2, seed=1, num_iter=(8, 8))
    assert few.ops == many.ops and len(many.ops) <= 2


def test_the_counter_sees_host_reads():
    x = torch.arange(3)
    with HostReads() as counter:
        torch.multinomial(torch.tensor([[0.5, 0.5]]), 1)
        x.nonzero()
        x[x > 0]
        bool(x.sum())
        with torch.inference_mode():
            (x > 0).nonzero(as_tuple=True)
    assert counter.ops == ["aten::multinomial", "aten::nonzero", "aten::index (boolean mask)",
                           "aten::_local_scalar_dense", "aten::nonzero_numpy"]


def test_bf16_kv_cache_is_stored_in_fp32():
    """Attention runs in fp32 (an island): under bf16 autocast the cache holds fp32 keys and values,
    cast once when written, not the whole cache at every decoding step."""
    attention = Attention(16, 2, bias=True).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        step = AttentionStep(attention, rows=2, max_len=4)
        assert step.qkv.w.dtype == torch.bfloat16  # the projections run in bf16
        for t in range(3):
            out = step(torch.randn(2, 16), t)
            assert out.dtype == torch.bfloat16
    kv = step.cache.kv
    assert kv.dtype == torch.float32 and kv[:, :, :3].abs().sum() > 0 and kv[:, :, 3:].eq(0).all()


@pytest.mark.parametrize("name, steps", [("tiny_ar", 1), ("tiny_mar", 3), ("tiny_mar", 16), ("tiny_mar_gp4", 5)])
def test_counting_on_the_host_draws_what_reading_the_device_draws(name, steps):
    """With nothing known the sampler counts reveals on the host; an empty known mask takes the
    inpainting path, which reads them from the device. The same seed gives the same images."""
    torch.manual_seed(0)
    model = fractalgen.build(fractalgen.get_config(name)).eval()
    shape = (2, model.config.channels, model.config.img_size, model.config.img_size)
    empty = Known(torch.zeros(shape), torch.zeros(shape, dtype=torch.bool))
    runs = []
    for known in (None, empty):
        generator = torch.Generator().manual_seed(4)
        runs.append(model.generate(labels=[1, 2], cfg=2.0, num_iter=(steps,) * model.config.num_levels,
                                   generator=generator, known=known) + (generator.get_state(),))
    for host, device in zip(*runs, strict=True):
        assert torch.equal(host, device)


# ---- training ---------------------------------------------------------------------------------

PACKAGE = os.path.dirname(fractalgen.__file__) + os.sep  # frames in fractalgen's own files
# Reads of tensors that live on the host in a GPU run too, which the CPU cannot tell apart: the data
# (loading and batch order, data.py) and AdamW's step counts (host tensors unless capturable or fused).
HOST_SIDE = (os.path.join(PACKAGE, "data.py"), os.path.dirname(torch.optim.__file__) + os.sep)
# Reads that never reach the dispatcher for a CPU tensor (its data is read in place), seen as the
# methods called: on a GPU each copies from the device first.
READ_METHODS = {"tolist", "numpy", "cpu"}


class TrainingReads(HostReads):
    """HostReads, plus the READ_METHODS; each read named by the innermost fractalgen function making
    it, the host-side ones (HOST_SIDE) left out."""

    def __enter__(self):
        self.methods = MethodReads(self.record)
        self.methods.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self.methods.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = len(self.ops)
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if len(self.ops) > before:
            self.ops.pop()
            self.record()
        return out

    def record(self):
        frames = traceback.extract_stack()
        if not any(f.filename.startswith(HOST_SIDE) for f in frames):
            self.ops.append(next(f.name for f in reversed(frames) if f.filename.startswith(PACKAGE)))


class MethodReads(TorchFunctionMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in READ_METHODS:
            self.record()
        return func(*args, **(kwargs or {}))


def training_reads(tmp_path, config, steps: int, **options) -> collections.Counter:
    data = tiny_data(tmp_path / f"d{steps}.npz")
    with TrainingReads() as counter:
        fractalgen.train.train(config, train_options(tmp_path / f"r{steps}", data, steps=steps, save_every=1000,
                                                     **options))
    return collections.Counter(counter.ops)


@pytest.mark.parametrize("kinds, masks, per_step", [
    (["ar", "ar"], "official", {"reduce_status": 1}),
    # A MAR level passes only its masked patches down: one data-dependent shape (nonzero) per level.
    (["mar", "mar"], "uniform", {"reduce_status": 1, "forward_train": 2}),
    # The official mask ratio is truncated by resampling: one more read per level, to see whether to.
    (["mar", "mar"], "official", {"reduce_status": 1, "forward_train": 2, "training_mask": 2}),
])
def test_a_training_step_reads_the_device_once_plus_the_mar_levels_shapes(tmp_path, kinds, masks, per_step):
    """Each step reads its status (loss, gradient norm, stop) back once; nothing else in the loop, the
    labels' check included (the data was checked when loaded), waits for the device."""
    config = tiny_config(kinds=kinds)
    few = training_reads(tmp_path, config, 2, mar_masks=masks)
    many = training_reads(tmp_path, config, 5, mar_masks=masks)
    added = many - few  # the reads of 3 more steps
    assert added == collections.Counter({name: 3 * n for name, n in per_step.items()}), (few, many)
    assert many - collections.Counter({name: 5 * n for name, n in per_step.items()}) == few - collections.Counter(
        {name: 2 * n for name, n in per_step.items()})  # the rest is a constant (setup, the last checkpoint)


def test_the_training_counter_sees_a_read_in_the_loop(tmp_path, monkeypatch):
    """A label check on the device in every step (what the loop used to do) shows up as one read a step."""
    from fractalgen.model import FractalModel

    loss = FractalModel.loss
    monkeypatch.setattr(FractalModel, "loss", lambda self, *args, labels_checked, **kwargs: loss(self, *args, **kwargs))
    config = tiny_config()
    added = training_reads(tmp_path, config, 5) - training_reads(tmp_path, config, 2)
    assert added == collections.Counter({"reduce_status": 3, "check_labels": 3})


def test_sampling_reads_a_constant_number_of_times_counting_the_reads_the_dispatcher_misses():
    """.tolist(), .numpy() and .cpu() of a CPU tensor never reach the dispatch mode: counted as calls."""
    model = tiny_model("tiny_mar")
    counts = []
    for steps in (2, 8):
        with TrainingReads() as counter:
            fractalgen.sample(model, labels=[0, 3, 9], cfg=3.0, seed=1, num_iter=(steps, steps), batch_size=None)
        counts.append(collections.Counter(counter.ops))
    assert counts[0] == counts[1] and sum(counts[1].values()) <= 2, counts  # the labels: read once, checked once
