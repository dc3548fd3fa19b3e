"""A shapes image folder: ROOT/{train,val}/{circle,cross,square,triangle}/*.png, drawn with PIL.

    python -m benchmarks.shapes shapes                      # 200 train + 40 val 16x16 RGB images
    python -m benchmarks.shapes shapes --train 1000 --val 100
    python -m benchmarks.shapes shapes --style plain       # on black

Each image is one shape of random size and position, so a class is the shape alone. Styles: `random`
(a random bright colour on a random dark background), `plain` (a random bright colour on black),
`white` (white on black). Seeded: the same arguments give the same files.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "cross", "square", "triangle")
STYLES = ("random", "plain", "white")


def draw_shape(kind: str, size: int, rng: random.Random, style: str = "random") -> Image.Image:
    """One `size` x `size` RGB image of `kind`: a bright shape on a dark background (see STYLES)."""
    background = tuple(rng.randrange(0, 80) for _ in range(3)) if style == "random" else (0, 0, 0)
    colour = (255, 255, 255) if style == "white" else tuple(rng.randrange(120, 256) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    side = rng.randint(size // 2, size - 2)  # the shape's bounding box, inside the image
    x0, y0 = rng.randint(0, size - 1 - side), rng.randint(0, size - 1 - side)
    x1, y1 = x0 + side, y0 + side
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=colour)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=colour)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif kind == "cross":
        bar = max(2, side // 3)
        mid_x, mid_y = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((mid_x - bar // 2, y0, mid_x - bar // 2 + bar - 1, y1), fill=colour)
        draw.rectangle((x0, mid_y - bar // 2, x1, mid_y - bar // 2 + bar - 1), fill=colour)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return image


def make_shapes(root, train: int = 200, val: int = 40, size: int = 16, seed: int = 0,
                classes=CLASSES, style: str = "random") -> Path:
    """Write `train` and `val` images, split evenly over `classes`, under root/{train,val}/<class>/."""
    root = Path(root)
    rng = random.Random(seed)
    for split, count in (("train", train), ("val", val)):
        for c, kind in enumerate(classes):
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count // len(classes) + (c < count % len(classes))):
                draw_shape(kind, size, rng, style).save(folder / f"{i:04d}.png")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to create (must not exist)")
    parser.add_argument("--train", type=int, default=200, help="training images (over all classes)")
    parser.add_argument("--val", type=int, default=40, help="held-out images")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", choices=STYLES, default="random", help="colours (see above)")
    args = parser.parse_args(argv)
    if Path(args.root).exists():
        parser.error(f"{args.root} already exists")
    make_shapes(args.root, args.train, args.val, args.size, args.seed, style=args.style)
    print(f"wrote {args.train} training and {args.val} held-out images to {args.root}")


if __name__ == "__main__":
    main()
