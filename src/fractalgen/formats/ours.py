"""Our format: one safetensors file, the weights under our parameter names, with the config and the
recommended sampling settings as its metadata."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig, check_presets, presets_in_full, split_sampling
from ..files import atomic_write
from ..jsonfile import parse_object
from ..model import FractalModel
from .checks import CheckpointError, check_before_building, check_sampling, check_tensors, given_config

FORMAT_VERSION = "1"


def stored_tensors(state: dict, dtype: torch.dtype | None = None) -> dict:
    """A state dict as safetensors stores it: detached, on the CPU, contiguous; floating-point
    tensors in `dtype` when given (e.g. torch.bfloat16 halves the file)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch dtype (torch.float32, torch.bfloat16, ...), "
                         f"got {dtype!r}")
    return {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
            .cpu().contiguous() for k, v in state.items()}


def save_ours(model: FractalModel, path: str | Path, dtype: torch.dtype | None = None,
              sampling: dict | None = None) -> None:
    """Safetensors weights with the config and the recommended sampling settings as metadata.

    `sampling` (e.g. {"cfg": 10.0, "temperature": 1.0}) defaults to the model's own
    recommendation (`model.recommended`, what `load` read), so a loaded model saves with it.
    """
    sampling = model.recommended if sampling is None else sampling
    from safetensors.torch import save as st_save

    tensors = stored_tensors(model.state_dict(), dtype)
    fields = model.config.to_dict()
    held = model.presets_for_fingerprint()
    if json.dumps(held) != json.dumps(presets_in_full(sampling)):
        # The sampling settings the codec's fingerprint covers, where the recommendation would not give them
        # back (a model from an older file, or `sampling` other than its own): in the config, as older files
        # carry them, so that the loaded model decodes the same files.
        fields.update(held)
    meta = {"format": "fractalgen", "version": FORMAT_VERSION, "config": json.dumps(fields, indent=1)}
    if sampling:
        meta["sampling"] = json.dumps(sampling)
    data = st_save(tensors, metadata=meta)
    atomic_write(lambda f: f.write(data), path)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None


def stored_count(path) -> int:
    """How many tensors a safetensors file holds, from its header (nothing else is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return len(list(f.keys()))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None


def metadata_json(meta: dict, key: str, path) -> dict:
    """One metadata entry parsed as a JSON object; anything else is one line naming the entry."""
    return parse_object(meta[key], f"{path}: metadata {key!r}", CheckpointError)


def recommended_sampling(meta: dict, path, config: ModelConfig) -> dict:
    """The checkpoint's recommended sampling settings (metadata 'sampling'), each checked for type and range."""
    if "sampling" not in meta:
        return {}
    return check_sampling(metadata_json(meta, "sampling", path), path, config)


def load_ours(path, config=None) -> FractalModel:
    """A file of ours into a model of its own config (`config` replaces it), shapes and values checked."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if "config" not in meta and config is None:
        raise CheckpointError(f"{path} carries no config: pass one")
    try:
        if config is not None:
            cfg, presets = given_config(config)
        else:  # an older file's config also carries sampling settings: the recommendation's, under its own
            fields, presets = split_sampling(metadata_json(meta, "config", path))
            cfg = ModelConfig.from_dict(fields)
            check_presets(presets, cfg.num_levels)
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad config in metadata: {e}") from None
    sampling = recommended_sampling(meta, path, cfg)
    check_before_building(cfg, stored_count(path), path)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None
    with torch.device("meta"):
        model = FractalModel(cfg)
    expected = model.state_dict()
    check_tensors(state, expected, path)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # bf16 files load as fp32
    model.load_state_dict(state, assign=True, strict=True)
    model.recommend(sampling, presets, fingerprinted=presets if config is not None else None)
    return model
