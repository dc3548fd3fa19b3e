"""Per-pixel likelihood maps as pictures: the image, its map in bits per pixel, and a colour bar.

The map is `fractalgen.pixel_bits` summed over channels: how many bits the model (and the
lossless codec) spends on each pixel. Bright pixels surprised the model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .files import save_image, to_hwc

# A dark-to-bright ramp (sampled from matplotlib's perceptually uniform "inferno"): black is "expected".
RAMP = np.array([(0, 0, 4), (40, 11, 84), (101, 21, 110), (159, 42, 99), (212, 72, 66), (245, 125, 21),
                 (250, 193, 39), (252, 255, 164)], dtype=np.float64)


def colourize(values: np.ndarray, vmax: float) -> np.ndarray:
    """float (H, W) in [0, vmax] -> uint8 (H, W, 3) along RAMP (values above vmax saturate)."""
    t = np.clip(values / max(vmax, 1e-9), 0.0, 1.0) * (len(RAMP) - 1)
    low = np.floor(t).astype(int).clip(0, len(RAMP) - 2)
    frac = (t - low)[..., None]
    return np.round(RAMP[low] * (1 - frac) + RAMP[low + 1] * frac).astype(np.uint8)


def nice_vmax(bits_max: float) -> float:
    """The colour bar's top: the map's maximum rounded up to a whole number of bits (at least 1),
    and above 4 bits to a multiple of 4, so the five ticks fall on whole numbers."""
    top = max(1, int(np.ceil(bits_max - 1e-6)))
    return float(top if top <= 4 else -(-top // 4) * 4)


def shared_vmax(bits: torch.Tensor) -> float:
    """One colour scale for a batch of maps (N, C, H, W): nice_vmax of the largest pixel's bits."""
    return nice_vmax(float(bits.double().sum(1).max()))


def heatmap_picture(image: torch.Tensor, bits: torch.Tensor, vmax: float | None = None, scale: int = 8,
                    title: str | None = None) -> Image.Image:
    """Image and map side by side with a colour bar in bits.

    image uint8 (C, H, W); bits float (C, H, W) per value (pixel_bits). `vmax` fixes the top of
    the colour scale (give the same one to compare pictures), else the map's maximum rounded up.
    """
    per_pixel = bits.double().sum(0).cpu().numpy()  # (H, W) bits per pixel
    vmax = nice_vmax(per_pixel.max()) if vmax is None else float(vmax)
    H, W = per_pixel.shape
    h, w = H * scale, W * scale
    font = ImageFont.load_default(max(11, scale + 5))
    pad, bar_w, label_w, title_h = 2 * scale, 3 * scale, 6 * scale + 24, 3 * scale + 10

    left = Image.fromarray(to_hwc(image[None])[0]).resize((w, h), Image.Resampling.NEAREST)
    right = Image.fromarray(colourize(per_pixel, vmax)).resize((w, h), Image.Resampling.NEAREST)
    bar = colourize(np.linspace(vmax, 0.0, h)[:, None].repeat(bar_w, 1), vmax)  # top = vmax

    canvas = Image.new("RGB", (pad + w + pad + w + pad + bar_w + label_w, title_h + h + pad), "white")
    top = title_h
    canvas.paste(left, (pad, top))
    canvas.paste(right, (2 * pad + w, top))
    bar_x = 3 * pad + 2 * w
    canvas.paste(Image.fromarray(bar), (bar_x, top))
    draw = ImageDraw.Draw(canvas)
    for k in range(5):  # five ticks, top to bottom
        y = top + round(k * (h - 1) / 4)
        value = vmax * (1 - k / 4)
        draw.line([(bar_x + bar_w, y), (bar_x + bar_w + 4, y)], fill="black")
        draw.text((bar_x + bar_w + 7, y), f"{value:g}", fill="black", font=font, anchor="lm")
    draw.text((bar_x + bar_w // 2, top - 4), "bits", fill="black", font=font, anchor="mb")
    mean = float(bits.double().mean())
    text = title if title is not None else f"{mean:.3f} bits/dim, {float(bits.double().sum()) / 8:.1f} bytes"
    draw.text((pad, top - 4), text, fill="black", font=font, anchor="lb")
    return canvas


def maps_figure(images: torch.Tensor, bits: torch.Tensor, vmax: float | None = None, scale: int = 8,
                titles: list[str] | None = None) -> Image.Image:
    """One heatmap_picture per image, stacked top to bottom on one colour scale (the largest map's)."""
    if vmax is None:
        vmax = shared_vmax(bits)
    pictures = [heatmap_picture(image, b, vmax, scale, None if titles is None else titles[i])
                for i, (image, b) in enumerate(zip(images, bits, strict=True))]
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas


def save_maps(images: torch.Tensor, bits: torch.Tensor, folder, names: list[str], vmax: float | None = None):
    """One picture per image into `folder`, on a shared colour scale; returns the paths."""
    if vmax is None:
        vmax = shared_vmax(bits)
    return [save_image(heatmap_picture(image, b, vmax), Path(folder) / name)
            for image, b, name in zip(images, bits, names, strict=True)]


def paste_noise(images: torch.Tensor, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A size x size block of uniform noise pasted at a random place in each image (uint8 (N, C, H, W));
    returns the new images and a bool (N, H, W) mask of the pasted pixels."""
    rng = np.random.default_rng(seed)
    out = images.clone()
    N, C, H, W = images.shape
    pasted = torch.zeros(N, H, W, dtype=torch.bool)
    for i in range(N):
        top, left = (int(v) for v in rng.integers(0, [H - size + 1, W - size + 1]))
        out[i, :, top:top + size, left:left + size] = torch.from_numpy(rng.integers(0, 256, (C, size, size)))
        pasted[i, top:top + size, left:left + size] = True
    return out, pasted
