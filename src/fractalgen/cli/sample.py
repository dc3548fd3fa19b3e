"""`fractalgen sample | nll | eval-samples`: draw images, measure likelihood, check samples.

Commands that report numbers take `--json` and then print one JSON object as the last line of stdout.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ..errors import UserError
from ..samples import check_count
from .options import (
    add_checkpoint,
    add_json,
    add_runtime,
    add_sampling,
    advance_to,
    class_list,
    emit_json,
    integer,
    load_model,
    picture_files,
    precision_used,
    progress_bar,
    seed,
    settings_from,
)


def register(subparsers):
    add_sample(subparsers)
    add_nll(subparsers)
    add_eval_samples(subparsers)


def labels_for(model, classes: list[str] | None, per_class: int | None, n: int | None):
    """(labels or None for unconditional, number of images). --n alone samples unconditionally.
    `classes`: numbers or the model's class names."""
    k = model.config.num_classes
    image_bytes = model.config.channels * model.config.img_size**2
    if n is not None:  # before a label is listed per image: a count the images cannot fit in is one line
        check_count(n, "--n", 1, image_bytes, UserError)
    if k == 0 and (classes is not None or per_class is not None):
        raise UserError("this model is unconditional: use --n, not --classes/--per-class")
    if k == 0 or (classes is None and per_class is None and n is not None):
        return None, n or 16
    from ..model import check_labels, class_indices

    try:
        chosen = class_indices(list(classes), model.class_names) if classes is not None else list(range(k))
    except ValueError as e:
        raise UserError(f"--classes: {e}") from None
    if not chosen:
        raise UserError("--classes is empty")
    check_labels(chosen, k, UserError)
    if per_class is not None:
        check_count(per_class, "--per-class", 1, len(chosen) * image_bytes, UserError)
    labels = [c for c in chosen for _ in range(per_class or 1)]
    if n is not None:
        labels = [labels[i % len(labels)] for i in range(n)]
    return labels, len(labels)


def draw(model, labels, n, settings, args, on_step=None):
    """fractalgen.sample with the command's seed and batch size, with a progress bar; uint8 (N, C, H, W) on the CPU."""
    from ..samples import sample

    with progress_bar(n, "sampling") as bar:
        return sample(model, labels=labels, n=n, seed=args.seed, batch_size=args.batch_size, on_step=on_step,
                      progress=advance_to(bar), precision=args.precision, settings=settings,
                      compile=getattr(args, "compile", False)).cpu()


# ---- sample ------------------------------------------------------------------------------------

def add_sample(sub):
    p = sub.add_parser("sample", help="sample images (grid, one PNG per image, optional GIF)")
    add_checkpoint(p)
    p.add_argument("--classes", type=class_list, help="comma-separated classes: numbers (0,1,2) or the model's "
                   "class names (circle,square) (default: every class)")
    p.add_argument("--per-class", type=integer(1), help="images per class (default: 1)")
    p.add_argument("--n", type=integer(1), help="number of images (alone: unconditional samples)")
    add_sampling(p)
    p.add_argument("--out", default="samples", help="output folder: grid.png and {index:05d}_class{label}.png; "
                   "when it already holds such files, a fresh numbered subfolder (OUT/002, ...) is used")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out (and "
                   "--gif) instead of writing into a fresh numbered subfolder")
    p.add_argument("--gif", help="also write the generation process of the first batch as an animated GIF")
    p.add_argument("--nrow", type=integer(1), help="images per row of the grid (default: one class a row "
                   "with --per-class and several classes, else a near-square grid)")
    p.add_argument("--scale", type=integer(1), help="enlarge each pixel of the grid this many times, nearest "
                   "neighbour (default: small images enlarged to a readable size)")
    p.add_argument("--compile", action="store_true", help="compile the decode steps (pixel heads, AR levels) and "
                   "MAR levels with torch.compile (needs a C++ compiler on a CPU; the first batch compiles first, so "
                   "it pays for long runs)")
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_sample)


def run_sample(args) -> int:
    from ..files import check_writable, image_name, save_each, save_grid
    from ..visualize import GenerationRecorder

    model = load_model(args)
    labels, n = labels_for(model, args.classes, args.per_class, args.n)
    settings = settings_from(args, model)
    precision = precision_used(args, model)  # a GPU without bf16 is refused before any file is touched
    names = ["grid.png"] + [image_name(i, None if labels is None else labels[i]) for i in range(n)]
    out = output_folder(Path(args.out), names, args.overwrite)
    if args.gif and Path(args.gif).exists() and not args.overwrite:
        raise UserError(f"{args.gif} already exists (choose another --gif, or --overwrite)")
    check_writable(out)  # before the long part, not after it
    if args.gif:
        check_writable(Path(args.gif).parent)
    several_classes = labels is not None and len(set(labels)) > 1
    nrow = args.nrow or (args.per_class if several_classes and args.per_class else None)
    gif_rows = min(nrow or min(n, 10), args.batch_size)
    recorder = GenerationRecorder(nrow=gif_rows, scale=args.scale or 4) if args.gif else None
    started = time.time()
    images = draw(model, labels, n, settings, args, on_step=recorder)
    seconds = time.time() - started
    save_grid(images, out / "grid.png", nrow=nrow, scale=args.scale)
    save_each(images, labels, out)
    print(f"sampled {n} images in {seconds:.1f} s ({seconds / n:.3f} s/image) with {settings.describe()}, "
          f"{precision}")
    print(f"grid: {out / 'grid.png'}")
    print(f"images: {out}/{names[1]} ... {names[-1]}")
    if recorder is not None:
        recorder.save(args.gif)
        print(f"gif: {args.gif}")
    emit_json(args, {"images": n, "seconds": round(seconds, 3), "out": str(out), **settings.to_dict(),
                     "precision": precision})
    return 0


def output_folder(out: Path, names: list[str], overwrite: bool) -> Path:
    """Where a run's files go: `out` itself when it holds none of them (or with --overwrite), else
    the first free numbered subfolder out/002, out/003, ... (said on stderr)."""
    if overwrite or not any(os.path.lexists(out / name) for name in names):  # a link, even dangling, is taken
        return out
    k = 2
    while (out / f"{k:03d}").exists():
        k += 1
    fresh = out / f"{k:03d}"
    print(f"note: {out} already holds samples; this run writes into {fresh} (--overwrite replaces the files in "
          f"{out} instead)", file=sys.stderr)
    return fresh


# ---- nll ---------------------------------------------------------------------------------------

def add_nll(sub):
    p = sub.add_parser("nll", help="likelihood in bits/dim (with its standard error) of picture files or a dataset")
    p.add_argument("files", nargs="*", help="picture files or folders of them, read as the model's input (as "
                   "`fractalgen inpaint` reads them); without them, --data is measured")
    add_checkpoint(p)
    p.add_argument("--data", default="mnist", help="'mnist', an image folder, or an .npz file")
    p.add_argument("--split", default="val", choices=["train", "val"], help="which split of --data")
    p.add_argument("--passes", type=integer(1), help="random-mask passes averaged for MAR levels (default: 1 for AR, "
                   "4 for MAR)")
    p.add_argument("--limit", type=integer(1), help="use only the first N images")
    p.add_argument("--batch-size", type=integer(1), default=100, help="images per forward pass")
    p.add_argument("--seed", type=seed, default=0, help="seed for the MAR masks")
    p.add_argument("--maps", help="also write a likelihood map per image into this folder: the image beside its "
                   "bits per pixel (fractalgen.pixel_bits), one colour scale for all; when it already holds maps, "
                   "a fresh numbered subfolder (MAPS/002, ...) is used")
    p.add_argument("--overwrite", action="store_true", help="replace the maps of an earlier run in --maps")
    p.add_argument("--per-image", action="store_true", help="also print one line per image: its name and bits/dim "
                   "(--json always carries every image)")
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_nll)


def run_nll(args) -> int:
    from ..data import load_dataset, stack
    from ..likelihood import measure_images

    model = load_model(args)
    c = model.config
    if args.files:
        images, names = read_pictures(args.files, model, args.limit)
        source = f"{len(names)} file(s)"
    else:
        images, _ = stack(load_dataset(args.data, args.split, c.img_size, c.channels), args.limit)
        names, source = [f"{i:05d}" for i in range(images.shape[0])], f"{args.data}/{args.split}"
    maps = maps_target(images, names, args) if args.maps else None  # a bad --maps folder fails before the long pass
    with progress_bar(None, "likelihood") as bar:
        result = measure_images(model, images, args.passes, args.batch_size, args.seed, progress=bar.update,
                                source=args.data if not args.files else source)
    spread = (f"+- {result['stderr']:.4f} (standard error; " if result["stderr"] is not None
              else "(one image: no standard error; ")
    print(f"bits/dim: {result['bits_per_dim']:.4f} {spread}{result['images']} images from {source}, "
          f"{result['passes']} pass(es))")
    if args.per_image:
        for name, bits in zip(names, result["per_image"], strict=True):
            print(f"{name}\t{bits:.4f}")
    result["per_image"] = [{"name": name, "bits_per_dim": bits}
                           for name, bits in zip(names, result["per_image"], strict=True)]
    if maps is not None:
        result["maps"] = write_maps(model, args, *maps)
    emit_json(args, result)
    return 0


def read_pictures(sources: list[str], model, limit: int | None):
    """uint8 (N, C, S, S) and a name per picture from picture files and folders of them (sorted by name),
    each read as the model's input; a note line for each picture the reading changed."""
    import torch

    from ..images import read_image

    paths = picture_files(sources)
    paths = paths[:limit] if limit else paths
    pixels = []
    for path in paths:
        image, notes = read_image(path, model)
        for note in notes:
            print(f"note: {path}: {note}", file=sys.stderr)
        pixels.append(image)
    stems = [p.stem for p in paths]
    names = stems if len(set(stems)) == len(stems) else [f"{i:05d}_{s}" for i, s in enumerate(stems)]
    return torch.stack(pixels), names


def maps_target(images, image_names: list[str], args):
    """The images `nll` measures, the maps' file names (NAME_map.png, after each input) and their folder
    (checked writable)."""
    from ..files import check_writable

    names = [f"{name}_map.png" for name in image_names]
    out = output_folder(Path(args.maps), names, args.overwrite)
    check_writable(out)
    return images, names, out


def write_maps(model, args, images, names, out: Path) -> str:
    """Likelihood maps of the images `nll` measured, one per image, into `out` (see maps_target)."""
    from ..heatmap import save_maps
    from ..likelihood import pixel_bits

    bits = pixel_bits(model, images, batch_size=args.batch_size)
    save_maps(images, bits, out, names)
    print(f"likelihood maps: {out}/{names[0]} ... {names[-1]} (bits per pixel; the codec's cost per pixel)")
    return str(out)


# ---- eval-samples --------------------------------------------------------------------------

def add_eval_samples(sub):
    p = sub.add_parser("eval-samples", help="fraction of class-conditional MNIST samples the bundled classifier "
                       "recognises")
    add_checkpoint(p)
    p.add_argument("--samples", help="evaluate PNGs written by `fractalgen sample --out` instead of sampling")
    p.add_argument("--per-class", type=integer(1), default=50, help="samples per digit")
    add_sampling(p)
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_eval_samples)


def run_eval_samples(args) -> int:
    import torch

    from ..classifier import load_mnist_classifier, predict, read_labelled_pngs

    if args.samples:
        images, labels = read_labelled_pngs(args.samples)
        source = args.samples
    else:
        model = load_model(args)
        if model.config.num_classes != 10 or model.config.img_size != 28 or model.config.channels != 1:
            raise UserError("eval-samples needs a 10-class 28x28 grayscale (MNIST) model")
        label_list, n = labels_for(model, None, args.per_class, None)
        settings = settings_from(args, model)
        started = time.time()
        images = draw(model, label_list, n, settings, args)
        print(f"sampled {n} digits in {time.time() - started:.1f} s with {settings.describe()}, "
              f"{precision_used(args, model)}")
        labels, source = torch.tensor(label_list), args.checkpoint
    classifier = load_mnist_classifier()
    predicted = predict(images, classifier)
    correct = predicted == labels
    per_class = {int(c): float(correct[labels == c].float().mean()) for c in labels.unique()}
    accuracy = float(correct.float().mean())
    print(f"recognised as their class: {accuracy:.1%} of {len(labels)} samples from {source}")
    print("per class: " + ", ".join(f"{c}: {a:.0%}" for c, a in per_class.items()))
    emit_json(args, {"accuracy": accuracy, "samples": len(labels), "per_class": per_class})
    return 0
