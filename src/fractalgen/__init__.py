"""fractalgen: fractal generative models (Li, Sun, Fan, He, 2025).

    import fractalgen
    model = fractalgen.load("mnist")
    images = fractalgen.sample(model, labels=[0, 1, 2], seed=0)   # uint8 (3, 1, 28, 28)

Sampling settings not given take the checkpoint's recommendation, else the config's presets
(see fractalgen.settings). This file only names the public API; nothing here is imported back.
"""
from __future__ import annotations

from .codec import CodecError, compress, decompress, read_names
from .conditional import edit, inpaint, outpaint, uncrop
from .config import PRESETS, ConfigError, ConfigLike, LevelConfig, ModelConfig, get_config
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
    """A freshly initialised model from a preset name, a ModelConfig or a dict (ours or official names)."""
    return FractalModel(get_config(config))


__all__ = [
    "build", "load", "save", "save_official", "save_pretrained", "export", "CardFacts", "Measurement",
    "sample", "save_grid", "to_pil", "mnist_heldout", "bits_per_dim", "nll_per_image", "pixel_bits", "compress",
    "decompress", "read_names", "CodecError",
    "inpaint", "outpaint", "uncrop", "edit", "SamplingSettings", "resolve_settings",
    "FractalModel", "ModelConfig", "LevelConfig", "PRESETS", "get_config", "ConfigError", "CheckpointError",
]
