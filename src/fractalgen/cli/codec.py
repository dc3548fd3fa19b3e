"""`fractalgen compress | decompress`: lossless image files coded with the model (fractalgen.codec).

Inputs are taken exactly as they are: an image must already have the model's size and channels
(a grayscale model accepts RGB files only when R = G = B), since any conversion would lose data.
The file names are stored too (unless --no-names), relative to the folder that holds every input,
and decompress writes each image back under its name, as a PNG, inside the output folder.
"""
from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

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
    p.add_argument("images", nargs="+", help="PNG files, folders of them (sorted by name; a subfolder's pictures "
                   "are included when it is named too), or one .npz with uint8 'images' (N, H, W) or (N, H, W, C)")
    add_checkpoint(p)
    p.add_argument("--out", required=True, help="the compressed file to write (never overwritten)")
    p.add_argument("--labels", action="store_true", help="code class-conditionally and store the labels (from the "
                   ".npz 'labels' array, or file names ending _class{K}.png)")
    p.add_argument("--no-names", action="store_true", help="leave the file names out (they are stored by default, "
                   "relative to the folder holding every input, for decompress to restore; an .npz has none, and "
                   "names that decompress would number alike, such as 00000_uncond.png, are not stored)")
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
    from ..files import check_writable, image_name, save_bytes

    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} already exists (choose another output; files are never overwritten)")
    model = load_model(args)
    c = model.config
    images, labels, names = read_inputs(args.images, c.channels, c.img_size, args.labels)
    numbered = [image_name(i, None if labels is None else labels[i]) for i in range(images.shape[0])]
    if args.no_names or names == numbered:  # decompress gives a file without names these names: none to store
        names = None
    if names is not None:
        check_names(names)
    check_writable(out.parent)  # before the long part
    started = time.time()
    data, bits = encode(model, images, labels, args.batch_size, args.images_per_stream, names=names)
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
                     "labels": labels is not None, "names": names is not None, "seconds": round(seconds, 3),
                     "out": str(out)})
    return 0


def read_inputs(sources: list[str], channels: int, size: int, with_labels: bool):
    """uint8 (N, C, H, W) images, labels (N,) or None, and names (N,) or None, from PNG files, folders or
    one .npz (which names no image)."""
    if len(sources) == 1 and sources[0].endswith(".npz"):
        return (*read_npz_images(Path(sources[0]), channels, size, with_labels), None)
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
    return torch.from_numpy(images), labels, picture_names(sources, paths)


def picture_names(sources: list[str], paths: list[Path]) -> list[str]:
    """Each picture's name relative to the folder that holds every source (a folder source counts as
    that folder): `photos` names photos/a.png "a.png"; `photos photos/2024` adds "2024/b.png"."""
    homes = [os.path.abspath(s) if Path(s).is_dir() else os.path.dirname(os.path.abspath(s)) for s in sources]
    try:
        base = os.path.commonpath(homes)
    except ValueError:  # Windows: sources on different drives
        raise UserError("the inputs share no folder (different drives), so their names cannot be stored: "
                        "use --no-names") from None
    return [Path(os.path.relpath(os.path.abspath(p), base)).as_posix() for p in paths]


def check_names(names: list[str]):
    """Refuse, before the long part, names the file cannot store or decompress cannot write."""
    from ..codec import CodecError, names_problem

    problem = names_problem(names)
    if problem is None:
        try:
            output_names(names)
        except CodecError as e:
            problem = str(e)
    if problem is not None:
        raise UserError(f"cannot store the file names: {problem} (rename the file, or leave names out with "
                        "--no-names)")


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
    p.add_argument("--out", required=True, help="output folder: each image under its stored name as a PNG (its "
                   "subfolders made inside OUT; a name that would land elsewhere is refused), or, in a file without "
                   "names, {index:05d}_uncond.png or {index:05d}_class{K}.png in the original order; when it already "
                   "holds such files, a fresh numbered subfolder (OUT/002, ...) is used")
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
            return f.read(info.st_size + 1)  # read(n) reserves n bytes first: the size, not the limit
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def run_decompress(args) -> int:
    from ..codec import decompress, read_names
    from ..files import check_writable, image_name, save_each
    from .sample import output_folder

    path = Path(args.file)
    data = read_file(path)
    stored = read_names(data)  # a bad file (its names included) is refused before the model loads
    names = None if stored is None else output_names(stored)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    model = load_model(args)
    started = time.time()
    images, labels = decompress(model, data, return_labels=True, batch_size=args.batch_size)
    seconds = time.time() - started
    if names is None:
        names = [image_name(i, None if labels is None else labels[i]) for i in range(images.shape[0])]
    out = output_folder(out, names, args.overwrite)
    check_inside(out, names)
    check_writable(out)  # made only now: a file that fails to decode leaves no folder behind
    save_each(images, labels, out, names=names)
    print(f"decompressed {images.shape[0]} images in {seconds:.1f} s into {out}/"
          + (f" ({names[0]} ... {names[-1]})" if names else ""))
    emit_json(args, {"images": images.shape[0], "bytes": len(data), "labels": labels is not None,
                     "names": stored is not None, "seconds": round(seconds, 3), "out": str(out)})
    return 0


def output_names(names: list[str]) -> list[str]:
    """The files that stored names decompress to: PNG files, so a picture suffix becomes .png ("a.jpg" ->
    "a.png") and any other name gains it. Raises CodecError when two would be one file."""
    from ..codec import CodecError, names_problem
    from ..images import IMAGE_EXTENSIONS

    paths = [PurePosixPath(name) for name in names]
    pngs = [str(p.with_suffix(".png") if p.suffix.lower() in IMAGE_EXTENSIONS else p.with_name(p.name + ".png"))
            for p in paths]
    problem = names_problem(pngs)
    if problem is not None:
        raise CodecError(f"once each name ends in .png, {problem}")
    return pngs


def check_inside(folder: Path, names: list[str]):
    """Refuse, before any file is written, a name whose way into `folder` passes a link or a file, or that
    ends at a folder: every file goes inside `folder` (stored names are relative, without '..')."""
    root = os.path.abspath(folder)
    for name in names:
        *folders, file = PurePosixPath(name).parts
        path = folder
        for part in folders:
            path = path / part
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                raise UserError(f"{path} is {'a link' if path.is_symlink() else 'a file'}, not a folder: {name} "
                                f"cannot be written inside {folder}")
        if (path / file).is_dir():
            raise UserError(f"{path / file} is a folder: {name} cannot be written there")
        if os.path.commonpath([root, os.path.abspath(folder / name)]) != root:
            raise UserError(f"{name} would land outside {folder}")
