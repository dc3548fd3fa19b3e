"""Library entry points choose CPU threads for the length of one call and give the caller's count back."""
from __future__ import annotations

import math

import pytest
import torch
from frame import small_config, tiny_model

import fractalgen
from fractalgen import runtime
from fractalgen.errors import UserError

CONFIG = small_config((4, 2, 1), ("ar", "ar"), num_classes=3, widths=(32, 32, 32))


ENTRY_POINTS = {
    "sample": lambda m, **kw: fractalgen.sample(m, labels=[0, 1], seed=0, **kw),
    "inpaint": lambda m, **kw: fractalgen.inpaint(m, torch.zeros(1, 1, 4, 4, dtype=torch.uint8),
                                                  torch.zeros(4, 4, dtype=torch.bool), seed=0, **kw),
    "edit": lambda m, **kw: fractalgen.edit(m, torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 1, seed=0, **kw),
    "bits_per_dim": lambda m, **kw: fractalgen.bits_per_dim(m, torch.zeros(2, 1, 4, 4, dtype=torch.uint8), **kw),
    "pixel_bits": lambda m, **kw: fractalgen.pixel_bits(m, torch.zeros(2, 1, 4, 4, dtype=torch.uint8), **kw),
    "compress": lambda m, **kw: fractalgen.compress(m, torch.zeros(2, 1, 4, 4, dtype=torch.uint8), **kw),
    "decompress": lambda m, **kw: fractalgen.decompress(m, m.compressed, **kw),
}


def threads_seen(model, call, **kwargs) -> set[int]:
    """The torch thread counts the model's modules ran with during `call(model, **kwargs)`."""
    model.compressed = fractalgen.compress(model, torch.zeros(1, 1, 4, 4, dtype=torch.uint8), threads=None)
    seen = set()
    for module in model.modules():
        module.register_forward_pre_hook(lambda *_: seen.add(torch.get_num_threads()))
    call(model, **kwargs)
    return seen


@pytest.fixture
def untouched_default(monkeypatch):
    """The process as torch left it (one thread here), with 'auto' choosing two threads."""
    for name in runtime.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", torch.get_num_threads())
    monkeypatch.setattr(runtime, "auto_threads", lambda: 2)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_auto_applies_for_the_call_and_restores(name, untouched_default):
    model = tiny_model(CONFIG)
    assert threads_seen(model, ENTRY_POINTS[name]) == {2}
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("name", ["sample", "bits_per_dim", "compress"])
def test_a_count_the_caller_chose_is_kept(name, untouched_default, monkeypatch):
    monkeypatch.setattr(runtime, "TORCH_DEFAULT_THREADS", 3)  # the caller moved torch off its default
    model = tiny_model(CONFIG)
    assert threads_seen(model, ENTRY_POINTS[name]) == {1}
    assert threads_seen(model, ENTRY_POINTS[name], threads=2) == {2}  # asked for: given
    assert torch.get_num_threads() == 1


def test_thread_variables_count_as_the_callers_choice(untouched_default, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads_seen(tiny_model(CONFIG), ENTRY_POINTS["sample"]) == {1}


def test_none_leaves_torch_alone_and_bad_counts_are_refused(untouched_default):
    model = tiny_model(CONFIG)
    assert threads_seen(model, ENTRY_POINTS["sample"], threads=None) == {1}
    with pytest.raises(UserError, match="threads"):
        ENTRY_POINTS["sample"](model, threads=0)
    assert torch.get_num_threads() == 1


def test_bits_per_dim_with_labels_is_the_class_conditional_likelihood():
    """An AR model's bits/dim given a class is its pixel bits (the codec's exact pass) given that class."""
    model = tiny_model(CONFIG)
    torch.manual_seed(1)
    with torch.no_grad():
        model.class_embed.weight.mul_(20)  # classes that change the likelihood
    images = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    conditional = fractalgen.bits_per_dim(model, images, labels=[0, 2, 1], threads=None)
    per_value = fractalgen.pixel_bits(model, images, labels=[0, 2, 1], threads=None)
    assert conditional == pytest.approx(float(per_value.mean()), abs=1e-3)
    assert conditional != pytest.approx(fractalgen.bits_per_dim(model, images, threads=None), abs=1e-3)
    assert fractalgen.bits_per_dim(model, images, labels=2) == \
        pytest.approx(fractalgen.bits_per_dim(model, images, labels=[2, 2, 2]))
    for bad, message in [([0, 1], "2 labels for 3 images"), ([0, 1, 3], "0..2"), ([0.5, 1, 1], "integers")]:
        with pytest.raises(ValueError, match=message):
            fractalgen.bits_per_dim(model, images, labels=bad)


@pytest.mark.parametrize("load, others, own, cpus, expected", [
    (0.0, 0, 0.0, 2, 2),  # idle: every CPU
    (0.0, 2, 0.0, 2, 1),  # two jobs that began a moment ago: the 1-minute average has not seen them yet
    (2.0, 0, 0.0, 2, 1),  # jobs that pause at this moment but kept the CPUs busy over the last minute
    (1.0, 0, 1.0, 2, 2),  # the average is this process's own work: not a competitor
    (2.0, 0, 1.0, 2, 1),  # ... beside one other job's
    (1.0, 1, 0.0, 4, 3),
    (9.0, 9, 0.0, 2, 1),  # never fewer than one
])
def test_auto_counts_the_cpus_other_work_leaves_idle_now(monkeypatch, load, others, own, cpus, expected):
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime, "others_runnable_now", lambda: others)
    monkeypatch.setattr(runtime, "own_cpu_use", lambda: own)
    monkeypatch.setattr(runtime, "usable_cpus", lambda: cpus)
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 8)
    assert runtime.auto_threads() == expected


def test_other_runnable_work_leaves_this_process_out_and_survives_the_kernels_silence(monkeypatch):
    assert runtime.own_runnable() >= 1  # this thread, reading
    assert runtime.others_runnable_now() >= 0
    monkeypatch.setattr(runtime, "system_runnable", lambda: 3)
    monkeypatch.setattr(runtime, "own_runnable", lambda: 2)
    assert runtime.others_runnable_now() == 1
    monkeypatch.setattr(runtime, "system_runnable", lambda: (_ for _ in ()).throw(OSError("no /proc")))
    assert runtime.others_runnable_now() == 0


def test_own_cpu_use_follows_the_load_average_of_this_process(monkeypatch):
    clock = {"wall": 100.0, "cpu": 50.0}
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(runtime.time, "process_time", lambda: clock["cpu"])
    monkeypatch.setattr(runtime, "_own", {"wall": 100.0, "cpu": 50.0, "load": 0.0})
    clock.update(wall=102.0, cpu=52.0)  # two seconds of work since the import: a small part of a minute
    assert runtime.own_cpu_use() == pytest.approx(1 - math.exp(-2 / 60))
    clock.update(wall=402.0, cpu=652.0)  # then two busy threads for five minutes: the whole of its load
    busy = runtime.own_cpu_use()
    assert busy == pytest.approx(2.0, rel=1e-2)
    clock.update(wall=702.0)  # five idle minutes: it fades as the kernel's average does
    assert runtime.own_cpu_use() == pytest.approx(busy * math.exp(-5))
