"""Likelihood in bits per dimension, per image and per value."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import UserError
from .model import FractalModel, as_labels, check_labels, eval_mode
from .runtime import uses_threads


@torch.no_grad()
@eval_mode
def nll_per_image(model: FractalModel, images: torch.Tensor, passes: int = 1, batch_size: int = 256,
                  generator_seed: int | None = None, progress: Callable[[int], None] | None = None,
                  labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """Per-image bits/dim (N,): unconditional, or class-conditional with `labels` (one per image, or one
    for all, checked as `sample` checks them). MAR levels draw random masks: `passes` are averaged.

    AR-only models are exact and need one pass. For models with a guiding pixel the value also
    includes the guiding-pixel losses, as the authors' evaluation loss does. `progress(k)` is
    called after each batch of k images.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    labels = likelihood_labels(model, labels, images.shape[0])
    if generator_seed is None:  # the masks come from torch's global random stream
        return _nll_batches(model, images, passes, batch_size, progress, labels)
    # Seeded: the masks come from a forked stream, so the caller's global random state is left as it was.
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(generator_seed)
        return _nll_batches(model, images, passes, batch_size, progress, labels)


def likelihood_labels(model: FractalModel, labels, n: int) -> torch.Tensor | None:
    """Labels int64 (n,) for n images from one label or one per image (None: unconditional); integers in
    the model's class range, as `sample` takes them."""
    if labels is None:
        return None
    if model.config.num_classes == 0:
        raise ValueError("this model is unconditional: measure without labels")
    labels = as_labels(labels, "cpu")
    if labels.numel() == 1:
        labels = labels.expand(n)
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} images")
    check_labels(labels, model.config.num_classes)
    return labels


def _nll_batches(model, images, passes, batch_size, progress, labels) -> torch.Tensor:
    out = []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start:start + batch_size]
        chunk_labels = None if labels is None else labels[start:start + batch_size]
        nats = sum(model.nll(chunk, labels=chunk_labels) for _ in range(passes)) / passes
        out.append(nats.float().cpu())
        if progress is not None:
            progress(chunk.shape[0])
    return torch.cat(out) / math.log(2.0)


@uses_threads
def bits_per_dim(model: FractalModel, images: torch.Tensor, passes: int = 1,
                 labels: int | Sequence[int] | torch.Tensor | np.ndarray | None = None) -> float:
    """Mean bits/dim over the images (uint8 (N, C, H, W)): unconditional, or class-conditional with
    `labels` (one per image, or one for all)."""
    return float(nll_per_image(model, images, passes, labels=labels).mean())


def measure_images(model: FractalModel, images: torch.Tensor, passes: int | None = None,
                   batch_size: int = 100, seed: int = 0, progress: Callable[[int], None] | None = None,
                   source: str = "the images") -> dict:
    """Bits/dim of uint8 images (N, C, H, W) with its standard error:
    {'bits_per_dim', 'stderr', 'images', 'passes', 'per_image'} (per_image: each image's bits/dim).

    passes defaults to 1 for AR-only models (exact) and 4 when a MAR level draws random masks; `seed`
    fixes those masks. `source` names the images in the error for a damaged model.
    """
    passes = passes if passes is not None else (1 if set(model.config.kinds) == {"ar"} else 4)
    if passes < 1 or batch_size < 1:
        raise UserError(f"passes and batch size must be >= 1, got {passes} and {batch_size}")
    per_image = nll_per_image(model, images.to(model.device), passes=passes, batch_size=batch_size,
                              generator_seed=seed, progress=progress)
    n = per_image.numel()
    bad = int((~torch.isfinite(per_image)).sum())
    if bad:  # never report "nan bits/dim" as a result
        raise UserError(f"the likelihood is not finite (NaN or infinite bits/dim) for {bad} of {n} image(s) "
                        f"from {source}: the model's weights or config are damaged")
    stderr = float(per_image.std() / math.sqrt(n)) if n > 1 else None  # one image: no spread to measure
    return {"bits_per_dim": float(per_image.mean()), "stderr": stderr, "images": n, "passes": passes,
            "per_image": per_image.double().cpu().tolist()}


def measure(model: FractalModel, data: str, split: str = "val", passes: int | None = None, limit: int | None = None,
            batch_size: int = 100, seed: int = 0, progress: Callable[[int], None] | None = None) -> dict:
    """Deprecated (goes away in the next release): read the images yourself and call `measure_images`.

    Bits/dim of a dataset split ('mnist', an image folder or an .npz file) with its standard error.
    """
    warnings.warn("likelihood.measure(model, data, split, ...) is deprecated: read the images (for example "
                  "fractalgen.mnist_heldout()) and call likelihood.measure_images(model, images, ...)",
                  DeprecationWarning, stacklevel=2)
    from .data import load_dataset, stack

    if (passes is not None and passes < 1) or batch_size < 1 or (limit is not None and limit < 1):
        raise UserError(f"passes, batch size and limit must be >= 1, got {passes}, {batch_size} and {limit}")
    c = model.config
    images, _ = stack(load_dataset(data, split, c.img_size, c.channels), limit)
    return measure_images(model, images, passes, batch_size, seed, progress, source=data)


@uses_threads
@torch.no_grad()
def pixel_bits(model: FractalModel, images: torch.Tensor,
               labels: Sequence[int] | torch.Tensor | np.ndarray | None = None, batch_size: int = 256) -> torch.Tensor:
    """Bits of every value, float (N, C, H, W): -log2 p(value | everything the model conditions it on),
    in the order the model generates. uint8 images (N, C, H, W); labels (N,) condition on the class.

    This is what the lossless codec (codec.py) spends on each value: it runs the same coding pass.
    For AR models an image's mean is its bits/dim (`nll_per_image`) to float precision. MAR levels
    code one token per step in a fixed random order, and a guiding pixel's bits are shared by the
    values of its square, so the mean is one exact code length rather than the averaged estimate.
    """
    from .codec import ImageValues, check_inputs, coding_pass, float64_copy

    images, labels = check_inputs(model, images, labels)
    coder_model = float64_copy(model)
    out = []
    for start in range(0, images.shape[0], batch_size):
        rows = slice(start, start + batch_size)
        _, logp = coding_pass(coder_model, images[rows], None if labels is None else labels[rows], ImageValues())
        out.append((-logp / math.log(2.0)).float())
    c = model.config
    return torch.cat(out) if out else torch.zeros(0, c.channels, c.img_size, c.img_size)
