"""A model's memory, counted from its config before anything is built, and the check that refuses a model this
machine cannot hold: one line naming the model's size and the memory there is, before any allocation."""
import json
import resource
import shutil

import pytest
import torch
from frame import TINY, small_config, tiny_config, tiny_model

import fractalgen
from fractalgen import memory
from fractalgen.config import PRESETS, ConfigError
from fractalgen.footprint import TENSOR_OVERHEAD, WEIGHT_BYTES, check_fits, model_size

# A model of some 19 trillion parameters: no machine holds it, and only allocating it would show that.
HUGE = {**TINY, "widths": [2**20, 2**19, 2**18], "heads": [2, 2, 2]}


@pytest.mark.parametrize("config", [*PRESETS.values(), tiny_config(), tiny_config(num_classes=0, blocks=[0, 2, 0]),
                                    small_config((12, 4, 2, 1), ("mar", "ar", "mar"), channels=3, guiding=True),
                                    small_config((6, 3, 1), ("ar", "mar"), channels=2, num_classes=0)],
                         ids=lambda c: c.name if c.name != "custom" else "/".join(c.kinds))
def test_the_count_from_the_config_is_the_built_models(config):
    with torch.device("meta"):
        model = fractalgen.build(config)
    parameters = list(model.parameters())
    size = model_size(config)
    assert size.parameters == sum(p.numel() for p in parameters)
    assert size.tensors == len(parameters) == len(model.state_dict())


def test_a_model_too_large_for_this_machine_is_refused_before_it_is_built():
    with pytest.raises(ConfigError, match=r"'tiny_gray' \(19\.\dT parameters\) needs [\d.]+ GiB for its fp32 weights, "
                                          r"more than the [\d.]+ [GM]iB"):
        fractalgen.build(HUGE)
    with torch.device("meta"):  # no allocation: the loaders' way of reading a file's shapes
        assert fractalgen.build(HUGE).null_class.is_meta


def test_the_address_space_limit_counts(monkeypatch):
    """Under `ulimit -v` what the limit leaves is the memory there is, whatever the system has free."""
    used = memory.proc_field("/proc/self/status", "VmSize")
    if used is None:
        pytest.skip("no /proc/self/status here")
    room = 2**16  # 64 KiB left: less than the tiny model's weights
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (used + room, resource.RLIM_INFINITY))
    assert memory.host_room().bytes <= room and "RLIMIT_AS" in memory.host_room().source
    assert model_size(tiny_config()).bytes(WEIGHT_BYTES) > room
    with pytest.raises(ConfigError, match=r"needs [\d.]+ MiB for its fp32 weights, more than the [\d.]+ MiB left "
                                          r"under this process's address-space limit \(RLIMIT_AS\)"):
        fractalgen.build(tiny_config())


def test_without_a_figure_for_the_memory_the_check_steps_aside(monkeypatch):
    """Another OS: no /proc, no sysconf, no resource limits; nothing is refused for want of a figure."""
    monkeypatch.setattr(memory, "proc_field", lambda path, name: None)
    monkeypatch.setattr(memory, "address_space_left", lambda: None)
    monkeypatch.setattr(memory.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert memory.host_room() is None and memory.device_room("mps") is None
    check_fits(fractalgen.get_config(HUGE))
    check_fits(fractalgen.get_config(HUGE), "cpu", training=True)


def test_training_needs_four_copies_and_sharding_divides_them(monkeypatch):
    size = model_size(tiny_config())
    room = memory.Room(size.bytes(2 * WEIGHT_BYTES), "in the test")  # the weights twice over
    monkeypatch.setattr("fractalgen.footprint.device_room", lambda device: room)
    check_fits(tiny_config())
    with pytest.raises(ConfigError, match="to train .*AdamW's two moments"):  # weights, gradients and two moments
        check_fits(tiny_config(), training=True)
    check_fits(tiny_config(), training=True, shards=4)  # a quarter of them
    assert size.bytes(16, shards=4) == -(-size.parameters * 16 // 4) + size.tensors * TENSOR_OVERHEAD


def test_a_model_folder_whose_config_is_forged_is_refused_before_it_is_built(tmp_path):
    """The weights stay small; config.json claims huge widths, or a million blocks (whose meta-device
    build alone would take hours): one line each, at once."""
    fractalgen.save_pretrained(tiny_model(TINY), tmp_path / "folder")
    config = json.loads((tmp_path / "folder" / "config.json").read_text())
    cases = {"wide": ({"embed_dim_list": HUGE["widths"]}, r"\(19\.\dT parameters\) needs [\d.]+ GiB"),
             "deep": ({"num_blocks_list": [2**20, 1, 1]}, r"model of \d+ weight tensors \(\d+G parameters\), "
                                                          r"the file holds \d+")}
    for name, (change, message) in cases.items():
        shutil.copytree(tmp_path / "folder", tmp_path / name)
        (tmp_path / name / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(fractalgen.CheckpointError, match=message):
            fractalgen.load(tmp_path / name)
    with pytest.raises(fractalgen.CheckpointError, match="GiB for its fp32 weights"):  # a config given for the file
        fractalgen.load(tmp_path / "folder" / "model.safetensors", config=HUGE)
