"""Pictures: the generation process as an animated GIF (like the paper's figure 1), and figures.

The GIF records level 0's progress through `model.generate(..., on_step=callback)`: after
every level-0 step the callback receives the raw canvas and which values are filled, so a
frame shows the patches generated so far over a tinted background.
"""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .files import grid, save_image, to_hwc

EMPTY_COLOUR = (34, 40, 72)  # not-yet-generated values: dark blue, unlike any digit or photo
MASK_TINT = (255, 64, 64)  # unknown pixels are shown half-blended with this colour


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
        self.frames.append(grid(torch.where(shown, rgb, empty), self.nrow, self.padding * self.scale, self.scale))

    def save(self, path: str | Path, duration_ms: int = 60, hold_ms: int = 2000):
        """Write the animated GIF; the last frame (the finished images) is held for `hold_ms`."""
        if not self.frames:
            raise ValueError("no frames recorded")
        durations = [duration_ms] * (len(self.frames) - 1) + [hold_ms]
        save_image(self.frames[0], path, format="GIF", save_all=True, append_images=self.frames[1:],
                   duration=durations, loop=0)


# ---- figures: the mask shown on the input, rows of images ------------------------------------

def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> (N, 3, H, W) on the CPU: grayscale repeated, extra channels dropped."""
    images = images.cpu()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def show_mask(images: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) and bool (N, H, W) -> uint8 RGB (N, 3, H, W) with the unknown pixels tinted."""
    rgb = as_rgb(images).float()
    tint = torch.tensor(MASK_TINT, dtype=torch.float32)[None, :, None, None]
    unknown = (~known.reshape(known.shape[0], 1, *known.shape[-2:]))
    return torch.where(unknown, 0.5 * rgb + 0.5 * tint, rgb).round().to(torch.uint8)


def rows_figure(rows: list[torch.Tensor], min_cell: int = 96, gap: int = 2, captions: list[str] | None = None,
                title: str | None = None) -> Image.Image:
    """A picture of rows of uint8 (n, C, H, W) images, upscaled (nearest) so a cell is >= min_cell pixels.

    `captions` (one per row) are written above their rows, `title` above everything, in black
    on the white background.
    """
    H, W = rows[0].shape[-2:]
    scale = max(1, -(-min_cell // max(H, W)))  # ceil: small images (28x28 digits) become readable
    cols = max(r.shape[0] for r in rows)
    blank = torch.full((1, 3, H, W), 255, dtype=torch.uint8)
    pictures = [grid(torch.cat([as_rgb(r)] + [blank] * (cols - r.shape[0])), cols, padding=gap, scale=scale,
                     border=False) for r in rows]  # one picture per row
    lines = [title] if title else []
    if captions is None and not lines:
        return stack_vertically(pictures, gap)
    bands = [text_band(line, pictures[0].width) for line in lines]
    shown: list[str | None] = list(captions) if captions else [None] * len(rows)
    for caption, picture in zip(shown, pictures, strict=True):
        bands += ([text_band(caption, picture.width)] if caption else []) + [picture]
    return stack_vertically(bands, gap)


TEXT_HEIGHT = 14  # a line of PIL's default bitmap font, with a little air


def text_band(text: str, width: int) -> Image.Image:
    """A white strip `width` pixels wide holding one line of black text."""
    from PIL import ImageDraw

    band = Image.new("RGB", (width, TEXT_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(band).text((2, 1), text, fill=(0, 0, 0))
    return band


def stack_vertically(pictures: list[Image.Image], gap: int) -> Image.Image:
    width = max(p.width for p in pictures)
    canvas = Image.new("RGB", (width, sum(p.height for p in pictures) + gap * (len(pictures) - 1)), (255, 255, 255))
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height + gap
    return canvas
