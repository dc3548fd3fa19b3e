"""Which learning rate and warm-up learn? A sweep over model width, batch size and dataset size.

    python -m benchmarks.lr_rule --out runs/lr_rule            # the table in benchmarks/RESULTS.md
    python -m benchmarks.lr_rule --out runs/lr_rule --steps 40 --quick

Each run trains a small AR model on a shapes folder (benchmarks/shapes.py, 16x16 RGB, 4 classes)
for the same number of steps with a linear warm-up and cosine decay, one CPU thread, then
measures the class-conditional loss on the held-out images. One factor moves at a time around a centre point
(width 64, batch 32, 200 images); each point tries the learning rates in LRS. The warm-up
sweep runs at the centre with the highest learning rate, where warm-up matters most.
train.default_lr is the rule fitted to this table.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from .shapes import make_shapes

LRS = (3e-4, 1e-3, 3e-3, 1e-2)
CENTRE = {"width": 64, "batch": 32, "images": 200}
MOVES = [{}, {"width": 32}, {"width": 128}, {"batch": 8}, {"batch": 64}, {"images": 800}]
WARMUPS = (0.0, 0.05, 0.2)  # warm-up as a share of the run


def config(width: int):
    from fractalgen import get_config

    return get_config("tiny_ar").replace(widths=(width, width // 2, max(16, width // 4)), num_classes=4,
                                         name=f"ar_w{width}")


def run(out: Path, data: Path, width: int, batch: int, lr: float, steps: int, warmup: int) -> dict:
    """Train one point; its last training loss, held-out loss and unconditional bits/dim."""
    from fractalgen import nll_per_image
    from fractalgen.data import load_dataset, stack
    from fractalgen.errors import UserError
    from fractalgen.formats import load
    from fractalgen.train import TrainOptions, train

    options = TrainOptions(out=str(out), data=str(data), steps=steps, batch_size=batch, lr=lr, warmup_steps=warmup,
                           sample_every=0, save_every=steps, device="cpu", num_workers=0)
    started = time.process_time()
    try:
        result = train(config(width), options)
    except UserError as e:  # a diverged run (non-finite loss or gradient) stops with one line
        print(f"diverged: {e}")
        return {"train_loss": math.inf, "val_loss": math.inf, "val_bits_per_dim": math.inf,
                "cpu_seconds": round(time.process_time() - started)}
    model = load(out / "model.safetensors")
    images, labels = stack(load_dataset(str(data), "val", 16, 3))
    bits = float(nll_per_image(model, images).mean())  # unconditional
    model.config = model.config.replace(label_drop_prob=0.0)  # every held-out image with its own class
    with torch.no_grad():
        val_loss = float(model.loss(images, labels))  # the training loss's weighting, in eval mode
    return {"train_loss": round(result["loss"], 3), "val_loss": round(val_loss, 3),
            "val_bits_per_dim": round(bits, 3), "cpu_seconds": round(time.process_time() - started)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lr_rule", help="folder for the data and runs (must not exist)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    parser.add_argument("--quick", action="store_true", help="the centre point only (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} already exists")
    folders = {n: make_shapes(out / f"shapes{n}", train=n, val=40, seed=n) for n in (200, 800)}
    rows = []

    def point(name, width, batch, images, lr, warmup_share=0.05):
        warmup = round(warmup_share * args.steps)
        row = {"width": width, "batch": batch, "images": images, "lr": lr, "warmup": warmup,
               **run(out / name, folders[images], width, batch, lr, args.steps, warmup)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    for move in MOVES[:1] if args.quick else MOVES:
        p = {**CENTRE, **move}
        for lr in LRS if not move else LRS[1:]:  # the lowest rate learns too slowly at the centre: tried once
            point(f"w{p['width']}_b{p['batch']}_n{p['images']}_lr{lr:g}", p["width"], p["batch"], p["images"], lr)
    if not args.quick:
        for share in WARMUPS:
            point(f"warmup{share:g}", CENTRE["width"], CENTRE["batch"], CENTRE["images"], LRS[-1], share)

    print(f"\n{args.steps} steps per run; held-out loss (class-conditional, nats per dimension with the training "
          f"loss's weighting; lower is better), best lr of each row in bold\n")
    print("| width | batch | images | warm-up | " + " | ".join(f"lr {lr:g}" for lr in LRS) + " |")
    print("|---|---|---|---|" + "---|" * len(LRS))
    groups = {}
    for r in rows:
        groups.setdefault((r["width"], r["batch"], r["images"], r["warmup"]), {})[r["lr"]] = r["val_loss"]
    for (width, batch, images, warmup), by_lr in groups.items():
        best = min(by_lr.values())
        cells = [("-" if lr not in by_lr else f"**{by_lr[lr]:.3f}**" if by_lr[lr] == best else f"{by_lr[lr]:.3f}")
                 for lr in LRS]
        print(f"| {width} | {batch} | {images} | {warmup} | " + " | ".join(cells) + " |")
    if any(not math.isfinite(r["val_loss"]) for r in rows):
        print("some runs diverged (non-finite bits/dim)")


if __name__ == "__main__":
    main()
