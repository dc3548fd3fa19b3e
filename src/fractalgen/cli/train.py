"""`fractalgen train`: parse the flags, hand the ones given to `train.run_options`, train."""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..errors import UserError
from ..runtime import set_threads
from .options import add_json, add_runtime, emit_json, number

# Flags that map one-to-one onto TrainOptions fields (dest -> help); their defaults are TrainOptions'.
OPTION_FLAGS = {
    "data": "'mnist' (embedded), an image folder ROOT/train/<class>/*, or an .npz",
    "out": "run folder for checkpoints and samples (default: the --resume folder)",
    "steps": "total optimizer steps (a resumed run continues up to it)",
    "epochs": "total epochs, used when --steps is not given (default: 10, and at least fractalgen.train.MIN_STEPS "
              "steps)",
    "batch_size": "global batch size, split over processes (default: a power of two giving at least 8 batches an "
                  "epoch, from 8 to 64)",
    "lr": "learning rate (default: the rule measured by benchmarks/lr_rule.py, fractalgen.train.default_lr, "
          "from the batch size and the model's width)",
    "blr": "base learning rate per 256 images: lr = blr * global batch / 256 (the official scaling, made for "
           "ImageNet batches)",
    "weight_decay": "AdamW weight decay on matrices",
    "warmup_steps": "linear warm-up steps (default: from --warmup-epochs, else a share of the run, "
                    "fractalgen.train.WARMUP_SHARE)",
    "warmup_epochs": "linear warm-up epochs before the cosine decay",
    "grad_clip": "gradient norm clipping",
    "seed": "random seed (rank r uses seed + r)",
    "save_every": "write a checkpoint every N steps (and at the end)",
    "sample_every": "write a sample grid every N steps (0: never)",
    "num_workers": "data loading worker processes (default: none on a CPU, one per CPU up to a few on a GPU)",
    "log_every": "steps per line of OUT/metrics.jsonl (loss, lr, grad norm, speed, memory; fractalgen plot draws it)",
    "shift": "random translation of each training image by up to N pixels in each direction, filled with 0 "
             "(black: for digits and other images on a black background; 0 = off)",
    "mar_masks": "MAR levels' training masks: official (mask ratio ~ N(1, 0.25), mostly nearly all masked) or "
                 "uniform (masked count uniform over 1..N: every generation stage trained equally often)",
    "precision": "bf16: bf16 autocast (weights, optimizer, attention and pixel logits stay fp32), faster "
                 "on CPUs with bf16 instructions (avx512_bf16, AMX; benchmarks/RESULTS.md), "
                 "slower on CPUs without them; fp32; auto: bf16 on GPUs with native bf16 (compute capability "
                 "8.0+), fp32 elsewhere",
}
SWITCHES = {
    "grad_checkpointing": "recompute blocks in backward to save memory",
    "keep_checkpoints": "also keep checkpoint-STEP.pt copies",
    "tensorboard": "log scalars to OUT/tensorboard (if installed)",
    "fsdp": "under torchrun: shard weights, gradients and optimizer state over the processes (FSDP FULL_SHARD) "
            "for models that do not fit one device",
}


def preset_lines() -> list[str]:
    """One line per preset: its levels, image shape (size x size x channels) and classes."""
    from ..config import PRESETS

    return [f"{name}: {'/'.join(c.kinds)} levels, {c.img_size}x{c.img_size}x{c.channels}, "
            f"{c.num_classes or 'no'} classes" for name, c in PRESETS.items()]


def register(subparsers):
    from ..train import OPTION_BOUNDS, TrainOptions

    defaults = TrainOptions(out="")
    p = subparsers.add_parser("train", help="train a model (single process, or data-parallel under torchrun)",
                              description="Train a fractal model. Under torchrun "
                              "(torchrun --nproc_per_node=N -m fractalgen train ...) it trains data-parallel. "
                              "Flags not given take the resumed run's values, else the preset's own recipe (the small "
                              "presets: see fractalgen.train.PRESET_RECIPES), else the defaults shown.",
                              epilog="presets (--preset NAME):\n" + "\n".join(preset_lines()))
    model = p.add_mutually_exclusive_group()
    model.add_argument("--preset", help="config preset name (see fractalgen.PRESETS); its class count is replaced "
                       "by the data's (default: a small model for the data's size and colour, "
                       "fractalgen.config.config_for_data)")
    model.add_argument("--config", help="config JSON file (our field names or the official ones); without "
                       "num_classes/class_num it takes the data's classes")
    for dest, text in OPTION_FLAGS.items():
        default = getattr(defaults, dest)
        bound = OPTION_BOUNDS.get(dest)
        kind = flag_type(bound) if bound is not None and not bound.choices else str
        shown = f" (default: {default})" if default not in (None, "") and "default" not in text else ""
        p.add_argument("--" + dest.replace("_", "-"), type=kind, choices=(bound.choices or None) if bound else None,
                       help=text + shown)
    p.add_argument("--label-drop", type=number(minimum=0, below=1),
                   help="label dropout for guidance (default: the config's, 0.1)")
    p.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no random horizontal flips (e.g. for digits)")
    for dest, text in SWITCHES.items():
        p.add_argument("--" + dest.replace("_", "-"), action="store_true", default=None, help=text)
    p.add_argument("--resume", help="continue the run in this folder (its checkpoint.pt) with its stored options; "
                   "flags given now override them (e.g. --steps to train longer)")
    p.add_argument("--init", help="start from the weights of this checkpoint (a run folder, a model folder, a "
                   ".safetensors file) with a fresh optimizer and schedule: fine-tuning. Its config is used unless "
                   "--preset/--config is given; the class embedding starts afresh when the class counts differ")
    p.add_argument("--dry-run", action="store_true", help="print the data summary (images, classes with counts, "
                   "size and mode, split) and the plan (steps, batch, lr), then stop without training")
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_train)


def flag_type(bound):
    """The argparse type of an option's flag: it accepts exactly what TrainOptions accepts (train.OPTION_BOUNDS)."""
    def parse(text: str):
        try:
            value = int(text) if bound.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if bound.kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        problem = bound.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "integer" if bound.kind is int else "number"
    return parse


def run_train(args) -> int:
    from ..config import config_and_presets
    from ..formats.run import CHECKPOINT_NAME
    from ..train import run_options, train

    set_threads(args.threads)
    config, presets = (None, {}) if args.resume or not (args.preset or args.config) else \
        config_and_presets(args.preset or args.config)
    label_drop = {} if args.label_drop is None else {"label_drop_prob": args.label_drop}
    if config is not None:
        config = config.replace(**label_drop)
    elif label_drop and args.resume is None:
        raise UserError("--label-drop needs --preset or --config")
    given = {dest: getattr(args, dest) for dest in [*OPTION_FLAGS, *SWITCHES, "flip", "resume", "init"]}
    given["device"] = args.device if args.device != "auto" else None
    options = run_options(given, preset=args.preset)
    result = train(config, options, classes_from_data=not config_chooses_classes(args.config), dry_run=args.dry_run,
                   presets=presets)
    if result.pop("rank"):  # under torchrun, rank 0 reports for everyone
        return 128 + result["interrupted"] if result["interrupted"] else 0
    out = options.out
    if result.get("dry_run"):
        emit_json(args, {**result, "out": str(out)})
        return 0
    if result["already_done"]:
        print(f"already at step {result['step']} (of {result['total']}): nothing to train, "
              f"{Path(out) / CHECKPOINT_NAME} "
              f"left as it was; give a larger --steps to train longer")
        emit_json(args, {**result, "out": str(out)})
        return 0
    if result["interrupted"]:
        name = signal.Signals(result["interrupted"]).name
        print(f"fractalgen train: {name}: stopped at step {result['step']}, checkpoint written; continue with "
              f"--resume {out}", file=sys.stderr)
        return 128 + result["interrupted"]  # the shell's convention for "ended by this signal"
    print(f"trained to step {result['step']} (loss {result['loss']:.4f}, {result['seconds']:.0f} s); "
          f"checkpoint: {Path(out) / CHECKPOINT_NAME}, weights: {Path(out) / 'model.safetensors'}")
    emit_json(args, {**result, "out": str(out)})
    return 0


def config_chooses_classes(path: str | None) -> bool:
    """Whether a --config file names its class count (then the data must have as many classes)."""
    if path is None or not str(path).endswith(".json"):
        return False
    from ..jsonfile import read_object

    fields = read_object(path, str(path))
    return "num_classes" in fields or "class_num" in fields
