"""Model formats: each one read and written by one module.

    official.py  the authors' .pth checkpoints (every parameter rename, the safe unpickler)
    ours.py      one safetensors file with the config and recommended settings as metadata
    folder.py    model folders (config.json + model.safetensors + README.md), by path or hub id
    card.py      the model card, a folder's README.md
    run.py       a training run's checkpoint.pt (everything needed to resume)
    checks.py    what every reader checks (tensors, recommended settings) and the error it raises

This file tells them apart: `load` takes a bundled name, a file, a folder or a hub id to its
format's reader; `save` writes ours; `export` reads any and writes a model folder.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigLike
from ..model import FractalModel
from .card import CardFacts
from .checks import CheckpointError
from .folder import load_folder, model_folder, save_pretrained
from .official import load_official, save_official
from .ours import load_ours, save_ours

ASSETS = Path(__file__).parent.parent / "assets"
BUNDLED = {"mnist": ASSETS / "mnist.safetensors", "mnist_mar": ASSETS / "mnist_mar.safetensors"}
# Inpainting, outpainting and editing default to the MAR model: it sees known content on every side
# of a hole, where AR levels see only what precedes it in raster order.
DEFAULT_INPAINT_CHECKPOINT = "mnist_mar"

save = save_ours  # `fractalgen.save` writes our format

__all__ = ["BUNDLED", "DEFAULT_INPAINT_CHECKPOINT", "CheckpointError", "export", "load", "load_folder",
           "load_official", "load_ours", "resolve", "save", "save_official", "save_ours", "save_pretrained"]


def resolve(path) -> Path:
    """A bundled model name, a file, or a directory holding model.safetensors."""
    if str(path) in BUNDLED:
        p = BUNDLED[str(path)]
        if not p.is_file():
            raise CheckpointError(f"the bundled model {path!r} is not installed ({p} missing)")
        return p
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"no model.safetensors in directory {p}")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def load(path: str | Path, config: ConfigLike | None = None, device: str | torch.device | None = None) -> FractalModel:
    """Load any checkpoint into a model in eval mode: ours, official, a bundled name, a model folder
    (config.json + model.safetensors) or a Hugging Face hub id ("owner/name", from the local cache)."""
    folder = None if str(path) in BUNDLED else model_folder(path)
    if folder is not None:
        model = load_folder(folder, config)
    else:
        p = resolve(path)
        with open(p, "rb") as f:
            head = f.read(16)
        if len(head) == 0:
            raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
        # safetensors: an 8-byte little-endian header length, then the JSON header's "{". Test it first:
        # a header length whose low byte is 0x80 would otherwise pass for a legacy pickle's first byte.
        is_safetensors = head[8:9] == b"{"
        # torch.save's zip container, or a legacy pickle.
        is_torch = not is_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80")
        model = load_official(p, config) if is_torch else load_ours(p, config)
    if device is not None:
        model = model.to(device)
    return model.eval()


def export(checkpoint: str | Path, folder: str | Path, config: ConfigLike | None = None,
           card: CardFacts | dict | None = None, dtype: torch.dtype | None = None, sampling: dict | None = None,
           overwrite: bool = False) -> Path:
    """Any checkpoint `fractalgen.load` reads (official .pth, ours, a training run folder, a bundled
    name, another model folder) as a model folder.

    It lives here rather than in folder.py because it reads every format: folder.py stays one format."""
    model = load(checkpoint, config=config)
    return save_pretrained(model, folder, card=card, dtype=dtype, sampling=sampling, overwrite=overwrite)
