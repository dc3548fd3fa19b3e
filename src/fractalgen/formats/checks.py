"""What every reader checks: the one error it raises, a file's config before it is built, loaded
tensors against the model's, and a file's recommended sampling settings."""
from __future__ import annotations

import json

import torch

from ..config import SAMPLING_PRESETS, ModelConfig, config_and_presets
from ..footprint import check_fits, count, model_size
from ..settings import SETTING_NAMES, SettingsError, check_setting


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def check_before_building(config: ModelConfig, held: int, path, context: str = ""):
    """A file's config (or the one given for it) before it is built, even on the meta device: it may
    not need more weight tensors than the file's `held` (a forged block count would take minutes and
    gigabytes of Python objects to build before the first missing key showed), and its fp32 weights
    must fit in memory (footprint.check_fits)."""
    size = model_size(config)
    if size.tensors > held:
        raise CheckpointError(f"{path}: the config describes a model of {size.tensors} weight tensors "
                              f"({count(size.parameters)} parameters), the file holds {held}{context}")
    check_fits(config, error=CheckpointError, where=f"{path}: ")


def check_sampling(sampling: dict, path, config: ModelConfig, where: str = "metadata 'sampling'") -> dict:
    """Recommended sampling settings (from metadata or a model folder's config.json), checked by
    settings.check_setting."""
    for key, value in sampling.items():
        if key not in SETTING_NAMES:
            raise CheckpointError(f"{path}: {where} has an unknown setting {key!r} "
                                  f"(known: {', '.join(SETTING_NAMES)})")
        try:
            check_setting(key, value, config.num_levels)
        except SettingsError as e:
            raise CheckpointError(f"{path}: {where} field {key!r} must be {e.phrase}, "
                                  f"got {json.dumps(value)[:60]}") from None
    return sampling


def given_config(config) -> tuple[ModelConfig, dict]:
    """A config a caller gave a reader in place of the file's (see config.get_config), and the sampling
    settings it stands for: those an older config's dict or file carried, else its preset's."""
    config, presets = config_and_presets(config)
    return config, presets or dict(SAMPLING_PRESETS.get(config.name, {}))


def check_tensors(state: dict, expected: dict, path, name=lambda key: key, context: str = ""):
    """Keys, shapes, dtypes and finiteness of loaded tensors against the model's (meta) state dict.

    One cheap pass over the weights: a NaN or an infinity would otherwise surface only as garbage
    images or a 'nan' likelihood, far from its cause. `name` gives the key as the file spells it.
    """
    for key, want in expected.items():
        if key not in state:
            raise CheckpointError(f"{path}: missing key {name(key)}{context}")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name(key)} is not a tensor")
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: shape mismatch for {name(key)}: checkpoint {tuple(value.shape)}, "
                                  f"model {tuple(want.shape)}{context}")
        if want.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: {name(key)} holds {str(value.dtype).replace('torch.', '')} values "
                                  f"where floating-point weights belong")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {name(key)} holds {bad} non-finite value(s) (NaN or infinity)")
