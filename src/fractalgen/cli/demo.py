"""`fractalgen demo`: the offline demo on the bundled MNIST models.

Into one folder: a class-conditional grid and a GIF of its generation, the held-out bits/dim, likelihood
maps (digits, then digits with a pasted block of noise), and an inpainting and a class-editing picture.
The held-out digits are read here and handed to the library as tensors.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from ..errors import UserError
from .options import (
    add_json,
    add_runtime,
    advance_to,
    apply_runtime,
    emit_json,
    integer,
    progress_bar,
    seed,
    settings_from,
)

# The demo's two example pictures, by file name, and what each shows.
DEMO_PICTURES = ("inpaint_lower_half.png", "edit_to_class.png")
DEMO_DESCRIPTIONS = {"inpaint_lower_half.png": "inpainting example", "edit_to_class.png": "class-editing example"}


def register(subparsers):
    p = subparsers.add_parser("demo", help="the offline demo on the bundled MNIST model: grid, GIF, bits/dim, "
                              "inpainting")
    p.add_argument("--checkpoint", help="model to demonstrate (a 10-class model; default: the bundled mnist "
                   "for sampling and mnist_mar, which sees known pixels on every side, for inpainting and editing)")
    p.add_argument("--out", default="demo", help="output folder (its demo files are replaced on each run)")
    p.add_argument("--per-class", type=integer(1), default=10, help="samples per digit (one row per digit)")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--no-examples", dest="examples", action="store_false",
                   help="skip the inpainting and editing pictures")
    # One thread: the demo model's matrices are small, and on a busy machine more threads mostly wait
    # for each other.
    add_runtime(p, threads="1")
    add_json(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from ..data import load_dataset, stack
    from ..files import check_writable, save_grid, write_text
    from ..formats import DEFAULT_INPAINT_CHECKPOINT, load
    from ..likelihood import measure_images
    from ..samples import sample
    from ..visualize import GenerationRecorder

    started = time.time()
    # A model the user named does everything; else the bundled AR model samples and measures, and the
    # bundled MAR model (which sees known pixels on every side) inpaints and edits.
    sampler_name = args.checkpoint or "mnist"
    device = apply_runtime(args)
    model = load(sampler_name, device=device)
    if model.config.num_classes < 1:
        raise UserError("the demo needs a class-conditional model")
    out = Path(args.out)
    labels = [c for c in range(model.config.num_classes) for _ in range(args.per_class)]
    settings = settings_from(args, model)
    check_writable(out)
    print(f"model: {sampler_name} ({model.config.name}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters); sampling {len(labels)} digits with cfg {settings.cfg}, temperature "
          f"{settings.temperature} ...", flush=True)
    # The GIF follows one digit per class (a small file); the grid shows them all.
    recorder = GenerationRecorder(nrow=5, scale=4, select=list(range(0, len(labels), args.per_class)))
    with progress_bar(len(labels), "sampling") as bar:
        images = sample(model, labels, settings=settings, seed=args.seed, batch_size=None, on_step=recorder,
                        progress=advance_to(bar)).cpu()
    paths = {"grid": out / "samples_grid.png", "gif": out / "generation.gif",
             "bits_per_dim_file": out / "bits_per_dim.txt"}
    save_grid(images, paths["grid"], nrow=args.per_class, scale=2)
    recorder.save(paths["gif"])
    print(f"class-conditional grid (one row per digit): {paths['grid']}")
    print(f"generation GIF: {paths['gif']}", flush=True)

    c = model.config
    digits, digit_labels = stack(load_dataset("mnist", "val", c.img_size, c.channels))  # the held-out digits
    nll = measure_images(model, digits, batch_size=100, seed=args.seed, source="mnist")
    write_text(f"{nll['bits_per_dim']:.4f} +- {nll['stderr']:.4f} bits/dim on the {nll['images']} held-out MNIST "
               f"digits ({nll['passes']} pass(es))\n", paths["bits_per_dim_file"])
    print(f"held-out bits/dim: {nll['bits_per_dim']:.4f} +- {nll['stderr']:.4f} ({nll['images']} digits): "
          f"{paths['bits_per_dim_file']}")

    paths["likelihood_maps"] = demo_maps(model, digits[:4], out, args.seed)
    print(f"likelihood maps (two digits, then two with a pasted 6x6 noise block): {paths['likelihood_maps']}")

    failed = False
    if args.examples:
        try:
            painter = model if args.checkpoint else load(DEFAULT_INPAINT_CHECKPOINT, device=device)
            for path in demo_examples(painter, out, digits[:8], digit_labels[:8], seed=args.seed):
                print(f"{DEMO_DESCRIPTIONS[path.name]}: {path}")
        except Exception as e:  # the optional part must not hide the files already written
            print(f"fractalgen demo: inpainting/editing example failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
    seconds = time.time() - started
    print(f"demo finished in {seconds:.0f} s; files in {out}/")
    emit_json(args, {"bits_per_dim": nll["bits_per_dim"], "stderr": nll["stderr"], "images": nll["images"],
                     "seconds": round(seconds, 1), **{k: str(v) for k, v in paths.items()}})
    return 1 if failed else 0


# ---- the pictures ------------------------------------------------------------------------------

def demo_maps(model, digits: torch.Tensor, out: Path, seed: int) -> Path:
    """Four digits (uint8 (4, C, H, W)) beside their bits per pixel; the last two carry a pasted block of noise."""
    from ..files import save_image
    from ..heatmap import maps_figure, paste_noise
    from ..likelihood import pixel_bits

    noisy, _ = paste_noise(digits[2:], size=6, seed=seed)
    images = torch.cat([digits[:2], noisy])
    bits = pixel_bits(model, images)
    titles = [f"{kind}: {float(b.double().mean()):.2f} bits/dim, {float(b.double().sum()) / 8:.0f} bytes"
              for kind, b in zip(["digit", "digit", "pasted noise", "pasted noise"], bits, strict=True)]
    return save_image(maps_figure(images, bits, scale=6, titles=titles), out / "likelihood_maps.png")


def demo_examples(model, out_dir, images: torch.Tensor, labels: torch.Tensor | None = None,
                  seed: int = 0) -> list[Path]:
    """Write the demo's inpainting pictures into out_dir; returns the written paths.

    images: uint8 (N, C, H, W) at the model's size, e.g. held-out digits; labels: their classes (N,) or None.
    Two pictures: the lower half regenerated (rows: original, input with the mask shown, two
    completions), and, for a class-conditional model, the images edited to another class (rows:
    original, input, the edit; the target of image i is its label + 1 + i % (classes - 1), modulo the
    class count).
    """
    from ..conditional import edit, inpaint, top_rows_known
    from ..files import save_image
    from ..visualize import rows_figure, show_mask

    out_dir = Path(out_dir)
    size = model.config.img_size
    paths = []

    top_half = top_rows_known(size, 0.5).expand(images.shape[0], -1, -1)
    completions = inpaint(model, images, top_half, labels=labels, n=2, seed=seed)  # (2N, C, H, W)
    rows = [images, show_mask(images, top_half), completions[0::2], completions[1::2]]
    given = "" if labels is None else f" (given the class: {', '.join(map(str, labels.tolist()))})"
    captions = ["original", "input: the red half is regenerated", "completion 1", "completion 2"]
    figure = rows_figure(rows, captions=captions, title=f"inpainting: the lower half drawn from the upper{given}")
    paths.append(save_image(figure, out_dir / DEMO_PICTURES[0]))

    if model.config.num_classes > 0:
        k = model.config.num_classes
        start = labels if labels is not None else torch.zeros(images.shape[0], dtype=torch.long)
        targets = (start + 1 + torch.arange(images.shape[0]) % max(1, k - 1)) % k
        keep = top_rows_known(size, 0.25).expand(images.shape[0], -1, -1)
        edited = edit(model, images, targets, known=keep, seed=seed)
        rows = [images, show_mask(images, keep), edited]
        captions = ["original" + ("" if labels is None else f" (classes {', '.join(map(str, labels.tolist()))})"),
                    "input: the red part is regenerated", f"edited to classes {', '.join(map(str, targets.tolist()))}"]
        figure = rows_figure(rows, captions=captions, title="class editing: the lower three quarters redrawn "
                             "under another class")
        paths.append(save_image(figure, out_dir / DEMO_PICTURES[1]))
    return paths
