"""Image sets to score: a folder of image files (searched recursively), an .npz, or images in memory.

An .npz holds `images` (our data format) or `arr_0` (the ADM evaluator's sample and reference
batches), uint8, (N, H, W) or (N, H, W, C). Every image of a set must have the same size.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..images import channels_of, header, mode_for, open_picture, to_channels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ImageSet:
    """A fixed list of same-sized uint8 images, read in batches of (B, C, H, W)."""

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.files: list[Path] = []
        self.array: np.ndarray | None = None  # (N, H, W, C) uint8 for in-memory sets
        path = Path(source)
        if self.source == "mnist" and not path.exists():
            self.array = _embedded_digits()
        elif path.is_dir():
            self.files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not self.files:
                raise UserError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        elif path.is_file() and path.suffix == ".npz":
            self.array = _read_npz(path)
        elif path.is_file():
            raise UserError(f"{path}: give a folder of images or an .npz file")
        else:
            raise UserError(f"images not found: {path}")
        self._describe()

    @classmethod
    def from_tensor(cls, images: torch.Tensor | np.ndarray, source: str = "images") -> ImageSet:
        """Images in memory in the library's layout, uint8 (N, C, H, W), tensor or array (e.g. the held-out
        digits of `fractalgen.mnist_heldout()`); `source` names them."""
        array = images.numpy(force=True) if isinstance(images, torch.Tensor) else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1] not in (1, 3) or not len(array):
            raise UserError(f"{source}: images must be uint8 (N, C, H, W) with 1 or 3 channels, got "
                            f"{array.dtype} {tuple(array.shape)}")
        self = cls.__new__(cls)
        self.source, self.files = source, []
        self.array = np.ascontiguousarray(array.transpose(0, 2, 3, 1))  # (N, C, H, W) -> (N, H, W, C)
        self._describe()
        return self

    @classmethod
    def from_files(cls, files: list[Path]) -> ImageSet:
        """Exactly these files (e.g. the images `evaluate` wrote, whatever else their folder holds)."""
        self = cls.__new__(cls)
        self.source, self.files, self.array = str(files[0].parent) if files else "", list(files), None
        if not self.files:
            raise UserError("no images to score")
        self._describe()
        return self

    def _describe(self) -> None:
        # Files are read as "L" or "RGB", as the first one is, by the picture rules (fractalgen.images).
        self.mode = mode_for(channels_of(header(self.files[0])[2])) if self.files else None
        self.size = None  # (H, W), set by the first read
        first = self._read_files(self.files[:1])[0] if self.files else self._in_memory()[0]
        self.height, self.width, self.channels = first.shape
        self.size = (self.height, self.width)

    def __len__(self) -> int:
        return len(self.files) if self.files else len(self._in_memory())

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            if self.files:
                chunk = self._read_files(self.files[start:start + batch_size])
            else:
                chunk = self._in_memory()[start:start + batch_size]
            yield torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

    def read_all(self) -> np.ndarray:
        """All images, (N, H, W, C) uint8."""
        return self.array if self.array is not None else self._read_files(self.files)

    def _in_memory(self) -> np.ndarray:
        """The images of a set held in memory, (N, H, W, C); a set without files always has them."""
        assert self.array is not None
        return self.array

    def _read_files(self, files: list[Path]) -> np.ndarray:
        images = []
        channels = 1 if self.mode == "L" else 3
        for f in files:
            array = np.asarray(to_channels(open_picture(f, first_frame=True), channels))
            array = array[..., None] if array.ndim == 2 else array  # (H, W) -> (H, W, 1)
            if self.size is not None and array.shape[:2] != self.size:
                raise UserError(f"{f} is {array.shape[1]}x{array.shape[0]}, the first {self.width}x{self.height}: "
                                f"all images of a set must have one size")
            images.append(array)
        return np.stack(images)


def _read_npz(path: Path) -> np.ndarray:
    from ..data import read_image_npz

    images, _ = read_image_npz(path, names=("images", "arr_0"), with_labels=False)
    return images[..., None] if images.ndim == 3 else images


def _embedded_digits() -> np.ndarray:
    """The 500 held-out digits of the embedded MNIST set (the `val` split), (500, 28, 28, 1)."""
    warnings.warn('ImageSet("mnist") is deprecated: pass the digits of fractalgen.mnist_heldout() to '
                  "ImageSet.from_tensor", DeprecationWarning, stacklevel=3)
    from ..data import mnist_split

    images, _ = mnist_split("val")
    return np.asarray(images, dtype=np.uint8)[..., None]
