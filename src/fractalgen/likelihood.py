"""Likelihood in bits per dimension."""
from __future__ import annotations

import math

import torch

from .model import FractalModel


@torch.no_grad()
def nll_per_image(model: FractalModel, images: torch.Tensor, passes: int = 1, batch_size: int = 256,
                  generator_seed: int | None = None) -> torch.Tensor:
    """Per-image bits/dim (N,), unconditional. MAR levels draw random masks: `passes` are averaged.

    AR-only models are exact and need one pass. For models with a guiding pixel the value also
    includes the guiding-pixel losses, as the authors' evaluation loss does.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start:start + batch_size]
            nats = sum(model.nll(chunk) for _ in range(passes)) / passes
            out.append(nats.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) / math.log(2.0)


def bits_per_dim(model: FractalModel, images: torch.Tensor, passes: int = 1) -> float:
    """Mean bits/dim over the images (uint8 (N, C, H, W)), unconditional."""
    return float(nll_per_image(model, images, passes).mean())
