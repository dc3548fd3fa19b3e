"""Model folders the Hugging Face way, read and written: by path or by hub id.

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
import re
from pathlib import Path

import torch

from ..config import LEGACY_DEFAULTS, ConfigError, ModelConfig, check_presets, presets_in_full, split_sampling
from ..errors import UserError
from ..files import save_bytes
from ..jsonfile import read_object
from ..model import FractalModel
from ..settings import SETTING_NAMES, resolve_settings
from .card import CardFacts, facts_from_dict, model_card
from .checks import CheckpointError, check_before_building, check_sampling, given_config
from .official import model_from_official_state, official_state_dict
from .ours import stored_count, stored_tensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
DISTRIBUTION = "fractalgen-pytorch"  # the PyPI name (`fractalgen` on PyPI is someone else's package)
# "owner/name" or "owner/name@revision", in the Hub's character set.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[\w./-]+))?")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".json", ".bin", ".ckpt")
# Beside the official fields, config.json carries these of ours (ModelConfig names).
OUR_FIELDS = ("channels", "pixel_mean", "pixel_std", "name")


# ---- reading a folder --------------------------------------------------------------------------------

def read_config(path: Path) -> tuple[ModelConfig, dict]:
    """config.json -> (ModelConfig, recommended sampling settings under "sampling")."""
    config, sampling, _ = read_folder_config(path)
    return config, sampling


def read_folder_config(path: Path) -> tuple[ModelConfig, dict, dict]:
    """config.json -> (ModelConfig, its "sampling" block, the sampling settings an older config.json
    carried beside the fields)."""
    fields = read_object(path, str(path), CheckpointError)
    sampling = fields.pop("sampling", None) or {}
    # Two official constructor arguments that do not describe the trained model.
    fields.pop("grad_checkpointing", None)  # a training switch
    if fields.pop("fractal_level", 0) != 0:
        raise CheckpointError(f"{path}: fractal_level must be 0 (a whole model, not one of its levels)")
    if not isinstance(sampling, dict):
        raise CheckpointError(f"{path}: 'sampling' must be a JSON object")
    id2label = fields.pop("id2label", None)
    fields.pop("label2id", None)  # the hub's inverse map, when a tool wrote one: id2label decides
    if id2label is not None:
        fields["class_names"] = class_names_from_id2label(id2label, path)
    fields, presets = split_sampling(fields)
    try:
        config = ModelConfig.from_official(fields)
        check_presets(presets, config.num_levels)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    return config, check_sampling(sampling, path, config, where="'sampling'"), presets


def class_names_from_id2label(id2label, path) -> list:
    """config.json's {"0": "circle", "1": "cross", ...} as a list in index order (names checked by the config)."""
    if not isinstance(id2label, dict) or sorted(id2label) != sorted(str(i) for i in range(len(id2label))):
        raise CheckpointError(f"{path}: 'id2label' must map \"0\", \"1\", ... (every class index) to a name")
    return [id2label[str(i)] for i in range(len(id2label))]


def load_folder(folder, config=None) -> FractalModel:
    """A model folder (config.json + model.safetensors); `config` replaces config.json's structure."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a model folder: {name} is missing")
    cfg, sampling, presets = read_folder_config(folder / CONFIG_NAME)
    # The settings the codec's fingerprint covers: an older config.json's own, with "sampling" over them.
    fingerprinted: dict | None = {**presets_in_full(presets),
                                  **{k: sampling[k] for k in LEGACY_DEFAULTS if k in sampling}}
    if config is not None:
        cfg, presets = given_config(config)
        fingerprinted = presets
    elif not presets:
        fingerprinted = None
    check_before_building(cfg, stored_count(folder / WEIGHTS_NAME), folder / WEIGHTS_NAME)
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"cannot read {folder / WEIGHTS_NAME}: {str(e).splitlines()[0][:300]}") from None
    model = model_from_official_state(state, cfg, folder / WEIGHTS_NAME)
    model.recommend(dict(sampling), presets, fingerprinted)
    return model


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


# ---- hub ids -----------------------------------------------------------------------------------------

def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """("owner/name", revision or None) when `text` reads as a hub id, else None."""
    match = HUB_ID.fullmatch(text)
    if not match or text.endswith(CHECKPOINT_SUFFIXES) or text.startswith((".", "/", "~")):
        return None
    return match.group("repo"), match.group("revision")


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo_id` in the Hugging Face cache (fetched first when online)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id} is no file or folder here; as a Hugging Face hub id it needs "
                              f"huggingface_hub: pip install \"{DISTRIBUTION}[hub]\"") from None
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(FOLDER_FILES),
                                 library_name="fractalgen")
    except Exception as e:  # not cached while offline, no such repository, no network ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{repo_id} is no file or folder here, nor in the Hugging Face cache or hub "
                              f"({type(e).__name__}: {first[:300]})") from None
    return Path(path)


def model_folder(path) -> Path | None:
    """The model folder `path` names (a local folder with config.json, or a hub id), else None.
    A bundled model's name is the caller's to tell apart first (`fractalgen.formats.load` does)."""
    local = Path(path)
    if local.is_file() and local.name == WEIGHTS_NAME and is_model_folder(local.parent):
        return local.parent  # a folder's weights carry official names and no config: read them with config.json
    if local.exists():
        return local if is_model_folder(local) else None
    hub_id = parse_hub_id(str(path))
    if hub_id is None:
        return None
    folder = download(*hub_id)
    if not is_model_folder(folder):
        raise CheckpointError(f"the hub repository {hub_id[0]} holds no {CONFIG_NAME}: not a model folder")
    return folder


# ---- sampling recommendation ---------------------------------------------------------------------

def sampling_recommendation(model: FractalModel, overrides: dict | None = None) -> dict:
    """The settings a folder recommends: `overrides` > the model's own recommendation > the defaults."""
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
                            f"(or overwrite=True / --overwrite)")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} exists and is not a folder")
    settings = sampling_recommendation(model, sampling)
    config = folder_config(model, settings)
    tensors = stored_tensors(official_state_dict(model), dtype)
    weights = safetensors_bytes(tensors, metadata={"format": "pt"})  # the Hub's convention for PyTorch weights
    stored_dtype = str(dtype or next(iter(tensors.values())).dtype).replace("torch.", "")
    card_text = model_card(model, settings, facts, stored_dtype=stored_dtype)

    save_bytes(weights, folder / WEIGHTS_NAME)
    save_bytes((json.dumps(config, indent=2) + "\n").encode(), folder / CONFIG_NAME)
    save_bytes(card_text.encode(), folder / CARD_NAME)
    return folder
