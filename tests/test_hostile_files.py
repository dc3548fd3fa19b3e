"""Hostile files built in the tests: each ends in correct work or one clear line, within seconds and bounded memory.

Every case runs in a child process with a time limit and an address-space limit (tests/bounded.py),
so a regression shows as a failed test, not a hung or swapping machine.
"""
import argparse
import json

import pytest
import torch
from bounded import assert_one_line_error, run_cases
from safetensors.torch import save_file

import fractalgen
from fractalgen.checkpoint import official_state_dict

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return fractalgen.build("tiny_ar")


# ---- 1. the safe loader's walk of official `args` is bounded -----------------------------------

def test_shared_and_self_referencing_args_load_in_seconds(tiny_model, tmp_path):
    """A list holding itself, then doubled 60 times: 2**60 paths through 62 objects (the walk that hung)."""
    nested = []
    nested.append(nested)
    for _ in range(60):
        nested = [nested, nested]
    path = tmp_path / "deep.pth"
    torch.save({"model": official_state_dict(tiny_model), "args": argparse.Namespace(model="tiny_ar", nested=nested)},
               path)
    wide = tmp_path / "wide.pth"  # a flat list past the walk's budget is refused, not walked for ever
    torch.save({"model": official_state_dict(tiny_model), "args": argparse.Namespace(model="tiny_ar",
                                                                                     big=[0] * 200_000)}, wide)
    results = run_cases({
        "deep": ["sample", "--checkpoint", path, "--n", "1", "--num-iter", "16,4", "--out", tmp_path / "out",
                 "--device", "cpu", "--threads", "1"],
        "wide": ["sample", "--checkpoint", wide, "--n", "1", "--out", tmp_path / "out2", "--device", "cpu"],
    }, seconds=120)
    code, _, err = results["deep"]
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "out" / "grid.png").is_file()
    assert_one_line_error(results["wide"], "sample", "refusing", "args")


# ---- 4. malformed metadata in our safetensors format -----------------------------------------

def hostile_safetensors(model, folder) -> dict:
    """name -> (path, words the error line must hold). Each file differs from a good one in one respect."""
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = json.loads(model.config.to_json())
    deep = "[" * 100_000 + "]" * 100_000
    metadata = {
        "config-a-list": ({"config": "[1, 2, 3]"}, ["'config' must be a JSON object"]),
        "config-not-json": ({"config": "{{{{"}, ["'config' is not valid JSON"]),
        "config-deep": ({"config": '{"img_sizes": ' + deep + "}"}, ["nested too deeply"]),
        "widths-strings": ({"config": json.dumps({**config, "widths": ["64", "32", "16"]})}, ["'widths'"]),
        "guiding-pixel-int": ({"config": json.dumps({**config, "guiding_pixel": 1})}, ["'guiding_pixel'"]),
        "channels-bool": ({"config": json.dumps({**config, "channels": True})}, ["'channels'"]),
        "cfg-nan": ({"config": json.dumps({**config, "cfg": float("nan")})}, ["'cfg'", "finite"]),
        "huge-width": ({"config": json.dumps({**config, "widths": [2**62, 32, 16]})}, ["'widths'"]),
        "sampling-not-json": ({"sampling": "cfg=3"}, ["'sampling' is not valid JSON"]),
        "sampling-a-list": ({"sampling": "[3.0]"}, ["'sampling' must be a JSON object"]),
        "sampling-deep": ({"sampling": deep}, ["nested too deeply"]),
        "sampling-cfg-text": ({"sampling": json.dumps({"cfg": "high"})}, ["'cfg'"]),
        "sampling-temperature-nan": ({"sampling": json.dumps({"temperature": float("nan")})}, ["'temperature'"]),
        "sampling-temperature-zero": ({"sampling": json.dumps({"temperature": 0})}, ["'temperature'"]),
        "sampling-num-iter": ({"sampling": json.dumps({"num_iter": [4, "x"]})}, ["'num_iter'"]),
        "sampling-schedule": ({"sampling": json.dumps({"cfg_schedule": 7})}, ["'cfg_schedule'"]),
        "sampling-unknown": ({"sampling": json.dumps({"steps": 3})}, ["'steps'"]),
    }
    files = {}
    for name, (meta, words) in metadata.items():
        path = folder / f"{name}.safetensors"
        save_file(tensors, path, metadata={"format": "fractalgen", "config": model.config.to_json(), **meta})
        files[name] = (path, words)
    key = "levels.0.patch_embed.weight"
    for name, value, words in [
        ("int-weights", tensors[key].to(torch.int32), [key, "int32"]),
        ("bool-weights", tensors[key] > 0, [key, "bool"]),
        ("nan-weight", tensors[key].clone().index_fill_(0, torch.tensor([0]), float("nan")), [key, "non-finite"]),
        ("inf-weight", tensors[key].clone().index_fill_(0, torch.tensor([1]), float("inf")), [key, "non-finite"]),
    ]:
        path = folder / f"{name}.safetensors"
        save_file({**tensors, key: value.contiguous()}, path, metadata={"config": model.config.to_json()})
        files[name] = (path, words)
    return files


def test_malformed_metadata_and_weights_are_one_line(tiny_model, tmp_path):
    files = hostile_safetensors(tiny_model, tmp_path)
    cases = {name: ["sample", "--checkpoint", path, "--n", "1", "--out", tmp_path / "out", "--device", "cpu"]
             for name, (path, _) in files.items()}
    cases.update({f"nll-{name}": ["nll", "--checkpoint", files[name][0], "--device", "cpu"]
                  for name in ("nan-weight", "config-deep")})
    results = run_cases(cases, seconds=120)
    for name, (path, words) in files.items():
        assert_one_line_error(results[name], "sample", path.name, *words)
    for name in ("nan-weight", "config-deep"):
        assert_one_line_error(results[f"nll-{name}"], "nll", *files[name][1])
    assert not (tmp_path / "out").exists()


def test_official_checkpoint_with_integer_or_nan_weights_is_refused(tiny_model, tmp_path):
    state = official_state_dict(tiny_model)
    key = next(iter(state))
    bad = {
        "int": ({**state, key: state[key].to(torch.int64)}, "int64"),
        "nan": ({**state, key: torch.full_like(state[key], float("nan"))}, "non-finite"),
    }
    cases = {}
    for name, (weights, _) in bad.items():
        torch.save({"model": weights, "args": argparse.Namespace(model="tiny_ar")}, tmp_path / f"{name}.pth")
        cases[name] = ["sample", "--checkpoint", tmp_path / f"{name}.pth", "--out", tmp_path / "out", "--device", "cpu"]
    results = run_cases(cases, seconds=120)
    for name, (_, word) in bad.items():
        assert_one_line_error(results[name], "sample", key, word)
