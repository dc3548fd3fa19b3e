"""fractalgen: fractal generative models (Li, Sun, Fan, He, 2025).

    import fractalgen
    model = fractalgen.load("mnist")
    images = fractalgen.sample(model, labels=[0, 1, 2], cfg=2.0, seed=0)   # uint8 (3, 1, 32, 32)
"""
from __future__ import annotations

import torch

from .checkpoint import CheckpointError, load, save, save_official
from .conditional import edit, inpaint, outpaint, uncrop
from .config import PRESETS, ConfigError, LevelConfig, ModelConfig, get_config
from .likelihood import bits_per_dim, nll_per_image
from .model import FractalModel

__version__ = "0.1.0"


def build(config) -> FractalModel:
    """A freshly initialised model from a preset name, a ModelConfig or a dict (ours or official names)."""
    return FractalModel(get_config(config))


def make_generator(model: FractalModel, seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=model.device)
    g.manual_seed(int(seed))
    return g


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


def sample(model: FractalModel, labels=None, n=None, cfg=1.0, cfg_schedule="linear", temperature=1.0,
           filter_threshold=1e-4, num_iter=None, seed=None) -> torch.Tensor:
    """Sample images, uint8 (N, C, H, W). `labels=None` samples n images unconditionally.

    `num_iter` (one per level) defaults to the config's recommended setting; AR levels always
    take one step per patch. Temperature multiplies the logits (the official convention).
    """
    was_training = model.training
    model.eval()
    try:
        values, _ = model.generate(labels=labels, n=n, cfg=cfg, cfg_schedule=cfg_schedule,
                                   temperature=temperature, filter_threshold=filter_threshold,
                                   num_iter=num_iter, generator=make_generator(model, seed))
    finally:
        model.train(was_training)
    return to_uint8(values)


__all__ = [
    "build", "load", "save", "save_official", "sample", "bits_per_dim", "nll_per_image",
    "inpaint", "outpaint", "uncrop", "edit",
    "FractalModel", "ModelConfig", "LevelConfig", "PRESETS", "get_config", "ConfigError", "CheckpointError",
]
