"""Pictures in: the one reader of image files and uploads, and the rules that fit them to a model.

Every picture fractalgen takes (training folders, scored image sets, `inpaint` and `edit` inputs,
the web page's uploads, files to compress) is opened here, and the same file gives the model the
same pixels through the command line, the web page and the library:

    picture = open_picture(path)                  # its declared size bounded before decoding; one frame
    pixels = model_image(picture, channels, size) # uint8 (C, S, S): to_channels, then fit_picture
    known = known_pixels(open_picture(mask), size)  # bool (S, S): white = regenerate, fit_mask

The rules, each written once:
- channels (`to_channels`): transparent pixels are laid over white; 16-bit values are scaled to
  8 bits; palette, CMYK and other modes are converted; colour becomes luminance for a grayscale
  model and gray is repeated for a colour one;
- size (`fit_picture`): ADM's centre crop, as the training data is read: the shorter side is
  resized to the model's (box-filter halvings, then bicubic) and the centre square kept;
- masks (`fit_mask`): the same centre square; a model pixel is regenerated when any input pixel
  it overlaps is marked, so a thin stroke still counts.
Files to compress are taken exactly as they are (`exact_image`): what a conversion would change is
refused, since the codec must give back the file's own pixels.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import UserError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
                    ".jfif"}
# Pillow modes without colour
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # integer modes whose values may exceed 255
WITH_ALPHA = ("RGBA", "LA", "P", "PA")  # modes that may carry transparency (a palette: a transparent entry)
EIGHT_BIT = ("1", "L", "LA", "P", "RGB", "RGBA")  # modes read without loss as 8-bit RGBA (the codec's inputs)
MAX_ASPECT = 4  # long side / short side beyond which a picture is cut to its centre square before resizing
MARKED = 128  # mask values (0..255, after the channel rule) from which a pixel is marked: white = regenerate
UNREADABLE = (OSError, ValueError, SyntaxError)  # what Pillow raises on a file it cannot read


class PictureError(UserError, ValueError):
    """A picture that cannot be read or used: one line naming it and saying why."""


class PictureTooLarge(PictureError):
    """The header declares more pixels than the bound; nothing was decoded.

    `size` is (width, height) when known (None when Pillow's own bound refused the header first).
    """

    def __init__(self, name: str, size: tuple[int, int] | None, bound: int):
        self.name, self.size, self.bound = name, size, bound
        declared = f"is {size[0]}x{size[1]}" if size else f"declares more than {bound:,} pixels"
        super().__init__(f"{name} {declared}; pictures are read up to {bound:,} pixels")


class AnimatedPicture(PictureError):
    """An animation or a multi-page file where one picture is needed."""

    def __init__(self, name: str, frames: int):
        self.name, self.frames = name, frames
        super().__init__(f"{name} has {frames} frames (an animation or a multi-page file): "
                         "give one still picture")


# ---- opening: bounded, one frame --------------------------------------------------------------------

def named(source, what: str) -> str:
    """How messages name a picture: `what` and its path (a file object is named by `what` alone)."""
    return f"{what} {source}" if isinstance(source, (str, os.PathLike)) else what


def pixel_bound(max_pixels: int | None) -> int | None:
    """`max_pixels`, else Pillow's own refusal bound (twice Image.MAX_IMAGE_PIXELS; None: unbounded)."""
    if max_pixels is not None:
        return max_pixels
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def open_header(source, what: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Open a picture (a path or a binary file object) and read its header only: nothing is decoded.

    Refused with a PictureError: a missing or unreadable file, an empty picture, and more pixels
    than `max_pixels` (None: Pillow's own bound, which Pillow checks as it opens the file).
    The caller closes the returned image (use it in a `with`).
    """
    name = named(source, what)
    try:
        image = Image.open(source)
    except FileNotFoundError:
        raise PictureError(f"{what} not found: {source}") from None
    except Image.DecompressionBombError:  # Pillow's bound: the header declares over twice MAX_IMAGE_PIXELS
        raise PictureTooLarge(name, None, pixel_bound(None) or 0) from None  # Pillow refused: it has a bound
    except UNREADABLE as e:
        raise PictureError(f"cannot read {name}: {reason(e)}") from None
    width, height = image.size
    bound = pixel_bound(max_pixels)
    problem = None
    if width == 0 or height == 0:
        problem = PictureError(f"{name} is empty ({width}x{height})")
    elif bound is not None and width * height > bound:
        problem = PictureTooLarge(name, (width, height), bound)
    if problem is not None:
        image.close()
        raise problem
    return image


def header(source, what: str = "image", max_pixels: int | None = None) -> tuple[int, int, str]:
    """(width, height, Pillow mode) from the picture's header, bounded as `open_header` bounds it."""
    with open_header(source, what, max_pixels) as image:
        return image.width, image.height, image.mode


def open_picture(source, what: str = "image", max_pixels: int | None = None,
                 first_frame: bool = False) -> Image.Image:
    """Decode one picture: its declared size checked against `max_pixels` first (see `open_header`).

    An animation or multi-page file is refused (AnimatedPicture), unless `first_frame`: then its
    first frame is read (what image folders do with the odd GIF among their pictures). A camera's
    multi-picture JPEG (MPO) is read as its main picture.
    """
    name = named(source, what)
    with open_header(source, what, max_pixels) as image:
        try:
            if not first_frame and getattr(image, "is_animated", False) and image.format != "MPO":
                raise AnimatedPicture(name, getattr(image, "n_frames", 2))
            image.load()
        except PictureError:
            raise
        except UNREADABLE as e:
            raise PictureError(f"cannot read {name}: {reason(e)}") from None
        return image


def reason(error: BaseException) -> str:
    """An exception's first line, short enough for a one-line message."""
    lines = str(error).splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


# ---- channels ---------------------------------------------------------------------------------------

def mode_for(channels: int) -> str:
    """The Pillow mode of a model's pictures: L for one channel, RGB for three."""
    if channels not in (1, 3):
        raise UserError(f"image files can feed 1- or 3-channel models, not {channels}")
    return "L" if channels == 1 else "RGB"


def channels_of(mode: str) -> int:
    """1 for a Pillow mode without colour, else 3."""
    return 1 if mode in GRAY_MODES else 3


def to_channels(picture: Image.Image, channels: int, notes: list[str] | None = None) -> Image.Image:
    """A picture in the model's mode (L or RGB). Appends to `notes` (when given) what changed, in words.

    16-bit values are scaled to 8 bits (a picture whose values all fit 0..255 is taken as 8-bit);
    transparent pixels are laid over white, at any channel count; colour becomes luminance (ITU-R
    601, Pillow's weights) and gray is repeated into RGB.
    """
    mode, source = mode_for(channels), picture.mode
    if source in SIXTEEN_BIT:
        values = np.asarray(picture, dtype=np.float64)
        peak = 65535.0 if values.max() > 255 else 255.0
        picture = Image.fromarray(np.round(values / peak * 255).clip(0, 255).astype(np.uint8))  # (H, W) -> L
        if notes is not None and peak > 255:
            notes.append(f"16-bit values ({source}) scaled to 8 bits")
    if picture.mode in WITH_ALPHA:
        picture = picture.convert("RGBA")
        if notes is not None and int(np.asarray(picture.getchannel("A")).min()) < 255:
            notes.append("transparent pixels laid over white")
        background = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(background, picture)
    if notes is not None:
        if channels == 1 and source not in GRAY_MODES:
            rgb = np.asarray(picture.convert("RGB"))  # (H, W, 3)
            if (rgb != rgb[..., :1]).any():
                notes.append(f"a colour image ({source}), made grayscale for this grayscale model")
        elif channels == 3 and source in GRAY_MODES:
            notes.append(f"grayscale ({source}), repeated into RGB for this colour model")
    try:
        return picture.convert(mode)
    except UNREADABLE as e:
        raise PictureError(f"cannot convert {source} pixels to {mode}: {reason(e)}") from None


# ---- size: the ADM centre crop -------------------------------------------------------------------------

def centre_plan(width: int, height: int, size: int):
    """How `fit_picture` brings a width x height picture to size x size, in sizes only:
    (the centre square cut from an elongated strip, or None; box-filter halvings; the size the
    bicubic resize gives; the (left, top) of the crop in it)."""
    cut = None
    short = min(width, height)
    if max(width, height) > MAX_ASPECT * short:
        left, top = (width - short) // 2, (height - short) // 2
        cut = (left, top, left + short, top + short)
        width = height = short
    halvings = 0
    while min(width, height) >= 2 * size:
        width, height, halvings = width // 2, height // 2, halvings + 1
    scale = size / min(width, height)
    resized = (round(width * scale), round(height * scale))
    return cut, halvings, resized, ((resized[0] - size) // 2, (resized[1] - size) // 2)


def fit_picture(picture: Image.Image, size: int) -> Image.Image:
    """ADM's centre crop: halve with a box filter while the short side is >= 2x the target, bicubic
    resize, crop.

    The crop keeps only the centre square, yet the resize scales the whole picture: a strip 1 pixel
    wide and 16M tall would become 64 x 1G pixels on the way to a 64x64 crop. Strips more elongated
    than MAX_ASPECT are therefore cut to their centre square first, which bounds the work per picture
    by MAX_ASPECT * size**2 pixels (normal photographs are resized exactly as ADM does).
    """
    cut, halvings, resized, (left, top) = centre_plan(*picture.size, size)
    if cut is not None:
        picture = picture.crop(cut)
    for _ in range(halvings):
        picture = picture.resize((picture.width // 2, picture.height // 2), resample=Image.Resampling.BOX)
    picture = picture.resize(resized, resample=Image.Resampling.BICUBIC)
    return picture.crop((left, top, left + size, top + size))


def source_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The part of a width x height picture that `fit_picture` turns into the model's square:
    (x0, y0, x1, y1) in the picture's pixels, fractional. Each resize maps the whole picture onto
    the whole result, so the crop maps back by the overall scale of each axis."""
    cut, _, (resized_w, resized_h), (left, top) = centre_plan(width, height, size)
    x_offset, y_offset, w, h = (0, 0, width, height) if cut is None else (cut[0], cut[1], cut[2] - cut[0],
                                                                           cut[3] - cut[1])
    sx, sy = w / resized_w, h / resized_h
    return (x_offset + left * sx, y_offset + top * sy,
            x_offset + (left + size) * sx, y_offset + (top + size) * sy)


def model_image(picture: Image.Image, channels: int, size: int,
                notes: list[str] | None = None) -> torch.Tensor:
    """A decoded picture -> uint8 (C, S, S) for a model of `channels` and side `size`
    (to_channels, then fit_picture when the size differs); what changed is appended to `notes`."""
    picture = to_channels(picture, channels, notes)
    if picture.size != (size, size):
        if notes is not None:
            notes.append(f"{picture.width}x{picture.height}, resized (shorter side to {size}) and "
                         f"centre-cropped to {size}x{size} (the model's size)")
        picture = fit_picture(picture, size)
    array = np.asarray(picture, dtype=np.uint8).reshape(size, size, channels)  # (S, S, C)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()  # (C, S, S)


# ---- masks ----------------------------------------------------------------------------------------------

def marked(mask: Image.Image) -> np.ndarray:
    """Bool (H, W), True where a mask picture is white (read by the channel rule, as a grayscale picture:
    a transparent pixel is white, so it is marked too)."""
    return np.asarray(to_channels(mask, 1)) >= MARKED


def overlapped(start: float, stop: float, cells: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) cut into `parts` equal parts: for each, the range of the `cells` unit cells it overlaps."""
    edges = start + (stop - start) * np.arange(parts + 1) / parts
    first = np.clip(np.floor(edges[:-1] + 1e-9).astype(int), 0, cells - 1)  # tolerance: edges on a cell border
    last = np.clip(np.ceil(edges[1:] - 1e-9).astype(int), first + 1, cells)
    return list(zip(first.tolist(), last.tolist(), strict=True))


def fit_mask(marks: np.ndarray, size: int) -> np.ndarray:
    """Bool (H, W) marks at a picture's size -> bool (S, S) at the model's: the square `fit_picture`
    keeps (`source_box`), a model pixel marked when any picture pixel it overlaps is marked."""
    height, width = marks.shape
    if (width, height) == (size, size):
        return marks.copy()
    x0, y0, x1, y1 = source_box(width, height, size)
    rows = np.stack([marks[a:b].any(0) for a, b in overlapped(y0, y1, height, size)])  # (S, W)
    return np.stack([rows[:, a:b].any(1) for a, b in overlapped(x0, x1, width, size)], axis=1)  # (S, S)


def known_pixels(mask: Image.Image, size: int) -> torch.Tensor:
    """A mask picture (white = regenerate) -> bool (S, S), True where the pixel is KNOWN (the library's
    mask)."""
    return torch.from_numpy(~fit_mask(marked(mask), size))


# ---- for library users: a file to the model's input ----------------------------------------------------

def read_image(source, model, what: str = "image") -> tuple[torch.Tensor, list[str]]:
    """A picture file (or binary file object) -> uint8 (C, S, S) for `model`, and what changed in words;
    the pixels `fractalgen inpaint` and the web page give the model for the same file."""
    notes: list[str] = []
    pixels = model_image(open_picture(source, what), model.config.channels, model.config.img_size, notes)
    return pixels, notes


def read_mask(source, model, what: str = "mask") -> torch.Tensor:
    """A mask file (white = regenerate) -> bool (S, S) for `model`, True where known, as the web page
    reads it."""
    return known_pixels(open_picture(source, what), model.config.img_size)


# ---- the codec's inputs: exact or refused ---------------------------------------------------------------

def exact_image(picture: Image.Image, channels: int, size: int, name: str | Path) -> np.ndarray:
    """A decoded picture -> uint8 (C, H, W) exactly as stored, refusing anything a conversion would change:
    more than 8 bits, transparency, another size, colour for a grayscale model."""
    if picture.mode not in EIGHT_BIT:
        raise PictureError(f"{name}: {picture.mode} images are not 8-bit gray or RGB (lossless input needed)")
    rgba = np.asarray(picture.convert("RGBA"))  # (H, W, 4)
    if (rgba[..., 3] != 255).any():
        raise PictureError(f"{name} has transparent pixels: the model codes opaque images only")
    rgb = rgba[..., :3]
    if rgb.shape[:2] != (size, size):
        raise PictureError(f"{name} is {rgb.shape[1]}x{rgb.shape[0]}: the model codes {size}x{size} images")
    if channels == 1:
        if not ((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])).all():
            raise PictureError(f"{name} is in colour: this model codes grayscale images")
        return rgb[None, :, :, 0].copy()
    return rgb.transpose(2, 0, 1).copy()
