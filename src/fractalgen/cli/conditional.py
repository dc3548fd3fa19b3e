"""`fractalgen inpaint | outpaint | uncrop | edit`: conditional pixel prediction on one image file.

    fractalgen inpaint --checkpoint mnist --image digit.png --box 4,14,24,28 --n 4 --out out/
    fractalgen edit --checkpoint mnist --image digit.png --label 3 --out out/

The image is read by the picture rules every reader shares (fractalgen.images): converted to the
model's channels, and another size resized and centre-cropped to the model's (with a note).
A mask image must have the image's size: white = regenerate.
Boxes are x0,y0,x1,y1 in the input image's pixels (x1, y1 exclusive). Writes the completions
and a side-by-side strip (the input with the regenerated region tinted, then the completions).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image

from .. import conditional
from ..errors import UserError
from ..files import check_writable, save_image, to_pil
from ..formats import DEFAULT_INPAINT_CHECKPOINT
from ..images import fit_mask, marked, model_image, open_picture, source_box, to_channels
from ..model import check_labels
from ..visualize import as_rgb, rows_figure, show_mask
from .options import (
    add_checkpoint,
    add_old_name,
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
        p.add_argument("--n", type=integer(1), default=1, help="completions to draw (default: 1)")
        add_old_name(p, "--samples", "--n", dest="n", type=integer(1))
        add_sampling(p, batch_size=None)
        add_runtime(p)
        p.add_argument("--out", required=True, help="output directory (existing files are never overwritten)")
        p.set_defaults(func=run)


def run(args) -> int:
    model = load_model(args)
    precision_used(args, model)  # a GPU without bf16 is refused before any file is touched
    size, channels = model.config.img_size, model.config.channels
    if args.label is not None:
        check_labels(args.label, model.config.num_classes, UserError)

    changes: list[str] = []
    picture = to_channels(open_picture(args.image), channels, changes)  # the model's mode, the input's size
    regenerate_full = region_to_regenerate(args, picture.size)  # bool (h, w) at the input's size
    image, regenerate, crop = fit_to_model(picture, regenerate_full, size, changes)
    if changes:  # one note line for everything done to the input
        print(f"note: {args.image}: {'; '.join(changes)}", file=sys.stderr)
    known = ~regenerate

    out_dir = Path(args.out)
    stem = Path(args.image).stem
    names = [f"{stem}_{args.command}_{i}.png" for i in range(args.n)]
    full_names = [f"{stem}_{args.command}_{i}_full.png" for i in range(args.n)] if crop else []
    strip_name = f"{stem}_{args.command}_strip.png"
    existing = [out_dir / n for n in names + full_names + [strip_name] if (out_dir / n).exists()]
    if existing:
        raise UserError(f"{existing[0]} already exists (choose another --out; files are never overwritten)")
    check_writable(out_dir)  # before the long part, not after it

    if known.all():
        print(f"fractalgen {args.command}: note: the mask has no pixel to regenerate; the input is returned unchanged",
              file=sys.stderr)
    options = {"settings": settings_from(args, model), "seed": args.seed, "n": args.n,
               "precision": args.precision}
    with progress_bar(args.n, args.command) as bar:
        if args.command == "edit":
            completions = conditional.edit(model, image[None], args.label, known=known[None],
                                           progress=advance_to(bar), **options)
        else:
            completions = conditional.inpaint(model, image[None], known[None], labels=args.label,
                                              progress=advance_to(bar), **options)
    for name, completion in zip(names, completions, strict=True):
        save_image(cast(Image.Image, to_pil(completion)), out_dir / name)  # (C, H, W) -> one picture
    for name, completion in zip(full_names, completions, strict=False):
        assert crop is not None  # full_names is empty without a crop
        save_image(paste_back(picture, completion, regenerate_full, crop), out_dir / name)
    label = "" if args.label is None else f" under class {args.label}"
    title = f"{args.command}{label}: the input (red: regenerated), then {args.n} completion(s)"
    strip = rows_figure([torch.cat([show_mask(image[None], known[None]), as_rgb(completions)])], title=title)
    save_image(strip, out_dir / strip_name)
    print(f"wrote {args.n} completion(s) and {strip_name} to {out_dir}")
    if full_names:
        print(f"full-size: {full_names[0]}{' ...' if len(full_names) > 1 else ''} (the completed square pasted "
              f"back into the {picture.width}x{picture.height} picture)")
    return 0


def paste_back(picture: Image.Image, completion: torch.Tensor, regenerate: np.ndarray,
               crop: tuple[int, ...]) -> Image.Image:
    """The input picture with the regenerated pixels of its square replaced by the completion, resized to the
    square's side (bicubic); pixels outside the square and known pixels stay as they were."""
    left, top, right, bottom = crop
    square = cast(Image.Image, to_pil(completion)).resize((right - left, bottom - top), Image.Resampling.BICUBIC)
    where = Image.fromarray(regenerate[top:bottom, left:right].astype(np.uint8) * 255)  # the paste mask
    full = picture.copy()
    full.paste(square, (left, top), where)
    return full


# ---- inputs ---------------------------------------------------------------------------------------------

def region_to_regenerate(args, image_size: tuple[int, int]) -> np.ndarray:
    """Bool (h, w) at the input's size, True = regenerate, from --mask, --box or the command's default."""
    w, h = image_size
    if args.mask:
        mask = marked(open_picture(args.mask, "mask"))  # white = regenerate
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


def fit_to_model(picture: Image.Image, regenerate: np.ndarray, size: int, changes: list[str]
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...] | None]:
    """The picture (already in the model's mode) and its region to regenerate at the model's size, by the
    picture rules (fractalgen.images: ADM centre crop; a model pixel regenerated when any pixel it overlaps is).

    -> uint8 (C, S, S), bool (S, S) to regenerate, and the square the model sees as (x0, y0, x1, y1) in the
    input's pixels, rounded (None when the input already has the model's size); what was done is appended
    to `changes`.
    """
    image = model_image(picture, len(picture.getbands()), size, changes)
    crop = None if picture.size == (size, size) else tuple(round(v) for v in source_box(*picture.size, size))
    return image, torch.from_numpy(fit_mask(regenerate, size)), crop
