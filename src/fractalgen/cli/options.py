"""Flags shared by the commands, written once, and what they turn into (a device, a model, settings)."""
from __future__ import annotations

import argparse
import json

from ..errors import UserError
from ..generation import DEFAULT_BATCH_SIZE
from ..runtime import pick_device, set_threads
from ..settings import SamplingSettings, SettingsError, resolve_settings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every (sub)command's --help shows the defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


# ---- the flags ----------------------------------------------------------------------------------

def add_runtime(p, threads: str = "auto"):
    """--device and --threads (every command)."""
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", default=threads, help="CPU threads for torch: a number, or auto (torch's default)")


def add_checkpoint(p, default: str | None = "mnist"):
    """--checkpoint and --preset (the config of an official-format file)."""
    p.add_argument("--checkpoint", default=default,
                   help="a checkpoint file (ours or official), a training run folder, or a bundled model name")
    p.add_argument("--preset", help="the config of an official checkpoint (preset name or JSON file)")


def add_sampling(p, batch_size: int | None = DEFAULT_BATCH_SIZE):
    """The sampling settings (None: the checkpoint's recommendation, else the preset's), --seed, and
    --batch-size unless `batch_size` is None."""
    p.add_argument("--cfg", type=float, help="guidance scale (default: the checkpoint's recommendation, else the preset's)")
    p.add_argument("--cfg-schedule", choices=["linear", "constant"], help="guidance schedule (default: as --cfg)")
    p.add_argument("--temperature", type=float, help="logit temperature, multiplies the logits (default: as --cfg)")
    p.add_argument("--filter-threshold", type=float, help="guidance filter threshold (default: as --cfg, else 1e-4)")
    p.add_argument("--num-iter", help="steps per level, comma-separated, e.g. 64,16 (default: as --cfg)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    if batch_size is not None:
        p.add_argument("--batch-size", type=int, default=batch_size, help="images sampled at once (a batch shares "
                       "one random stream: another batch size draws other images)")


def add_json(p):
    p.add_argument("--json", action="store_true", help="print one JSON object with the numbers as the last line")


# ---- what the flags turn into ---------------------------------------------------------------------

def apply_runtime(args):
    """Set torch's threads (the command line's business, never the library's); return the device."""
    set_threads(args.threads)
    return pick_device(args.device)


def load_model(args):
    """The model of --checkpoint/--preset on the chosen device (threads set first)."""
    from ..checkpoint import load

    device = apply_runtime(args)
    return load(args.checkpoint, config=getattr(args, "preset", None), device=device)


def settings_from(args, model) -> SamplingSettings:
    """The flags given, else the checkpoint's recommendation, else the preset's (settings.resolve_settings)."""
    num_iter = getattr(args, "num_iter", None)
    if num_iter is not None:
        num_iter = parse_ints(num_iter, "--num-iter")
    try:
        return resolve_settings(model, cfg=getattr(args, "cfg", None), cfg_schedule=getattr(args, "cfg_schedule", None),
                                temperature=getattr(args, "temperature", None),
                                filter_threshold=getattr(args, "filter_threshold", None), num_iter=num_iter)
    except SettingsError as e:
        raise UserError(str(e)) from None


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers, got {text!r}") from None


def emit_json(args, payload: dict):
    """The numbers as one JSON line (with --json): floats rounded to what was measured, no float32 noise."""
    if getattr(args, "json", False):
        print(json.dumps(clean_numbers(payload)))


def clean_numbers(value, digits: int = 6):
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: clean_numbers(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_numbers(v, digits) for v in value]
    return value
