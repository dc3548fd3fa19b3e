"""Files: the one atomic writer, the names of sample files, image grids and PNG writing.

Every file fractalgen writes goes through `atomic_write`: a temporary file created exclusively
(`tempfile.mkstemp`) in the destination folder, fsynced, then renamed over the destination.
An interrupted write never leaves a half-written file, and an existing file is never opened
for writing (it is replaced whole, or kept).
"""
from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image

from .errors import UserError, WriteError

# ---- the atomic writer ------------------------------------------------------------------------

def atomic_write(write: Callable, path: str | Path) -> Path:
    """Call write(binary file) on a fresh temporary file next to `path`, fsync, rename it to `path`.

    A failure (a full disk, a lost permission) removes the temporary file and raises WriteError:
    one line saying what could not be written, why, and that the previous file (if any) is kept.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; give the final file the usual permissions
        with os.fdopen(fd, "wb") as f:
            recorder = WriteRecorder(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as e:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        failed = locals().get("recorder") and recorder.error
        if failed:  # a writer that hides the file's error in its own (torch's zip writer: "unexpected pos")
            raise write_error(path, failed) from None
        raise
    return path


class WriteRecorder:
    """A binary file that remembers the OSError of a failed write (a full disk), for writers that replace
    it with an error of their own."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.file, name)


def write_error(path: Path, error: OSError) -> WriteError:
    kept = f"the previous {path.name} is kept unchanged" if os.path.lexists(path) else "nothing was written there"
    err = WriteError(f"could not write {path}: {error.strerror or error}; {kept}")
    err.errno = error.errno
    return err


def fsync_directory(folder: Path):
    """Make the rename itself durable (a power cut could otherwise bring back the old directory entry)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms and file systems cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(text: str, path: str | Path) -> Path:
    return save_bytes(text.encode(), path)


def save_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes atomically; an unwritable destination is a one-line user error."""
    return atomic_write(lambda f: f.write(data), path)


def check_writable(folder: str | Path):
    """Create `folder` if needed and prove a file can be made in it (a temporary one, removed again)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder}: {e.strerror or e}") from None


# ---- sample names ------------------------------------------------------------------------------

SAMPLE_NAME = re.compile(r"(\d+)_(?:class(\d+)|uncond)\.png")


def image_name(index: int, label: int | None) -> str:
    """{index:05d}_class{label}.png, or {index:05d}_uncond.png without a label."""
    return f"{index:05d}_uncond.png" if label is None else f"{index:05d}_class{int(label)}.png"


def label_of(name: str) -> int | None:
    """The class label in a sample file name (None for unconditional samples or other names)."""
    match = SAMPLE_NAME.fullmatch(name)
    return int(match.group(2)) if match and match.group(2) is not None else None


# ---- pictures ----------------------------------------------------------------------------------

def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N, H, W, 3): grayscale shown as RGB so grids and frames share one mode."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        images = images.round().clamp(0, 255).to(torch.uint8)
    x = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]


def grid(images: torch.Tensor, nrow: int, padding: int = 2, scale: int = 1, border: bool = True,
         background=(255, 255, 255)) -> Image.Image:
    """Tile (N, C, H, W) images into rows of `nrow`, each cell scaled up `scale` times (nearest neighbour).

    `padding` pixels separate the cells (and surround them when `border`); missing cells of the
    last row stay background.
    """
    x = to_hwc(images)
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = x.shape
    rows = -(-n // nrow)
    edge = padding if border else 0
    canvas = np.empty((rows * (h + padding) - padding + 2 * edge, nrow * (w + padding) - padding + 2 * edge, 3),
                      np.uint8)
    canvas[:] = background
    for i in range(n):
        r, c = divmod(i, nrow)
        top, left = edge + r * (h + padding), edge + c * (w + padding)
        canvas[top:top + h, left:left + w] = x[i]
    return Image.fromarray(canvas)


def to_pil(images: torch.Tensor) -> Image.Image | list[Image.Image]:
    """uint8 (C, H, W) -> a PIL image (L for one channel, RGB for three); (N, C, H, W) -> a list of them."""
    images = torch.as_tensor(images)
    if images.dim() == 4:
        return [cast(Image.Image, to_pil(image)) for image in images]
    array = images.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def save_image(image: Image.Image, path: str | Path, **kwargs) -> Path:
    """Save a PIL image atomically; the format follows the suffix unless `format` is given."""
    path = Path(path)
    fmt = kwargs.pop("format", None) or path.suffix.lstrip(".").upper().replace("JPG", "JPEG")
    return atomic_write(lambda f: image.save(f, format=fmt, **kwargs), path)


READABLE_CELL = 64  # pixels: automatic scaling enlarges smaller images to at least this side


def grid_layout(n: int, size: int, nrow: int | None = None, scale: int | None = None) -> tuple[int, int]:
    """(images per row, scale) for n images of side `size`: None picks a near-square grid and the
    smallest whole scale that makes a cell READABLE_CELL pixels or more."""
    nrow = nrow if nrow is not None else max(1, math.ceil(math.sqrt(n)))
    scale = scale if scale is not None else max(1, math.ceil(READABLE_CELL / max(size, 1)))
    if nrow < 1 or scale < 1:
        raise UserError(f"nrow and scale must be >= 1, got {nrow} and {scale}")
    return nrow, scale


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int | None = None,
              padding: int = 2) -> Path:
    """A grid PNG of uint8 (N, C, H, W) images (as the library returns them): `nrow` per row and each
    pixel `scale` times larger (nearest neighbour); None picks them (grid_layout). Padding and border
    are scaled with the cells."""
    images = torch.as_tensor(images)
    nrow, scale = grid_layout(images.shape[0], max(images.shape[-2:]), nrow, scale)
    return save_image(grid(images, nrow, padding * scale, scale), path)


def save_each(images: torch.Tensor, labels, folder: str | Path, first_index: int = 0,
              names: list[str] | None = None) -> list[Path]:
    """One PNG per image (uint8 (N, C, H, W)), named by `image_name`, or by `names` (relative paths whose
    folders are made as needed); returns the paths."""
    if names is None:
        names = [image_name(first_index + i, None if labels is None else labels[i]) for i in range(len(images))]
    return [save_image(cast(Image.Image, to_pil(image)), Path(folder) / name, format="PNG")
            for image, name in zip(images, names, strict=True)]
