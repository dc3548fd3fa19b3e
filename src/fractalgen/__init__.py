"""fractalgen: fractal generative models (Li, Sun, Fan, He, 2025).

    import fractalgen
    model = fractalgen.load("mnist")
    images = fractalgen.sample(model, labels=[0, 1, 2], seed=0)   # uint8 (3, 1, 28, 28)

Sampling settings not given take the model's recommendation (its file's, or its preset's), else the defaults
(see fractalgen.settings). This file only names the public API; nothing here is imported back.
"""
from __future__ import annotations

from .codec import CodecError, compress, decompress, read_names
from .conditional import edit, inpaint, outpaint, uncrop
from .config import (
    PRESETS,
    SAMPLING_PRESETS,
    ConfigError,
    ConfigLike,
    LevelConfig,
    ModelConfig,
    config_and_presets,
    get_config,
)
from .data import mnist_heldout
from .files import save_grid, to_pil
from .formats import CheckpointError, export, load, save, save_official, save_pretrained
from .formats.card import CardFacts, Measurement
from .likelihood import bits_per_dim, nll_per_image, pixel_bits
from .model import FractalModel
from .samples import sample
from .settings import SamplingSettings, resolve_settings
from .version import __version__ as __version__


def build(config: ConfigLike) -> FractalModel:
    """A freshly initialised model from a preset name, a ModelConfig or a dict (ours or official names).
    Its recommended sampling settings (`model.recommended`) are its preset's, or those an older config's
    dict or file carried."""
    config, presets = config_and_presets(config)
    model = FractalModel(config)
    if presets:
        model.recommend({}, presets)
    return model


__all__ = [
    "build", "load", "save", "save_official", "save_pretrained", "export", "CardFacts", "Measurement",
    "sample", "save_grid", "to_pil", "mnist_heldout", "bits_per_dim", "nll_per_image", "pixel_bits", "compress",
    "decompress", "read_names", "CodecError",
    "inpaint", "outpaint", "uncrop", "edit", "SamplingSettings", "resolve_settings",
    "FractalModel", "ModelConfig", "LevelConfig", "PRESETS", "SAMPLING_PRESETS", "get_config", "ConfigError",
    "CheckpointError",
]
