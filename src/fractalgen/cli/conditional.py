"""`fractalgen inpaint | outpaint | uncrop | edit`: conditional pixel prediction on one image file.

    fractalgen inpaint --checkpoint mnist --image digit.png --box 4,14,24,28 --samples 4 --out out/
    fractalgen edit --checkpoint mnist --image digit.png --label 3 --out out/

The image is loaded with Pillow; another size is centre-cropped to a square and resized to the
model's size (with a note). A mask image must have the image's size: white = regenerate.
Boxes are x0,y0,x1,y1 in the input image's pixels (x1, y1 exclusive). Writes the completions
and a side-by-side strip (the input with the regenerated region tinted, then the completions).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from .. import conditional
from ..checkpoint import DEFAULT_INPAINT_CHECKPOINT
from ..errors import UserError
from ..files import check_writable, save_image, to_pil
from ..visualize import as_rgb, rows_figure, show_mask
from .options import (
    add_checkpoint,
    add_runtime,
    add_sampling,
    advance_to,
    integer,
    load_model,
    number,
    precision_used,
    progress_bar,
    settings_from,
)

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # Pillow modes without colour
# What a box means for each command: the region to regenerate, or the region to keep.
BOX_MEANS_KEEP = {"inpaint": False, "outpaint": True, "uncrop": True, "edit": False}
HELP = {
    "inpaint": "regenerate a region of an image (--mask or --box), keeping the rest",
    "outpaint": "keep a region of an image (--box, or --mask) and generate everything around it",
    "uncrop": "keep a small centre of an image and generate the rest (default: the central half of each side)",
    "edit": "regenerate part of an image under another class label (default: the lower three quarters)",
}


def register(subparsers):
    for name, text in HELP.items():
        p = subparsers.add_parser(name, help=text, description=text)
        add_checkpoint(p, default=DEFAULT_INPAINT_CHECKPOINT)
        p.add_argument("--image", required=True, help="input image file (PNG, JPEG, ...)")
        region = p.add_mutually_exclusive_group(required=name in ("inpaint", "outpaint"))
        region.add_argument("--mask", help="mask image of the input's size: white = regenerate, black = keep")
        box_help = "region to keep" if BOX_MEANS_KEEP[name] else "region to regenerate"
        region.add_argument("--box", help=f"x0,y0,x1,y1 in input pixels (x1, y1 exclusive): the {box_help}")
        if name == "uncrop":
            p.add_argument("--fraction", type=number(above=0, maximum=1), default=0.5,
                           help="side of the known central square as a fraction of the image side (default: 0.5)")
        p.add_argument("--label", type=integer(0), required=name == "edit",
                       help="class label (omit for unconditional)" if name != "edit" else "target class label")
        p.add_argument("--samples", type=integer(1), default=1, help="completions to draw (default: 1)")
        add_sampling(p, batch_size=None)
        add_runtime(p)
        p.add_argument("--out", required=True, help="output directory (existing files are never overwritten)")
        p.set_defaults(func=run)


def run(args) -> int:
    model = load_model(args)
    precision_used(args, model)  # a GPU without bf16 is refused before any file is touched
    size, channels = model.config.img_size, model.config.channels
    if args.label is not None and not 0 <= args.label < model.config.num_classes:
        k = model.config.num_classes
        raise UserError(f"label {args.label} is out of range: the model has {k} classes"
                        + (f" (0..{k - 1})" if k else " (it is unconditional)"))

    picture, converted = open_image(args.image, channels)
    regenerate_full = region_to_regenerate(args, picture.size)  # bool (h, w) at the input's size
    image, regenerate, crop, fitted = fit_to_model(picture, regenerate_full, size)
    if converted or fitted:  # one note line for everything done to the input
        print(f"note: {args.image} is {'; '.join(t for t in (converted, fitted) if t)}", file=sys.stderr)
    known = ~regenerate

    out_dir = Path(args.out)
    stem = Path(args.image).stem
    names = [f"{stem}_{args.command}_{i}.png" for i in range(args.samples)]
    full_names = [f"{stem}_{args.command}_{i}_full.png" for i in range(args.samples)] if crop else []
    strip_name = f"{stem}_{args.command}_strip.png"
    existing = [out_dir / n for n in names + full_names + [strip_name] if (out_dir / n).exists()]
    if existing:
        raise UserError(f"{existing[0]} already exists (choose another --out; files are never overwritten)")
    check_writable(out_dir)  # before the long part, not after it

    if known.all():
        print(f"fractalgen {args.command}: note: the mask has no pixel to regenerate; the input is returned unchanged",
              file=sys.stderr)
    settings = {**vars(settings_from(args, model)), "seed": args.seed, "samples": args.samples,
                "precision": args.precision}
    with progress_bar(args.samples, args.command) as bar:
        if args.command == "edit":
            completions = conditional.edit(model, image[None], args.label, known=known[None],
                                           progress=advance_to(bar), **settings)
        else:
            completions = conditional.inpaint(model, image[None], known[None], labels=args.label,
                                              progress=advance_to(bar), **settings)
    for name, completion in zip(names, completions, strict=True):
        save_image(to_pil(completion), out_dir / name)
    for name, completion in zip(full_names, completions, strict=False):
        save_image(paste_back(picture, completion, regenerate_full, crop), out_dir / name)
    label = "" if args.label is None else f" under class {args.label}"
    title = f"{args.command}{label}: the input (red: regenerated), then {args.samples} completion(s)"
    strip = rows_figure([torch.cat([show_mask(image[None], known[None]), as_rgb(completions)])], title=title)
    save_image(strip, out_dir / strip_name)
    print(f"wrote {args.samples} completion(s) and {strip_name} to {out_dir}")
    if full_names:
        print(f"full-size: {full_names[0]}{' ...' if len(full_names) > 1 else ''} (the completed square pasted "
              f"back into the {picture.width}x{picture.height} picture)")
    return 0


def paste_back(picture, completion: torch.Tensor, regenerate: np.ndarray, crop):
    """The input picture with the regenerated pixels of its square replaced by the completion, resized to the
    square's side (bicubic); pixels outside the square and known pixels stay as they were."""
    from PIL import Image

    left, top, right, bottom = crop
    square = to_pil(completion).resize((right - left, bottom - top), Image.BICUBIC)
    where = Image.fromarray(regenerate[top:bottom, left:right].astype(np.uint8) * 255)  # the paste mask
    full = picture.copy()
    full.paste(square, (left, top), where)
    return full


# ---- inputs ---------------------------------------------------------------------------------------------

def open_image(path, channels: int):
    """A PIL image in the model's colour mode (L for one channel, RGB for three), and what the
    conversion did ("" when nothing changed), for the note."""
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"image files can feed 1- or 3-channel models; this model has {channels} channels")
    try:
        with Image.open(path) as picture:
            colour = picture.mode not in GRAY_MODES
            converted = ""
            if colour and mode == "L":
                converted = f"a colour image ({picture.mode}), made grayscale for this grayscale model"
            elif not colour and mode == "RGB":
                converted = f"grayscale ({picture.mode}), repeated into RGB for this colour model"
            picture = picture.convert(mode)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    if picture.width == 0 or picture.height == 0:
        raise UserError(f"image {path} is empty ({picture.width}x{picture.height})")
    return picture, converted


def region_to_regenerate(args, image_size) -> np.ndarray:
    """Bool (h, w) at the input's size, True = regenerate, from --mask, --box or the command's default."""
    w, h = image_size
    if args.mask:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.mask) as m:
                mask = np.asarray(m.convert("L")) > 127  # white = regenerate
        except FileNotFoundError:
            raise UserError(f"mask not found: {args.mask}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"cannot read mask {args.mask}: {e}") from None
        if mask.shape != (h, w):
            raise UserError(f"mask {args.mask} is {mask.shape[1]}x{mask.shape[0]} but image {args.image} is {w}x{h}")
        return mask
    if args.box:
        try:
            box = [int(v) for v in args.box.split(",")]
        except ValueError:
            raise UserError(f"--box must be four integers x0,y0,x1,y1, got {args.box!r}") from None
        x0, y0, x1, y1 = conditional.check_box(box, w, h)
        inside = np.zeros((h, w), dtype=bool)
        inside[y0:y1, x0:x1] = True
        return ~inside if BOX_MEANS_KEEP[args.command] else inside
    if args.command == "uncrop":
        side = min(w, h)  # the known centre of the square the model will see
        x0, y0, x1, y1 = conditional.centre_box(side, args.fraction)
        inside = np.zeros((h, w), dtype=bool)
        inside[(h - side) // 2 + y0:(h - side) // 2 + y1, (w - side) // 2 + x0:(w - side) // 2 + x1] = True
        return ~inside
    regenerate = np.zeros((h, w), dtype=bool)  # edit: the lower three quarters
    regenerate[round(0.25 * h):] = True
    return regenerate


def fit_to_model(picture, regenerate: np.ndarray, size: int):
    """Centre-crop to a square and resize to the model's size.

    -> uint8 (C, S, S), bool (S, S) to regenerate, the crop box (x0, y0, x1, y1) in the input's
    pixels (None when the input already has the model's size), and what was done ("" if nothing).
    """
    from PIL import Image

    w, h = picture.size
    crop = None
    if (w, h) != (size, size):
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        crop = (left, top, left + side, top + side)
        picture = picture.crop(crop).resize((size, size), Image.BICUBIC)
        mask = Image.fromarray(regenerate.astype(np.uint8) * 255).crop(crop).resize((size, size), Image.NEAREST)
        regenerate = np.asarray(mask) > 127
    fitted = "" if crop is None else (f"{w}x{h}, centre-cropped to {side}x{side} and resized to {size}x{size} "
                                      f"(the model's size)")
    array = np.asarray(picture)
    image = torch.from_numpy(array.copy()).reshape(size, size, -1).permute(2, 0, 1).contiguous()  # (C, S, S)
    return image, torch.from_numpy(regenerate.copy()), crop, fitted
