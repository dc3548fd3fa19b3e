"""A training run's `checkpoint.pt`, read and written: everything needed to resume.

    {"model": state dict (our names), "optimizer": its state dict, "step": int,
     "data_position": batches consumed, "epoch": float, "rng": [one dict of random states per rank],
     "config": ModelConfig as JSON text, "sampling": the model's recommendation as JSON text,
     "options": TrainOptions as JSON text, "world_size": int}

train.py gathers the pieces (collectively, under torchrun) and resumes from them; this module only
stores and checks them. The file is read by the same safe unpickler as the official format.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import UserError
from ..files import atomic_write
from ..jsonfile import parse_object
from .official import safe_torch_load

CHECKPOINT_NAME = "checkpoint.pt"


def write_checkpoint(folder: Path, *, model: dict, optimizer: dict, step: int, per_epoch: int, rng: list,
                     config: ModelConfig, options: dict, world_size: int, keep: bool = False,
                     sampling: dict | None = None):
    """`folder`/checkpoint.pt, written atomically; `keep` also writes a checkpoint-{step}.pt copy.
    `sampling`: the model's recommended sampling settings (model.recommended)."""
    state = {
        "model": model,
        "optimizer": optimizer,
        "step": step,
        "data_position": step,  # batches consumed; the order itself is drawn from (seed, epoch)
        "epoch": step / per_epoch,
        "rng": rng,
        "config": config.to_json(),
        "sampling": json.dumps(sampling or {}),
        "options": json.dumps(options),
        "world_size": world_size,
    }
    atomic_write(lambda f: torch.save(state, f), folder / CHECKPOINT_NAME)
    if keep:
        atomic_write(lambda f: torch.save(state, f), folder / f"checkpoint-{step:07d}.pt")


def read_checkpoint(path: str | Path) -> dict:
    """A run folder's (or a file's) checkpoint, its config and options parsed, its shape checked."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError(f"--resume: no training checkpoint at {path}")
    state = safe_torch_load(path)
    missing = [k for k in ("model", "optimizer", "step", "rng", "config") if k not in state]
    if missing:
        raise UserError(f"--resume: {path} is not a training checkpoint (missing {', '.join(missing)})")
    # A damaged or hand-edited file fails here, not deep inside the loop; its config and options are
    # JSON text, read as every JSON file is (jsonfile.py).
    for key in ("config", "sampling", "options"):
        text = state.get(key, "{}")
        if not isinstance(text, str):
            raise UserError(f"--resume: {path} is damaged (its {key} is not JSON text)")
        state[key] = parse_object(text, f"--resume: {path}: the stored {key}")
    step = state["step"]
    well_formed = (isinstance(step, int) and not isinstance(step, bool) and step >= 0
                   and isinstance(state["model"], dict) and isinstance(state["optimizer"], dict)
                   and isinstance(state["rng"], list) and all(isinstance(r, dict) for r in state["rng"]))
    if not well_formed:
        raise UserError(f"--resume: {path} is damaged (its step, weights, optimizer state or random states "
                        f"are malformed)")
    return state
