"""Your own images with the defaults: a shapes folder, `fractalgen train --data --out`, samples judged by class.

    python -m benchmarks.own_images --out runs/own_images          # the numbers in benchmarks/RESULTS.md
    python -m benchmarks.own_images --out runs/plain --style plain
    python -m benchmarks.own_images --out runs/mine --data FOLDER  # your own labelled folder
    python -m benchmarks.own_images --out runs/tiny --train 8 --val 4 --size 8 --steps 2 --per-class 1

Builds a shapes folder (benchmarks/shapes.py: 4 classes, 200 training and 40 held-out 16x16 RGB
images; or takes --data), trains with no flag but --data and --out (plus --steps, for smoke runs), then trains a
small classifier on the same folder's training images (its accuracy on the held-out images is
printed) and reports which share of the samples of each class it recognises, at each guidance
scale in CFGS (the model's recommended one first).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .shapes import STYLES, make_shapes

CFGS = (1.0, 2.0, 4.0)


@torch.no_grad()
def accuracy_per_class(judge, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    predicted = judge(images).argmax(1)
    return [float((predicted[labels == c] == c).float().mean()) for c in range(int(labels.max()) + 1)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own_images", help="folder for the data and the run (must not exist)")
    parser.add_argument("--data", help="your own folder (ROOT/train/<class>/*, ROOT/val/<class>/*) instead of shapes")
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--val", type=int, default=40)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--style", choices=STYLES, default="random", help="the shapes' colours (benchmarks/shapes.py)")
    parser.add_argument("--steps", type=int, help="training steps (default: the trainer's own default)")
    parser.add_argument("--per-class", type=int, default=25, help="samples per class at each guidance scale")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} already exists")
    if args.data:
        data = Path(args.data)
        out.mkdir(parents=True)
    else:
        data = make_shapes(out / "shapes", train=args.train, val=args.val, size=args.size, style=args.style)
    run = out / "run"
    flags = ["train", "--data", str(data), "--out", str(run), "--json"]
    flags += ["--steps", str(args.steps)] if args.steps else []
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "fractalgen", *flags], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fractalgen {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    trained = json.loads(done.stdout.strip().splitlines()[-1])
    print("\n".join(line for line in done.stdout.strip().splitlines()[:-1] if not line.startswith("trained")))
    print(f"trained {trained['step']} steps in {time.time() - started:.0f} s wall, final loss {trained['loss']:.3f}")

    import fractalgen
    from fractalgen.data import load_dataset, stack
    from fractalgen.guidance import train_judge

    model = fractalgen.load(run / "model.safetensors")
    classes, c = model.class_names or tuple(map(str, range(model.config.num_classes))), model.config
    train_images, train_labels = stack(load_dataset(str(data), "train", c.img_size, c.channels))
    val_images, val_labels = stack(load_dataset(str(data), "val", c.img_size, c.channels))
    # The judge `fractalgen train` uses for its guidance, trained here with another seed.
    classifier = train_judge(train_images, train_labels, len(classes), flip=True, seed=1)
    held_out = accuracy_per_class(classifier, val_images, val_labels)
    print(f"classifier on the held-out images: {sum(held_out) / len(held_out):.1%}")
    recommended = fractalgen.resolve_settings(model).cfg
    rows = []
    for cfg in dict.fromkeys((recommended, *CFGS)):
        labels = torch.arange(len(classes)).repeat_interleave(args.per_class)
        images = fractalgen.sample(model, labels=labels, cfg=cfg, seed=0)
        rows.append((cfg, accuracy_per_class(classifier, images, labels)))
        fractalgen_grid(images, out / f"samples_cfg{cfg:g}.png", args.per_class)
    print("\n| cfg | " + " | ".join(classes) + " | mean |")
    print("|---|" + "---|" * (len(classes) + 1))
    for cfg, per_class in rows:
        mark = " (recommended)" if cfg == recommended else ""
        print(f"| {cfg:g}{mark} | " + " | ".join(f"{a:.0%}" for a in per_class)
              + f" | {sum(per_class) / len(per_class):.0%} |")


def fractalgen_grid(images, path: Path, nrow: int):
    from fractalgen.files import save_grid

    save_grid(images, path, nrow=nrow)


if __name__ == "__main__":
    main()
