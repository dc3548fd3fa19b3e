"""Deprecated: the checkpoint formats moved to fractalgen.formats (official.py, ours.py, folder.py,
checks.py; `load`, `save` and `resolve` in formats/__init__.py). This module re-exports the old
names for one release and warns when imported."""
import warnings

from .formats import ASSETS, BUNDLED, DEFAULT_INPAINT_CHECKPOINT, load, resolve, save
from .formats import model_folder as _model_folder
from .formats.checks import CheckpointError, check_sampling, check_tensors
from .formats.folder import (
    CARD_NAME,
    CHECKPOINT_SUFFIXES,
    CONFIG_NAME,
    DISTRIBUTION,
    FOLDER_FILES,
    HUB_ID,
    WEIGHTS_NAME,
    class_names_from_id2label,
    download,
    is_model_folder,
    load_folder,
    parse_hub_id,
    read_config,
)
from .formats.official import (
    _CHANNEL_NAMES,
    _COMMON_LEVEL,
    _LEVEL_RENAMES,
    ARGS_NODE_BUDGET,
    SCALARS,
    _official_config_from_args,
    _pixel_head_key,
    _plain,
    load_official,
    model_from_official_state,
    official_key,
    official_state_dict,
    safe_torch_load,
    save_official,
)
from .formats.ours import (
    FORMAT_VERSION,
    load_ours,
    metadata_json,
    read_metadata,
    recommended_sampling,
    stored_tensors,
)

warnings.warn("fractalgen.checkpoint is deprecated and will be removed in the next release: import from "
              "fractalgen (load, save, save_official, CheckpointError) or fractalgen.formats",
              DeprecationWarning, stacklevel=2)


def model_folder(path):
    """The model folder `path` names, else None; a bundled model's name is never one (as before)."""
    return None if str(path) in BUNDLED else _model_folder(path)


__all__ = [
    "ARGS_NODE_BUDGET", "ASSETS", "BUNDLED", "CARD_NAME", "CHECKPOINT_SUFFIXES", "CONFIG_NAME",
    "DEFAULT_INPAINT_CHECKPOINT", "DISTRIBUTION", "FOLDER_FILES", "FORMAT_VERSION", "HUB_ID", "SCALARS",
    "WEIGHTS_NAME", "CheckpointError", "_CHANNEL_NAMES", "_COMMON_LEVEL", "_LEVEL_RENAMES",
    "_official_config_from_args", "_pixel_head_key", "_plain", "check_sampling", "check_tensors",
    "class_names_from_id2label", "download", "is_model_folder", "load", "load_folder", "load_official",
    "load_ours", "metadata_json", "model_folder", "model_from_official_state", "official_key",
    "official_state_dict", "parse_hub_id", "read_config", "read_metadata", "recommended_sampling", "resolve",
    "safe_torch_load", "save", "save_official", "stored_tensors",
]
