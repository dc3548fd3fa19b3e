"""Model folders the Hugging Face way: writing them (reading them, by path or hub id, is checkpoint.py's).

    fractalgen.save_pretrained(model, "mnist-fractalar", card=CardFacts(dataset="mnist", ...))
    model = fractalgen.load("mnist-fractalar")               # the folder
    model = fractalgen.load("owner/mnist-fractalar")         # a hub id, through huggingface_hub's cache

A model folder holds three files:

    config.json        the official constructor's fields (img_size_list, embed_dim_list, num_blocks_list,
                       num_heads_list, generator_type_list, class_num, ...) plus ours: channels,
                       pixel_mean, pixel_std, name, the class names as "id2label" (when known) and the
                       recommended sampling settings under "sampling"
    model.safetensors  the weights under the official parameter names (the authors' state dict)
    README.md          the model card (card.py): front matter, measured numbers, settings, use, citation

A hub id resolves through `huggingface_hub.snapshot_download`, which owns the cache: it honours
HF_HOME / HF_HUB_CACHE, and with HF_HUB_OFFLINE=1 it reads the cache only. huggingface_hub is an
optional dependency (the `hub` extra); folders load without it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .card import CardFacts, facts_from_dict, model_card
from .checkpoint import CARD_NAME, CONFIG_NAME, FOLDER_FILES, WEIGHTS_NAME
from .config import ModelConfig
from .errors import UserError
from .files import save_bytes
from .model import FractalModel
from .settings import SETTING_NAMES, resolve_settings

# Beside the official fields, config.json carries these of ours (ModelConfig names).
OUR_FIELDS = ("channels", "pixel_mean", "pixel_std", "name")


# ---- sampling recommendation ---------------------------------------------------------------------

def sampling_recommendation(model: FractalModel, overrides: dict | None = None) -> dict:
    """The settings a folder recommends: `overrides` > the model's own recommendation > its config's values."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise UserError(f"unknown sampling setting(s): {', '.join(unknown)} (known: {', '.join(SETTING_NAMES)})")
    return resolve_settings(model, **overrides).to_dict()


# ---- writing a folder ------------------------------------------------------------------------------

def folder_config(model: FractalModel, sampling: dict) -> dict:
    """config.json: the official constructor's fields, then ours, the class names as the hub's
    `id2label` ({"0": "circle", ...}) where the model has them, then the sampling recommendation."""
    config = model.config
    ours = {k: v for k, v in config.to_dict().items() if k in OUR_FIELDS}
    if config.class_names is not None:
        ours["id2label"] = {str(i): name for i, name in enumerate(config.class_names)}
    return {**config.to_official(), **ours, "sampling": sampling}


def save_pretrained(model: FractalModel, folder: str | Path, card: CardFacts | dict | None = None,
                    dtype: torch.dtype | None = None, sampling: dict | None = None,
                    overwrite: bool = False) -> Path:
    """Write `model` as a model folder: config.json, model.safetensors and a README.md model card.

    card: the measured numbers and the commands that produced them (CardFacts or a dict of its
    fields). dtype: e.g. torch.bfloat16 halves the file (floating-point tensors only; loading
    gives fp32 again). sampling: recommended settings, over the model's own recommendation.
    An existing config.json, model.safetensors or README.md is kept unless overwrite=True.
    """
    from safetensors.torch import save as safetensors_bytes

    folder = Path(folder)
    facts = card if isinstance(card, CardFacts) else facts_from_dict(card or {})
    if not overwrite:
        existing = [name for name in FOLDER_FILES if (folder / name).exists()]
        if existing:
            raise UserError(f"{folder} already holds {', '.join(existing)}: choose another folder "
                            f"(or overwrite=True / --force)")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    settings = sampling_recommendation(model, sampling)
    config = folder_config(model, settings)
    tensors = ckpt.stored_tensors(ckpt.official_state_dict(model), dtype)
    weights = safetensors_bytes(tensors, metadata={"format": "pt"})  # the Hub's convention for PyTorch weights
    stored_dtype = str(dtype or next(iter(tensors.values())).dtype).replace("torch.", "")
    card_text = model_card(model, settings, facts, stored_dtype=stored_dtype)

    save_bytes(weights, folder / WEIGHTS_NAME)
    save_bytes((json.dumps(config, indent=2) + "\n").encode(), folder / CONFIG_NAME)
    save_bytes(card_text.encode(), folder / CARD_NAME)
    return folder


def export(checkpoint: str | Path, folder: str | Path, config: str | Path | dict | ModelConfig | None = None,
           card: CardFacts | dict | None = None, dtype: torch.dtype | None = None, sampling: dict | None = None,
           overwrite: bool = False) -> Path:
    """Any checkpoint `fractalgen.load` reads (official .pth, ours, a training run folder, a bundled
    name, another model folder) as a model folder."""
    model = ckpt.load(checkpoint, config=config)
    return save_pretrained(model, folder, card=card, dtype=dtype, sampling=sampling, overwrite=overwrite)
