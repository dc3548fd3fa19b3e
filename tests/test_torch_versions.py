"""The torch the package declares (pyproject.toml) against the torch its code needs.

Every import made inside a function (the optional code paths: FSDP, sharded checkpoints, gradient
checkpointing, TensorBoard) is either available at the declared minimum or gated by
runtime.NEWER_TORCH, which turns a too-old torch into one clear line instead of an ImportError.
"""
import ast
import importlib
import importlib.util
import re

import pytest
import torch
from frame import ROOT

from fractalgen.errors import UserError
from fractalgen.runtime import NEWER_TORCH, require_torch, torch_version

# The torch release that made each ungated optional import public (the project's claim, checked
# against the declared minimum below; a new function-level torch import must be added here or gated).
PUBLIC_SINCE = {
    "torch.utils.checkpoint.checkpoint": (1, 4),
    "torch.utils.tensorboard.SummaryWriter": (1, 2),
    "torch.distributed.checkpoint.state_dict.StateDictOptions": (2, 2),
    "torch.distributed.checkpoint.state_dict.get_model_state_dict": (2, 2),
    "torch.distributed.checkpoint.state_dict.get_optimizer_state_dict": (2, 2),
    "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict": (2, 2),
}
# torch's loading and autocast APIs moved between releases: every name the code reaches under these
# prefixes (as an attribute, e.g. torch.serialization.safe_globals) says since when torch has it.
MOVING = ("torch.serialization.", "torch.get_autocast_", "torch.is_autocast_", "torch.set_autocast_")
ATTRIBUTES_SINCE = {
    "torch.serialization.safe_globals": (2, 5),  # the context manager; 2.4 had only add_safe_globals
    "torch.get_autocast_dtype": (2, 4),
    "torch.is_autocast_enabled": (2, 4),  # with the device type as its argument
}


def declared_minimum() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.findall(r'"torch>=(\d+)\.(\d+)', text)
    assert len(found) == 1, found  # one torch requirement, with a lower bound
    return int(found[0][0]), int(found[0][1])


def optional_torch_imports() -> set[str]:
    """`module.name` for every `from torch... import name` inside a function in src/fractalgen."""
    found = set()
    for path in (ROOT / "src" / "fractalgen").rglob("*.py"):
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                    found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def torch_attributes() -> set[str]:
    """Every dotted name `torch.a.b...` the code in src/fractalgen reaches, at each of its lengths."""
    found = set()
    for path in (ROOT / "src" / "fractalgen").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            parts = []
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id == "torch" and parts:
                found.add(".".join(["torch", *reversed(parts)]))
    return found


def test_every_moving_torch_attribute_is_available_at_the_declared_minimum():
    minimum = declared_minimum()
    used = {name for name in torch_attributes() if name.startswith(MOVING)}
    assert "torch.serialization.safe_globals" in used  # the scan sees attribute chains
    for name in sorted(used):
        assert name in ATTRIBUTES_SINCE, f"{name}: say since when torch has it"
        assert ATTRIBUTES_SINCE[name] <= minimum, f"{name} needs torch {ATTRIBUTES_SINCE[name]}: raise the minimum"
        module, attribute = name.rsplit(".", 1)
        assert hasattr(importlib.import_module(module), attribute), name  # and it exists on this torch


def test_every_optional_torch_import_is_available_at_the_declared_minimum_or_gated():
    minimum = declared_minimum()
    imports = optional_torch_imports()
    assert "torch.distributed.fsdp.fully_shard" in imports  # the scan sees function-level imports
    for name in sorted(imports):
        assert name in NEWER_TORCH or name in PUBLIC_SINCE, f"{name}: say since when torch has it, or gate it"
        if name in PUBLIC_SINCE:
            assert PUBLIC_SINCE[name] <= minimum, f"{name} needs torch {PUBLIC_SINCE[name]}: gate it"
    for name, needed in NEWER_TORCH.items():
        assert name in imports, f"{name} is gated but no longer imported: drop the gate"
        assert needed > minimum, f"{name} is gated at {needed}, not above the minimum {minimum}: drop the gate"


def test_every_optional_torch_import_resolves_on_this_torch():
    """Each one really exists here (a misspelt or moved name fails now, not on a GPU cluster)."""
    for name in sorted(optional_torch_imports()):
        module, attribute = name.rsplit(".", 1)
        if name in NEWER_TORCH and torch_version() < NEWER_TORCH[name]:
            continue
        if module == "torch.utils.tensorboard" and importlib.util.find_spec("tensorboard") is None:
            continue  # optional: needs the tensorboard package, and train.py says so when it is missing
        assert hasattr(importlib.import_module(module), attribute), name


def test_fsdp_on_an_older_torch_is_one_clear_line(monkeypatch, tmp_path):
    from fractalgen.config import get_config
    from fractalgen.train import TrainOptions, train

    require_torch("torch.distributed.fsdp.fully_shard", "--fsdp")  # this torch is new enough
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(UserError, match=r"--fsdp needs torch >= 2\.6 .*this is torch 2\.5\.1"):
        train(get_config("mnist_mar"), TrainOptions(out=str(tmp_path / "run"), data="mnist", steps=1, batch_size=2,
                                       fsdp=True, device="cpu", sample_every=0))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
