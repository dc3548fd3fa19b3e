"""`fractalgen train | sample | nll | demo | eval-samples`: thin wrappers over the library.

Each handler parses flags, calls library functions and prints what it wrote. Commands that
report numbers take `--json` and then print one JSON object as the last line of stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

from .cli import HelpFormatter as FORMATTER
from .errors import UserError


def register(subparsers):
    add_train(subparsers)
    add_sample(subparsers)
    add_nll(subparsers)
    add_demo(subparsers)
    add_eval_samples(subparsers)


# ---- shared helpers ---------------------------------------------------------------------------

def add_common(p, json_flag=True, threads=0):
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=threads, help="CPU threads for torch (0: torch's default)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object with the numbers as the last line")


def add_checkpoint(p):
    p.add_argument("--checkpoint", default="mnist",
                   help="a checkpoint file (ours or official), a training run folder, or a bundled model name")
    p.add_argument("--preset", help="the config of an official checkpoint (preset name or JSON file)")


def add_sampling(p):
    p.add_argument("--cfg", type=float, help="guidance scale (default: the checkpoint's recommendation, else the preset's)")
    p.add_argument("--cfg-schedule", choices=["linear", "constant"], help="guidance schedule (default: as --cfg)")
    p.add_argument("--temperature", type=float, help="logit temperature, multiplies the logits (default: as --cfg)")
    p.add_argument("--filter-threshold", type=float, help="guidance filter threshold (default: 1e-4)")
    p.add_argument("--num-iter", help="MAR steps per level, e.g. 64,16 (default: as --cfg)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=int, default=100, help="images sampled at once")


def setup_torch(args):
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def device_of(args):
    from .train import pick_device

    return pick_device(args.device)


def load_model(args):
    import fractalgen

    model = fractalgen.load(args.checkpoint, config=getattr(args, "preset", None), device=device_of(args))
    return model


def sampling_settings(model, args) -> dict:
    """Flag, else the checkpoint's recommended setting, else the config's."""
    c, rec = model.config, getattr(model, "sampling_defaults", {}) or {}

    def pick(name, fallback):
        value = getattr(args, name, None)
        return value if value is not None else rec.get(name, fallback)

    num_iter = args.num_iter if getattr(args, "num_iter", None) is not None else rec.get("num_iter")
    if isinstance(num_iter, str):
        num_iter = parse_ints(num_iter, "--num-iter")
    num_iter = tuple(num_iter) if num_iter is not None else c.default_num_iter
    if len(num_iter) != c.num_levels or min(num_iter) < 1:
        raise UserError(f"--num-iter needs {c.num_levels} positive numbers (one per level), got {list(num_iter)}")
    settings = {"cfg": float(pick("cfg", c.cfg)), "temperature": float(pick("temperature", c.temperature)),
                "cfg_schedule": pick("cfg_schedule", c.cfg_schedule),
                "filter_threshold": float(pick("filter_threshold", 1e-4)), "num_iter": num_iter}
    if settings["temperature"] <= 0:
        raise UserError(f"--temperature must be positive, got {settings['temperature']}")
    return settings


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers, got {text!r}") from None


def labels_for(model, classes: str | None, per_class: int | None, n: int | None):
    """(labels or None for unconditional, number of images). --n alone samples unconditionally."""
    k = model.config.num_classes
    if per_class is not None and per_class < 1:
        raise UserError(f"--per-class must be >= 1, got {per_class}")
    if n is not None and n < 1:
        raise UserError(f"--n must be >= 1, got {n}")
    if k == 0 and (classes is not None or per_class is not None):
        raise UserError("this model is unconditional: use --n, not --classes/--per-class")
    if k == 0 or (classes is None and per_class is None and n is not None):
        return None, n or 16
    chosen = parse_ints(classes, "--classes") if classes is not None else list(range(k))
    if not chosen:
        raise UserError("--classes is empty")
    for c in chosen:
        if not 0 <= c < k:
            raise UserError(f"class {c} is out of range: the model has {k} classes (0..{k - 1})")
    labels = [c for c in chosen for _ in range(per_class or 1)]
    if n is not None:
        labels = [labels[i % len(labels)] for i in range(n)]
    return labels, len(labels)


def generate(model, labels, n, settings, seed, batch_size, on_step=None):
    """Sample in batches of `batch_size`; the first batch reports to `on_step`. uint8 (N, C, H, W)."""
    import torch

    from .visualize import generate_images

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        count = min(batch_size, n - start)
        chunk = labels[start:start + count] if labels is not None else None
        out.append(generate_images(model, labels=chunk, n=None if chunk else count, seed=seed + i,
                                   on_step=on_step if i == 0 else None, **settings).cpu())
    return torch.cat(out)


def refuse_existing(paths):
    for p in paths:
        if Path(p).exists():
            raise UserError(f"{p} already exists (choose another output; files are never overwritten)")


def emit_json(args, payload: dict):
    if getattr(args, "json", False):
        print(json.dumps(payload))


# ---- train -------------------------------------------------------------------------------------

def add_train(sub):
    p = sub.add_parser("train", help="train a model (single process, or data-parallel under torchrun)",
                       formatter_class=FORMATTER, description="Train a fractal model. Under torchrun "
                       "(torchrun --nproc_per_node=N -m fractalgen train ...) it trains data-parallel.")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", help="config preset name (see fractalgen.PRESETS)")
    model.add_argument("--config", help="config JSON file (our field names or the official ones)")
    p.add_argument("--data", default="mnist", help="'mnist' (embedded), an image folder ROOT/train/<class>/*, or an .npz")
    p.add_argument("--out", help="run folder for checkpoints and samples (default: the --resume folder)")
    p.add_argument("--steps", type=int, help="total optimizer steps (a resumed run continues up to it)")
    p.add_argument("--epochs", type=float, default=10.0, help="total epochs, used when --steps is not given")
    p.add_argument("--batch-size", type=int, default=64, help="global batch size (split over processes)")
    p.add_argument("--lr", type=float, help="learning rate (default: blr * global batch / 256)")
    p.add_argument("--blr", type=float, default=5e-5, help="base learning rate per 256 images (official scaling)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay on matrices")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: from --warmup-epochs)")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warm-up epochs before the cosine decay")
    p.add_argument("--grad-clip", type=float, default=3.0, help="gradient norm clipping")
    p.add_argument("--label-drop", type=float, help="label dropout for guidance (default: the config's, 0.1)")
    p.add_argument("--no-flip", action="store_true", help="no random horizontal flips (e.g. for digits)")
    p.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r)")
    p.add_argument("--resume", help="continue the run in this folder (its checkpoint.pt) with its stored options; "
                   "flags given now override them (e.g. --steps to train longer)")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward to save memory")
    p.add_argument("--save-every", type=int, default=500, help="write a checkpoint every N steps (and at the end)")
    p.add_argument("--sample-every", type=int, default=1000, help="write a sample grid every N steps (0: never)")
    p.add_argument("--keep-checkpoints", action="store_true", help="also keep checkpoint-STEP.pt copies")
    p.add_argument("--tensorboard", action="store_true", help="log scalars to OUT/tensorboard (if installed)")
    p.add_argument("--num-workers", type=int, default=0, help="data loading worker processes")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and optimizer "
                   "state over the processes (FSDP FULL_SHARD) for models that do not fit one device")
    add_common(p)
    p.set_defaults(func=run_train)
    TRAIN_DEFAULTS.update({a.dest: a.default for a in p._actions})


TRAIN_DEFAULTS: dict = {}  # what each train flag is when not given (a resumed run keeps its own values)


def run_train(args) -> int:
    from .config import get_config
    from .train import CHECKPOINT_NAME, TrainOptions, read_checkpoint, train

    setup_torch(args)
    if args.resume is None and args.preset is None and args.config is None:
        raise UserError("give --preset or --config (or --resume a run)")
    out = args.out or args.resume
    if out is None:
        raise UserError("give --out (the run folder)")
    if args.resume is None and (Path(out) / CHECKPOINT_NAME).exists():
        raise UserError(f"{out} already holds a training run: --resume {out}, or choose another --out")
    config = None if args.resume else get_config(args.preset or args.config)
    if config is not None and args.label_drop is not None:
        config = config.replace(label_drop_prob=args.label_drop)
    for flag in ("steps", "batch_size", "save_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    chosen = {
        "out": out, "data": args.data, "steps": args.steps, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "blr": args.blr, "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps,
        "warmup_epochs": args.warmup_epochs, "grad_clip": args.grad_clip, "flip": not args.no_flip, "seed": args.seed,
        "grad_checkpointing": args.grad_checkpointing, "save_every": args.save_every,
        "sample_every": args.sample_every, "keep_checkpoints": args.keep_checkpoints, "tensorboard": args.tensorboard,
        "num_workers": args.num_workers, "device": args.device, "resume": args.resume, "fsdp": args.fsdp,
    }
    if args.resume:  # the run's stored options, overridden only by the flags given now
        stored = json.loads(read_checkpoint(args.resume).get("options", "{}"))
        given = {"flip" if dest == "no_flip" else dest for dest, default in TRAIN_DEFAULTS.items()
                 if getattr(args, dest, default) != default}
        chosen = {k: stored[k] if k in stored and k not in given and k not in ("out", "resume") else v
                  for k, v in chosen.items()}
    options = TrainOptions(**chosen)
    result = train(config, options)
    if result.pop("rank"):  # under torchrun, rank 0 reports for everyone
        return 128 + result["interrupted"] if result["interrupted"] else 0
    if result["interrupted"]:
        name = signal.Signals(result["interrupted"]).name
        print(f"fractalgen train: {name}: stopped at step {result['step']}, checkpoint written; continue with "
              f"--resume {out}", file=sys.stderr)
        return 128 + result["interrupted"]  # the shell's convention for "ended by this signal"
    print(f"trained to step {result['step']} (loss {result['loss']:.4f}, {result['seconds']:.0f} s); "
          f"checkpoint: {Path(out) / CHECKPOINT_NAME}, weights: {Path(out) / 'model.safetensors'}")
    emit_json(args, {**result, "out": str(out)})
    return 0


# ---- sample ------------------------------------------------------------------------------------

def add_sample(sub):
    p = sub.add_parser("sample", help="sample images (grid, one PNG per image, optional GIF)", formatter_class=FORMATTER)
    add_checkpoint(p)
    p.add_argument("--classes", help="comma-separated class labels, e.g. 0,1,2 (default: every class)")
    p.add_argument("--per-class", type=int, help="images per class (default: 1)")
    p.add_argument("--n", type=int, help="number of images (alone: unconditional samples)")
    add_sampling(p)
    p.add_argument("--out", default="samples", help="output folder: grid.png and {index:05d}_class{label}.png")
    p.add_argument("--gif", help="also write the generation process of the first batch as an animated GIF")
    add_common(p)
    p.set_defaults(func=run_sample)


def run_sample(args) -> int:
    from .visualize import GenerationRecorder, save_each, save_grid

    setup_torch(args)
    model = load_model(args)
    labels, n = labels_for(model, args.classes, args.per_class, args.n)
    settings = sampling_settings(model, args)
    out = Path(args.out)
    names = [f"{i:05d}_uncond.png" if labels is None else f"{i:05d}_class{labels[i]}.png" for i in range(n)]
    refuse_existing([out / "grid.png"] + [out / name for name in names] + ([args.gif] if args.gif else []))
    nrow = args.per_class if labels is not None and args.per_class else min(n, 10)
    recorder = GenerationRecorder(nrow=min(nrow, args.batch_size)) if args.gif else None
    started = time.time()
    images = generate(model, labels, n, settings, args.seed, args.batch_size, on_step=recorder)
    seconds = time.time() - started
    save_grid(images, out / "grid.png", nrow=nrow)
    save_each(images, labels, out)
    print(f"sampled {n} images in {seconds:.1f} s ({seconds / n:.3f} s/image)")
    print(f"grid: {out / 'grid.png'}")
    print(f"images: {out}/{names[0]} ... {names[-1]}")
    if recorder is not None:
        recorder.save(args.gif)
        print(f"gif: {args.gif}")
    emit_json(args, {"images": n, "seconds": round(seconds, 3), "out": str(out), **jsonable(settings)})
    return 0


def jsonable(settings: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}


# ---- nll ---------------------------------------------------------------------------------------

def add_nll(sub):
    p = sub.add_parser("nll", help="held-out likelihood in bits/dim (with its standard error)",
                       formatter_class=FORMATTER)
    add_checkpoint(p)
    p.add_argument("--data", default="mnist", help="'mnist', an image folder, or an .npz file")
    p.add_argument("--split", default="val", choices=["train", "val"], help="which split of --data")
    p.add_argument("--passes", type=int, help="random-mask passes averaged for MAR levels (default: 1 for AR, 4 for MAR)")
    p.add_argument("--limit", type=int, help="use only the first N images")
    p.add_argument("--batch-size", type=int, default=100, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed for the MAR masks")
    add_common(p)
    p.set_defaults(func=run_nll)


def measure_nll(model, data: str, split: str, passes: int | None, limit: int | None, batch_size: int, seed: int) -> dict:
    from .data import load_dataset, stack
    from .likelihood import nll_per_image

    c = model.config
    passes = passes if passes is not None else (1 if set(c.kinds) == {"ar"} else 4)
    if passes < 1 or batch_size < 1 or (limit is not None and limit < 1):
        raise UserError("--passes, --batch-size and --limit must be >= 1")
    images, _ = stack(load_dataset(data, split, c.img_size, c.channels), limit)
    per_image = nll_per_image(model, images.to(model.device), passes=passes, batch_size=batch_size,
                              generator_seed=seed)
    n = per_image.numel()
    stderr = float(per_image.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"bits_per_dim": float(per_image.mean()), "stderr": stderr, "images": n, "passes": passes}


def run_nll(args) -> int:
    setup_torch(args)
    model = load_model(args)
    result = measure_nll(model, args.data, args.split, args.passes, args.limit, args.batch_size, args.seed)
    print(f"bits/dim: {result['bits_per_dim']:.4f} +- {result['stderr']:.4f} (standard error; "
          f"{result['images']} images from {args.data}/{args.split}, {result['passes']} pass(es))")
    emit_json(args, result)
    return 0


# ---- demo --------------------------------------------------------------------------------------

def add_demo(sub):
    p = sub.add_parser("demo", help="the offline demo on the bundled MNIST model: grid, GIF, bits/dim, inpainting",
                       formatter_class=FORMATTER)
    p.add_argument("--checkpoint", default="mnist", help="model to demonstrate (a 10-class model)")
    p.add_argument("--out", default="demo", help="output folder (its demo files are replaced on each run)")
    p.add_argument("--per-class", type=int, default=10, help="samples per digit (one row per digit)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    # One thread: the demo model's matrices are small, and on a busy machine more threads mostly wait
    # for each other (measured on a loaded 2-core machine: 38 s with one thread; with two, unfinished after 10 min).
    add_common(p, threads=1)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from .data import load_dataset, stack
    from .visualize import GenerationRecorder, save_grid

    started = time.time()
    setup_torch(args)
    model = load_model(args)
    if model.config.num_classes < 1:
        raise UserError("the demo needs a class-conditional model")
    out = Path(args.out)
    if args.per_class < 1:
        raise UserError(f"--per-class must be >= 1, got {args.per_class}")
    labels = [c for c in range(model.config.num_classes) for _ in range(args.per_class)]
    settings = sampling_settings(model, argparse.Namespace())
    print(f"model: {args.checkpoint} ({model.config.name}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
          f"parameters); sampling {len(labels)} digits with cfg {settings['cfg']}, temperature "
          f"{settings['temperature']} ...", flush=True)
    # The GIF follows one digit per class (a small file); the grid shows them all.
    recorder = GenerationRecorder(nrow=5, scale=4, select=list(range(0, len(labels), args.per_class)))
    images = generate(model, labels, len(labels), settings, args.seed, len(labels), on_step=recorder)
    paths = {"grid": out / "samples_grid.png", "gif": out / "generation.gif",
             "bits_per_dim_file": out / "bits_per_dim.txt"}
    save_grid(images, paths["grid"], nrow=args.per_class, scale=2)
    recorder.save(paths["gif"])
    print(f"class-conditional grid (one row per digit): {paths['grid']}")
    print(f"generation GIF: {paths['gif']}", flush=True)

    nll = measure_nll(model, "mnist", "val", None, None, 100, args.seed)
    paths["bits_per_dim_file"].write_text(
        f"{nll['bits_per_dim']:.4f} +- {nll['stderr']:.4f} bits/dim on the {nll['images']} held-out MNIST digits "
        f"({nll['passes']} pass(es))\n")
    print(f"held-out bits/dim: {nll['bits_per_dim']:.4f} +- {nll['stderr']:.4f} ({nll['images']} digits): "
          f"{paths['bits_per_dim_file']}")

    failed = False
    demo_examples = conditional_hook()
    if demo_examples is not None:
        val = load_dataset("mnist", "val", model.config.img_size, model.config.channels)
        try:
            for path in demo_examples(model, out, data=stack(val, 8), seed=args.seed):
                print(f"inpainting example: {path}")
        except Exception as e:  # the optional part must not hide the files already written
            print(f"fractalgen demo: inpainting example failed: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
    seconds = time.time() - started
    print(f"demo finished in {seconds:.0f} s; files in {out}/")
    emit_json(args, {"bits_per_dim": nll["bits_per_dim"], "stderr": nll["stderr"], "images": nll["images"],
                     "seconds": round(seconds, 1), **{k: str(v) for k, v in paths.items()}})
    return 1 if failed else 0


def conditional_hook():
    """fractalgen.conditional.demo_examples, when that module exists."""
    try:
        from . import conditional
    except ImportError:
        return None
    return getattr(conditional, "demo_examples", None)


# ---- eval-samples --------------------------------------------------------------------------

def add_eval_samples(sub):
    p = sub.add_parser("eval-samples", formatter_class=FORMATTER,
                       help="fraction of class-conditional MNIST samples the bundled classifier recognises")
    p.add_argument("--checkpoint", default="mnist", help="a 10-class 28x28 grayscale model")
    p.add_argument("--samples", help="evaluate PNGs written by `fractalgen sample --out` instead of sampling")
    p.add_argument("--per-class", type=int, default=50, help="samples per digit")
    add_sampling(p)
    add_common(p)
    p.set_defaults(func=run_eval_samples)


def run_eval_samples(args) -> int:
    import torch

    from .classifier import load_mnist_classifier, predict, read_labelled_pngs

    setup_torch(args)
    if args.samples:
        images, labels = read_labelled_pngs(args.samples)
        source = args.samples
    else:
        model = load_model(args)
        if model.config.num_classes != 10 or model.config.img_size != 28 or model.config.channels != 1:
            raise UserError("eval-samples needs a 10-class 28x28 grayscale (MNIST) model")
        label_list, n = labels_for(model, None, args.per_class, None)
        settings = sampling_settings(model, args)
        started = time.time()
        images = generate(model, label_list, n, settings, args.seed, args.batch_size)
        print(f"sampled {n} digits in {time.time() - started:.1f} s with {jsonable(settings)}")
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
