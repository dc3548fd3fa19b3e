"""Datasets: image folders (official layout), .npz arrays, and the embedded MNIST digits.

Every dataset yields (image uint8 (C, H, W), label int64) at the model's size and channel
count, and knows its `num_classes` (0 = unlabelled). The data order is not decided here:
`EpochBatches` (in this file) draws it from (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted one would.

    --data mnist          5,000 digits shipped in the package, split 4,500 train / 500 val
    --data ROOT           ROOT/train/<class>/*.png, ROOT/val/<class>/* (or ROOT/<class>/*)
    --data FILE.npz       `images` uint8 (N, H, W) or (N, H, W, C), optional `labels`
"""
from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .images import IMAGE_EXTENSIONS, PictureError, channels_of, header, mode_for, model_image, open_picture
from .npz import NpzArchive

ASSETS = Path(__file__).parent / "assets"
MNIST_FILE = ASSETS / "mnist5k.npz"
MNIST_SPLIT_SEED, MNIST_VAL = 0, 500  # fixed: every user gets the same 4,500 / 500 split
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, PIL's RGB -> L weights


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


# ---- pixels ---------------------------------------------------------------------------------

def convert_channels(images: np.ndarray, channels: int, source: str) -> np.ndarray:
    """uint8 (N, H, W, c) -> (N, H, W, channels): grayscale replicated to RGB, RGB to luminance."""
    c = images.shape[-1]
    if c == channels:
        return images
    if c == 4:  # drop alpha
        images, c = images[..., :3], 3
    if c == 1 and channels == 3:
        note(f"{source}: grayscale images replicated to 3 channels for an RGB model")
        return np.repeat(images, 3, axis=-1)
    if c == 3 and channels == 1:
        note(f"{source}: RGB images converted to luminance for a 1-channel model")
        return np.round(images.astype(np.float32) @ LUMA)[..., None].clip(0, 255).astype(np.uint8)
    if c == channels:
        return images
    raise UserError(f"{source}: images have {c} channels, the model needs {channels}")


def __getattr__(name: str):
    """Names that moved to fractalgen.images (the one picture reader): importable here for one release."""
    from . import images as rules

    moved = {"center_crop_adm": rules.fit_picture, "pil_mode": rules.mode_for, "MAX_ASPECT": rules.MAX_ASPECT,
             "to_pil_mode": lambda image, mode: rules.to_channels(image, 1 if mode == "L" else 3)}
    if name not in moved:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"fractalgen.data.{name} is deprecated: use fractalgen.images (fit_picture, mode_for, "
                  f"MAX_ASPECT, to_channels)", DeprecationWarning, stacklevel=2)
    return moved[name]


# ---- datasets -------------------------------------------------------------------------------

class ArrayDataset(torch.utils.data.Dataset):
    """Images held in memory: uint8 (N, C, H, W) and int64 labels (N,) (-1 when unlabelled)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, name: str):
        self.images, self.labels, self.num_classes, self.name = images, labels, num_classes, name

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        image = self.images[index]
        return (image.flip(-1) if flip else image), self.labels[index]


class ImageFolder(torch.utils.data.Dataset):
    """Files under ROOT/<class>/ (classes sorted by name) or directly under ROOT (unlabelled)."""

    def __init__(self, root: Path, size: int, channels: int):
        self.root, self.size, self.mode, self.name = root, size, mode_for(channels), str(root)
        self.channels = channels
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
        self.classes = [p.name for p in class_dirs]
        self.num_classes = len(class_dirs)
        entries = ([(f, i) for i, d in enumerate(class_dirs) for f in sorted(d.rglob("*")) if f.is_file()]
                   if class_dirs else [(f, -1) for f in sorted(root.iterdir()) if f.is_file()])
        self.files = [(f, label) for f, label in entries if f.suffix.lower() in IMAGE_EXTENSIONS]
        skipped = len(entries) - len(self.files)
        if not self.files:
            raise UserError(f"no images found in {root} ({skipped} non-image file(s); expected "
                            f"{root}/<class>/*.png or images directly in it)")
        if skipped:
            note(f"{root}: skipped {skipped} non-image file(s)")
        self.bad = 0

    def __len__(self):
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """One file as uint8 (C, S, S) by the picture rules (fractalgen.images); an animation: its first frame."""
        return model_image(open_picture(self.files[index][0], first_frame=True), self.channels, self.size)

    def __getitem__(self, item):
        index, flip = item if isinstance(item, tuple) else (item, False)
        # A corrupt file is replaced by the next readable one (counted) rather than ending a long run.
        tries = min(len(self.files), 16)
        for attempt in range(tries):
            i = (index + attempt) % len(self.files)
            try:
                image = self.load(i)
            except (OSError, ValueError, SyntaxError):  # a PictureError is a ValueError
                self.bad += 1
                if self.bad in (1, 10, 100, 1000):
                    note(f"unreadable image {self.files[i][0]} skipped ({self.bad} so far)")
                continue
            return (image.flip(-1) if flip else image), torch.tensor(self.files[i][1])
        raise UserError(f"{self.root}: {tries} unreadable images in a row near {self.files[index][0]}")


def fit_array(images: np.ndarray, size: int, source: str) -> np.ndarray:
    """uint8 (N, H, W, C) at the model size; MNIST-style arrays smaller than it are zero-padded centrally."""
    h, w = images.shape[1:3]
    if h != w:
        raise UserError(f"{source}: images must be square, got {h}x{w}")
    if h == size:
        return images
    if h < size and (size - h) % 2 == 0:
        pad = (size - h) // 2
        note(f"{source}: {h}x{h} images padded to {size}x{size}")
        return np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    raise UserError(f"{source}: images are {h}x{w}, the model needs {size}x{size}")


def array_dataset(images: np.ndarray, labels: np.ndarray | None, size: int, channels: int, source: str,
                  num_classes: int | None = None) -> ArrayDataset:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise UserError(f"{source}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise UserError(f"{source}: 'images' must be (N, H, W) or (N, H, W, C) with N > 0, got {images.shape}")
    images = convert_channels(fit_array(images, size, source), channels, source)
    if labels is None:
        labels, num_classes = np.full(len(images), -1), 0
    else:
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise UserError(f"{source}: {labels.shape[0]} labels for {images.shape[0]} images")
        if labels.min() < 0:
            raise UserError(f"{source}: labels must be >= 0")
        num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    # (N, C, H, W) as a view of the (N, H, W, C) array: a mapped file stays mapped (batches are copied as
    # they are drawn); an array in memory is not copied a second time.
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return ArrayDataset(tensor, torch.from_numpy(labels), num_classes, source)


def read_image_npz(path: str | Path, names: tuple[str, ...] = ("images",),
                   with_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images (N, H, W) or (N, H, W, C) and optional integer `labels` from an .npz.

    Only these two arrays are read, each after its declared shape and type are checked
    (fractalgen.npz); nothing is unpickled. `names`: the images' array name, in order of preference.
    """
    with NpzArchive(path) as archive:
        name = next((n for n in names if n in archive), None)
        if name is None:
            raise UserError(f"{path}: no {' or '.join(repr(n) for n in names)} array "
                            f"(found: {', '.join(archive.members) or 'nothing'})")
        shape, dtype = archive.header(name)
        if dtype != np.uint8 or len(shape) not in (3, 4) or shape[0] == 0:
            raise UserError(f"{path}: {name!r} must be uint8 images (N, H, W) or (N, H, W, C) with N > 0, "
                            f"got {dtype} {shape}")
        labels = None
        if with_labels and "labels" in archive:
            label_shape, label_dtype = archive.header("labels")
            if label_dtype.kind not in "iu" or math.prod(label_shape) != shape[0] or len(label_shape) > 2:
                raise UserError(f"{path}: 'labels' must hold one integer per image ({shape[0]}), "
                                f"got {label_dtype} {label_shape}")
            labels = archive.read("labels").reshape(-1)
        images = archive.mapped(name)  # uncompressed members are mapped, not read: large sets stay on disk
        return (archive.read(name) if images is None else images), labels


def mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits, (N, 28, 28) uint8 and labels: a fixed seeded permutation, last 500 = val."""
    images, labels = read_image_npz(MNIST_FILE)
    assert labels is not None  # the embedded digits are labelled
    order = np.random.default_rng(MNIST_SPLIT_SEED).permutation(len(images))
    index = order[:-MNIST_VAL] if split == "train" else order[-MNIST_VAL:]
    return images[index], labels[index]


def mnist_heldout() -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits the bundled models were not trained on: uint8 images (N, 1, 28, 28), the
    layout the library takes (`torch.from_numpy`), and int64 labels (N,). The same as `--split val`."""
    images, labels = mnist_split("val")
    return np.ascontiguousarray(images[:, None]), labels.astype(np.int64)


def source_path(spec: str) -> Path:
    """The image folder or .npz file `spec` names (other than 'mnist'), or one UserError line."""
    path = Path(spec)
    if not path.exists():
        raise UserError(f"data not found: {spec} (give 'mnist', an image folder or an .npz file)")
    if path.is_file() and path.suffix != ".npz":
        raise UserError(f"{spec}: expected an .npz file or an image folder")
    return path


def load_dataset(spec: str, split: str, size: int, channels: int) -> ArrayDataset | ImageFolder:
    """A dataset at the model's size and channel count from `mnist`, an image folder, or an .npz file."""
    if split not in ("train", "val"):
        raise UserError(f"unknown split {split!r} (choose train or val)")
    if spec == "mnist":
        digits, digit_labels = mnist_split(split)
        return array_dataset(digits, digit_labels, size, channels, f"mnist/{split}", num_classes=10)
    path = source_path(spec)
    if path.is_file():
        images, labels = read_image_npz(path)
        return array_dataset(images, labels, size, channels, str(path))
    root = folder_root(spec, split)
    if root is None:
        raise UserError(f"{spec} has a train/ folder but no {split}/ folder")
    return ImageFolder(root, size, channels)


def folder_root(spec: str, split: str) -> Path | None:
    """An image folder's `split`: ROOT/<split>, or ROOT itself when it has no train/ folder (every
    split is then the whole folder); None where ROOT has a train/ folder but no <split>/ folder."""
    path = Path(spec)
    if (path / split).is_dir():
        return path / split
    return None if (path / "train").is_dir() else path


# ---- what the data holds, before any work -------------------------------------------------------

SUMMARY_PROBES = 64  # image files whose size and mode a summary reads (spread over the folder)


@dataclasses.dataclass
class DataSummary:
    """What a --data source holds: split sizes, classes with their training counts, image sizes and modes."""

    source: str
    kind: str  # "folder", "array" (an .npz or the embedded digits)
    splits: dict  # split -> image count
    class_names: tuple[str, ...] | None  # a folder's class folders; None for arrays and unlabelled folders
    class_counts: tuple[int, ...]  # training images per class (empty: unlabelled)
    sizes: tuple[tuple[int, int], ...]  # distinct (width, height) seen, most common first
    channels: tuple[int, ...]  # distinct channel counts seen (1 grey, 3 colour), most common first
    probed: int  # images whose size and mode were read (folders: at most SUMMARY_PROBES)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    def lines(self) -> list[str]:
        """The summary as printed by `fractalgen train` (and --dry-run)."""
        split = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        if self.class_counts:
            names = self.class_names or tuple(str(i) for i in range(self.num_classes))
            shown = ", ".join(f"{n} {c}" for n, c in zip(names[:20], self.class_counts[:20], strict=True))
            more = f", ... ({self.num_classes - 20} more)" if self.num_classes > 20 else ""
            classes = f"{self.num_classes} classes: {shown}{more}"
        else:
            classes = "no classes (unconditional)"
        size = " / ".join(f"{w}x{h}" for w, h in self.sizes[:3]) + (" / ..." if len(self.sizes) > 3 else "")
        mode = " / ".join("grayscale" if c == 1 else "RGB" for c in self.channels)
        seen = f" (from {self.probed} images)" if self.kind == "folder" and self.probed < self.splits["train"] else ""
        return [f"data {self.source}: {split} images; {classes}", f"images {size}, {mode}{seen}"]

    def fit_notes(self, size: int, channels: int) -> list[str]:
        """One line for each way the images differ from the model (size, colour) and what is done about it.

        Arrays are padded or refused, and converted, where they are read (fit_array, convert_channels).
        """
        if self.kind != "folder":
            return []
        notes = []
        if any((w, h) != (size, size) for w, h in self.sizes):
            shown = "/".join(f"{w}x{h}" for w, h in self.sizes[:3])
            notes.append(f"images are {shown}, the model {size}x{size}: each is resized "
                         f"(shorter side to {size}, bicubic) and cropped to its centre square")
        if channels == 1 and 3 in self.channels:
            notes.append("RGB images are converted to grayscale (luminance) for the 1-channel model")
        if channels == 3 and 1 in self.channels:
            notes.append("grayscale images are repeated over 3 channels for the RGB model")
        return notes


def describe_data(spec: str) -> DataSummary:
    """The summary of `--data` (mnist, an image folder or an .npz) without loading its images."""
    if spec == "mnist":
        images, labels = read_image_npz(MNIST_FILE)
        digit_counts = np.bincount(mnist_split("train")[1], minlength=10)
        return DataSummary("mnist", "array", {"train": len(images) - MNIST_VAL, "val": MNIST_VAL}, None,
                           tuple(int(c) for c in digit_counts), ((28, 28),), (1,), len(images))
    path = source_path(spec)
    if path.is_file():
        images, labels = read_image_npz(path)
        counts = () if labels is None else tuple(int(c) for c in np.bincount(np.asarray(labels).astype(np.int64)))
        channels = images.shape[3] if images.ndim == 4 else 1
        return DataSummary(spec, "array", {"train": len(images)}, None, counts,
                           ((images.shape[2], images.shape[1]),), (min(channels, 3),), len(images))
    split_names = ("train", "val") if (path / "train").is_dir() else ("train",)  # a flat folder: one split
    splits = {name: ImageFolder(root, 1, 1) for name in split_names
              for root in [folder_root(spec, name)] if root is not None}
    train = splits["train"]
    counts = (tuple(sum(1 for _, label in train.files if label == c) for c in range(train.num_classes))
              if train.num_classes else ())
    sizes: dict[tuple[int, int], int] = {}  # (width, height) -> files probed
    modes: dict[int, int] = {}  # channels -> files probed
    step = max(1, len(train.files) // SUMMARY_PROBES)
    probes = train.files[::step][:SUMMARY_PROBES]
    for file, _ in probes:
        try:
            width, height, mode = header(file)
        except PictureError:
            continue  # an unreadable file is counted (and skipped) when training reads it
        sizes[(width, height)] = sizes.get((width, height), 0) + 1
        channels = channels_of(mode)
        modes[channels] = modes.get(channels, 0) + 1
    def ranked(counter):  # most common first
        return tuple(sorted(counter, key=lambda k: -counter[k]))

    return DataSummary(spec, "folder", {name: len(d) for name, d in splits.items()},
                       tuple(train.classes) if train.num_classes else None, counts, ranked(sizes), ranked(modes),
                       len(probes))


def stack(dataset, limit: int | None = None, indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `limit` items (or the items at `indices`) as one uint8 (N, C, H, W) batch and labels (N,)."""
    if isinstance(dataset, ArrayDataset):  # a batch in memory, (N, C, H, W)
        if indices is not None:
            return dataset.images[indices].contiguous(), dataset.labels[indices]
        return dataset.images[:limit].contiguous(), dataset.labels[:limit]
    if indices is None:
        indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


# ---- data order -----------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Sampler):
    """This rank's (index, flip) lists, batch by batch, from a permutation drawn from (seed, epoch).

    The order is a pure function of (seed, epoch, position): resuming at `start` batches into
    the run replays exactly what follows. Each global batch is split across ranks in contiguous slices.
    """

    def __init__(self, size: int, global_batch: int, rank: int, world: int, seed: int, flip: bool, start: int = 0):
        if global_batch > size:
            raise UserError(f"batch size {global_batch} is larger than the dataset ({size} images)")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.seed, self.flip, self.start = seed, flip, start
        self.per_epoch = size // global_batch  # the last partial batch is dropped

    def __iter__(self):
        local = self.global_batch // self.world
        position = self.start
        while True:
            epoch, first = divmod(position, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=g)
            flips = torch.rand(self.size, generator=g) < 0.5 if self.flip else torch.zeros(self.size, dtype=torch.bool)
            for b in range(first, self.per_epoch):
                batch = order[b * self.global_batch:(b + 1) * self.global_batch]
                chunk = batch[self.rank * local:(self.rank + 1) * local]
                yield [(int(i), bool(flips[i])) for i in chunk]
                position += 1
