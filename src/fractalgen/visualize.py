"""Pictures: image grids, and the generation process as an animated GIF (like the paper's figure 1).

The GIF records level 0's progress through `model.generate(..., on_step=callback)`: after
every level-0 step the callback receives the raw canvas and which values are filled, so a
frame shows the patches generated so far over a tinted background.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_save
from .errors import UserError

EMPTY_COLOUR = (34, 40, 72)  # not-yet-generated values: dark blue, unlike any digit or photo


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W, 3): grayscale shown as RGB so grids and frames share one mode."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        images = images.round().clamp(0, 255).to(torch.uint8)
    x = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def grid(images: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1, background=(255, 255, 255)) -> Image.Image:
    """Tile (N, C, H, W) images into rows of `nrow`, each scaled up `scale` times (nearest neighbour)."""
    x = to_hwc(images)
    n, h, w, _ = x.shape
    rows = -(-n // nrow)
    canvas = np.empty((rows * (h + padding) + padding, nrow * (w + padding) + padding, 3), np.uint8)
    canvas[:] = background
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        canvas[top:top + h, left:left + w] = x[i]
    image = Image.fromarray(canvas)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST) if scale > 1 else image


def save_image(image: Image.Image, path: str | Path, **kwargs):
    """Save atomically (checkpoint.atomic_save), so an interrupted write never leaves a broken file behind."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    try:
        atomic_save(lambda f: image.save(f, format=fmt, **kwargs), path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, scale: int = 1, padding: int = 2):
    save_image(grid(images, nrow, padding, scale), path)


def save_each(images: torch.Tensor, labels, folder: str | Path) -> list[Path]:
    """One PNG per image: {index:05d}_class{label}.png, or {index:05d}_uncond.png without a label."""
    paths = []
    x = to_hwc(images) if images.shape[1] == 3 else images[:, 0].cpu().numpy()
    for i in range(images.shape[0]):
        name = f"{i:05d}_uncond.png" if labels is None else f"{i:05d}_class{int(labels[i])}.png"
        path = Path(folder) / name
        save_image(Image.fromarray(x[i]), path)
        paths.append(path)
    return paths


class GenerationRecorder:
    """An `on_step` callback that keeps one frame (a grid of the partly generated batch) per level-0 step."""

    def __init__(self, nrow: int, scale: int = 4, padding: int = 2, select: list[int] | None = None):
        self.nrow, self.scale, self.padding, self.select = nrow, scale, padding, select  # select: rows to show
        self.frames: list[Image.Image] = []

    def __call__(self, canvas: torch.Tensor, filled: torch.Tensor):
        """canvas (B, C, H, W) raw float values, filled (B, C, H, W) bool."""
        if self.select is not None:
            canvas, filled = canvas[self.select], filled[self.select]
        values = torch.as_tensor(canvas).round().clamp(0, 255).to(torch.uint8)
        rgb = torch.from_numpy(to_hwc(values)).permute(0, 3, 1, 2)  # (B, 3, H, W)
        shown = filled.any(1, keepdim=True).cpu().expand_as(rgb)  # a pixel counts as shown once any channel is
        empty = torch.tensor(EMPTY_COLOUR, dtype=torch.uint8).view(1, 3, 1, 1).expand_as(rgb)
        self.frames.append(grid(torch.where(shown, rgb, empty), self.nrow, self.padding, self.scale))

    def save(self, path: str | Path, duration_ms: int = 60, hold_ms: int = 2000):
        """Write the animated GIF; the last frame (the finished images) is held for `hold_ms`."""
        if not self.frames:
            raise ValueError("no frames recorded")
        durations = [duration_ms] * (len(self.frames) - 1) + [hold_ms]
        save_image(self.frames[0], path, format="GIF", save_all=True, append_images=self.frames[1:],
                   duration=durations, loop=0)


def generation_gif(model, path: str | Path, labels=None, n=None, nrow: int | None = None, scale: int = 4,
                   **sampling) -> torch.Tensor:
    """Sample a batch while recording level 0's steps; writes the GIF and returns the images uint8 (N, C, H, W)."""
    count = len(labels) if labels is not None else int(n)
    recorder = GenerationRecorder(nrow or min(count, 8), scale)
    images = generate_images(model, labels=labels, n=n, on_step=recorder, **sampling)
    recorder.save(path)
    return images


def generate_images(model, labels=None, n=None, seed=None, on_step=None, **sampling) -> torch.Tensor:
    """fractalgen.sample with an optional level-0 progress callback; uint8 (N, C, H, W)."""
    from . import make_generator, to_uint8

    was_training = model.training
    model.eval()
    try:
        values, _ = model.generate(labels=labels, n=n, generator=make_generator(model, seed), on_step=on_step,
                                   **sampling)
    finally:
        model.train(was_training)
    return to_uint8(values)
