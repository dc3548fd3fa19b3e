"""`fractalgen compress | decompress`: lossless image files coded with the model (fractalgen.codec).

Inputs are taken exactly as they are: an image must already have the model's size and channels
(a grayscale model accepts RGB files only when R = G = B), since any conversion would lose data.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from ..codec import DEFAULT_BATCH, IMAGES_PER_STREAM, MAX_IMAGES_PER_STREAM
from ..errors import UserError
from .options import add_checkpoint, add_json, add_runtime, emit_json, integer, load_model, picture_files


def register(subparsers):
    add_compress(subparsers)
    add_decompress(subparsers)


# ---- compress -------------------------------------------------------------------------------------

def add_compress(sub):
    p = sub.add_parser("compress", help="losslessly compress images with the model (arithmetic coding)")
    p.add_argument("images", nargs="+", help="PNG files, folders of them (sorted by name), or one .npz with "
                   "uint8 'images' (N, H, W) or (N, H, W, C)")
    add_checkpoint(p)
    p.add_argument("--out", required=True, help="the compressed file to write (never overwritten)")
    p.add_argument("--labels", action="store_true", help="code class-conditionally and store the labels (from the "
                   ".npz 'labels' array, or file names ending _class{K}.png)")
    add_batch_size(p, "coded")
    p.add_argument("--images-per-stream", type=integer(1, MAX_IMAGES_PER_STREAM), default=IMAGES_PER_STREAM,
                   help="images sharing one coded stream: fewer cost a little more space, and a decoder then "
                   "needs fewer images side by side")
    add_runtime(p, threads="1")
    add_json(p)
    p.set_defaults(func=run_compress)


def add_batch_size(p, verb: str):
    p.add_argument("--batch-size", type=integer(1, 2**20), default=DEFAULT_BATCH,
                   help=f"about this many images {verb} side by side (whole streams): it changes the speed and "
                   "memory, never the file or the images")


def run_compress(args) -> int:
    from ..codec import HEADER, encode
    from ..files import check_writable, save_bytes

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists (choose another output; files are never overwritten)")
    model = load_model(args)
    c = model.config
    images, labels = read_inputs(args.images, c.channels, c.img_size, args.labels)
    check_writable(out.parent)  # before the long part
    started = time.time()
    data, bits = encode(model, images, labels, args.batch_size, args.images_per_stream)
    seconds = time.time() - started
    save_bytes(data, out)
    n, dims = images.shape[0], images[0].numel()
    file_bpd = 8 * len(data) / max(1, n * dims)
    model_bpd = float(bits.double().mean()) if n else float("nan")
    print(f"compressed {n} images into {out}: {len(data)} bytes ({len(data) / max(1, n):.1f} bytes/image, "
          f"{HEADER.size}-byte header), {file_bpd:.4f} bits/dim in the file, {model_bpd:.4f} bits/dim under the "
          f"model, {seconds:.1f} s")
    emit_json(args, {"images": n, "bytes": len(data), "bytes_per_image": len(data) / max(1, n),
                     "header_bytes": HEADER.size, "file_bits_per_dim": file_bpd, "model_bits_per_dim": model_bpd,
                     "labels": labels is not None, "seconds": round(seconds, 3), "out": str(out)})
    return 0


def read_inputs(sources: list[str], channels: int, size: int, with_labels: bool):
    """uint8 (N, C, H, W) images and labels (N,) or None from PNG files, folders or one .npz."""
    if len(sources) == 1 and sources[0].endswith(".npz"):
        return read_npz_images(Path(sources[0]), channels, size, with_labels)
    from ..files import label_of

    paths = picture_files(sources)
    images = np.stack([read_image(p, channels, size) for p in paths])
    labels = None
    if with_labels:
        labelled = [label_of(p.name) for p in paths]
        missing = [p.name for p, k in zip(paths, labelled, strict=True) if k is None]
        if missing:
            raise UserError(f"--labels: {missing[0]} has no label in its name (expected NNNNN_class{{K}}.png)")
        labels = torch.tensor(labelled)
    return torch.from_numpy(images), labels


def read_image(path: Path, channels: int, size: int) -> np.ndarray:
    """One image file -> uint8 (C, H, W), opened as every picture is; what a conversion would change is refused."""
    from ..images import exact_image, open_picture

    return exact_image(open_picture(path), channels, size, path)


def read_npz_images(path: Path, channels: int, size: int, with_labels: bool):
    from ..data import read_image_npz

    x, labels = read_image_npz(path, with_labels=with_labels)  # uint8 (N, H, W) or (N, H, W, C)
    x = x[..., None] if x.ndim == 3 else x
    if x.shape[1:] != (size, size, channels):
        raise UserError(f"{path}: 'images' is {x.shape}, the model codes (N, {size}, {size}, {channels})")
    if with_labels and labels is None:
        raise UserError(f"--labels: {path} has no 'labels' array")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (N, C, H, W)
    return images, None if labels is None else torch.from_numpy(labels.astype(np.int64))


# ---- decompress -----------------------------------------------------------------------------------

def add_decompress(sub):
    p = sub.add_parser("decompress", help="decode a file written by `fractalgen compress` into PNG files")
    p.add_argument("file", help="the compressed file")
    add_checkpoint(p)
    p.add_argument("--out", required=True, help="output folder: {index:05d}_uncond.png or {index:05d}_class{K}.png, "
                   "in the original order; when it already holds such files, a fresh numbered subfolder (OUT/002, "
                   "...) is used")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    add_batch_size(p, "decoded")
    add_runtime(p, threads="1")
    add_json(p)
    p.set_defaults(func=run_decompress)


MAX_FILE_BYTES = 2**32  # larger than any file compress writes for a batch that fits in memory


def read_file(path: Path) -> bytes:
    """The bytes of a regular file of bounded size (not a device, a pipe or a folder)."""
    import stat

    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{path} is not a regular file")
            if info.st_size > MAX_FILE_BYTES:
                raise UserError(f"{path} is {info.st_size} bytes, more than a compressed file can be "
                                f"({MAX_FILE_BYTES} bytes)")
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def run_decompress(args) -> int:
    from ..codec import decompress, read_header
    from ..files import check_writable, image_name, save_each
    from .sample import output_folder

    path = Path(args.file)
    data = read_file(path)
    read_header(data)  # a bad file is refused before the model loads
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    model = load_model(args)
    started = time.time()
    images, labels = decompress(model, data, return_labels=True, batch_size=args.batch_size)
    seconds = time.time() - started
    names = [image_name(i, None if labels is None else labels[i]) for i in range(images.shape[0])]
    out = output_folder(out, names, args.overwrite)
    check_writable(out)  # made only now: a file that fails to decode leaves no folder behind
    save_each(images, labels, out)
    print(f"decompressed {images.shape[0]} images in {seconds:.1f} s into {out}/"
          + (f" ({names[0]} ... {names[-1]})" if names else ""))
    emit_json(args, {"images": images.shape[0], "bytes": len(data), "labels": labels is not None,
                     "seconds": round(seconds, 3), "out": str(out)})
    return 0
