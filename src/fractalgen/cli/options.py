"""Flags shared by the commands, written once, and what they turn into (a device, a model, settings)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..nn import PRECISIONS, precision_in_effect
from ..runtime import pick_device, rank, set_threads
from ..samples import DEFAULT_BATCH_SIZE
from ..settings import (
    DEFAULT_FILTER_THRESHOLD,
    SCHEDULE_NAMES,
    SEED_MAX,
    SETTING_NAMES,
    SamplingSettings,
    SettingsError,
    check_setting,
    resolve_settings,
    shown,
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except where there is none or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        """Descriptions and epilogs wrap as usual, each line on its own (a list stays one item a line)."""
        return "\n".join(super(HelpFormatter, self)._fill_text(line, width, indent) for line in text.split("\n"))


class Parser(argparse.ArgumentParser):
    """Every (sub)command's --help shows the defaults; a bad flag is one line, like every other user error."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- flag values: checked by argparse as they are parsed --------------------------------------
# Each function is an argparse `type=`: a bad value ends in one line naming the flag and the value,
# before any work starts. Never a silent substitution: 0 epochs is an error, not the default.

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")


def integer(minimum: int | None = None, maximum: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (f"between {minimum} and {maximum}" if maximum is not None and minimum is not None
                      else f">= {minimum}" if minimum is not None else f"<= {maximum}")
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(minimum: float | None = None, above: float | None = None, below: float | None = None,
           maximum: float | None = None):
    """A finite float; `minimum` and `maximum` inclusive, `above` and `below` exclusive."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {value:g}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {value:g}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be < {below:g}, got {value:g}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def seed(text: str) -> int:
    """A random seed: 0 .. settings.SEED_MAX."""
    return integer(0, SEED_MAX)(text)


def integer_list(text: str) -> list[int]:
    """Comma-separated positive integers (e.g. --num-iter 64,16)."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, e.g. 64,16; got {text!r}")
    return [int(p) for p in parts]


def class_list(text: str) -> list[str]:
    """Comma-separated classes (e.g. --classes 0,1,2 or circle,square): numbers or the model's class
    names, looked up once the model is loaded (model.class_indices)."""
    parts = [p.strip() for p in text.split(",")]

    def number_like(part):  # a number that is no class index (1.5, -1, 1e3) is a mistake, not a name
        try:
            float(part)
        except ValueError:
            return part[:1] in "+-." and part[1:2].isdigit()
        return not part.isdigit()

    if not all(parts) or any(number_like(p) for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated class numbers (integers >= 0) or class names, "
                                         f"got {text!r}")
    return parts


def setting(name: str):
    """The argparse type of the sampling setting `name` (a flag's text -> its value), checked by the
    validator every other door uses (settings.check_setting)."""
    def parse(text: str):
        value: float | list[int]
        if name == "num_iter":
            value = integer_list(text)
        else:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        try:
            return check_setting(name, value)
        except SettingsError as e:
            raise argparse.ArgumentTypeError(f"must be {e.wanted}, got {text.strip()}") from None

    parse.__name__ = name
    return parse


def threads_flag(text: str):
    """'auto' (runtime.auto_threads) or a count of CPU threads."""
    if text.strip() == "auto":
        return "auto"
    return integer(1, 4096)(text)


def device(text: str) -> str:
    """auto, cpu, cuda, cuda:N or mps; 'meta' (shapes without data) and the rest cannot run a model."""
    name = text.strip()
    base, _, index = name.partition(":")
    if base in DEVICE_NAMES and (not index or (base in ("cuda", "mps") and index.isdigit())):
        return name
    raise argparse.ArgumentTypeError(f"unknown device {text!r} (choose auto, cpu, cuda, cuda:N or mps)")


# ---- the flags ----------------------------------------------------------------------------------

class OldName(argparse.Action):
    """A flag's old name: still works for one release, hidden from --help, with a note on stderr."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is deprecated and goes in the next release; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_old_name(p, old: str, new: str, dest: str, **kwargs):
    """`old` as a hidden alias of the flag `new` (stored in `dest`); a switch passes nargs=0, const=True."""
    p.add_argument(old, dest=dest, action=OldName, new=new, default=argparse.SUPPRESS, **kwargs)


def add_runtime(p, threads: str = "auto"):
    """--device and --threads (every command)."""
    p.add_argument("--device", type=device, default="auto",
                   help="torch device: auto (cuda if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=threads_flag, default=threads,
                   help="CPU threads for torch: a number, or auto (the CPUs the load average leaves idle, at least 1)")


def add_checkpoint(p, default: str | None = "mnist"):
    """--checkpoint and --preset (the config of an official-format file)."""
    p.add_argument("--checkpoint", default=default,
                   help="a checkpoint file (ours or official), a training run folder, a model folder, "
                   "a Hugging Face hub id (owner/name), or a bundled model name")
    p.add_argument("--preset", help="the config of an official checkpoint (preset name or JSON file)")


def add_sampling(p, batch_size: int | None = DEFAULT_BATCH_SIZE):
    """The sampling settings (None: the checkpoint's recommendation, else the preset's), --seed,
    --precision, and --batch-size unless `batch_size` is None."""
    p.add_argument("--cfg", type=setting("cfg"),
                   help="guidance scale (default: the checkpoint's recommendation, else the preset's)")
    p.add_argument("--cfg-schedule", choices=SCHEDULE_NAMES,
                   help="guidance schedule: linear ramps 1 -> cfg, falling cfg -> 1, or constant (default: as --cfg)")
    p.add_argument("--temperature", type=setting("temperature"),
                   help="logit temperature, multiplies the logits (default: as --cfg)")
    p.add_argument("--filter-threshold", type=setting("filter_threshold"),
                   help=f"guidance filter threshold (default: as --cfg, else {DEFAULT_FILTER_THRESHOLD:g})")
    p.add_argument("--num-iter", type=setting("num_iter"),
                   help="steps per level, comma-separated, e.g. 64,16 (default: as --cfg)")
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="bf16: bf16 autocast (attention and pixel logits stay fp32), other images than fp32; "
                   "faster on GPUs and for MAR models on CPUs with bf16 instructions (benchmarks/RESULTS.md); "
                   "auto: bf16 on GPUs with native bf16 (compute capability 8.0+), fp32 elsewhere")
    if batch_size is not None:
        p.add_argument("--batch-size", type=integer(1), default=batch_size, help="images sampled at once (a batch "
                       "shares one random stream: another batch size draws other images)")


def precision_used(args, model) -> str:
    """What --precision runs on the model's device: "fp32" or "bf16" (as the evaluate folder records it)."""
    return precision_in_effect(args.precision, model.device)


def add_json(p):
    p.add_argument("--json", action="store_true", help="print one JSON object with the numbers as the last line")


# ---- what the flags turn into ---------------------------------------------------------------------

def apply_runtime(args):
    """Set torch's threads (the command line's business, never the library's); return the device."""
    set_threads(args.threads)
    return pick_device(args.device)


def load_model(args):
    """The model of --checkpoint/--preset on the chosen device (threads set first)."""
    from ..formats import load

    device = apply_runtime(args)
    return load(args.checkpoint, config=getattr(args, "preset", None), device=device)


def settings_from(args, model) -> SamplingSettings:
    """The flags given, else the checkpoint's recommendation, else the preset's (settings.resolve_settings)."""
    try:
        return resolve_settings(model, **{name: getattr(args, name, None) for name in SETTING_NAMES})
    except SettingsError as e:  # a flag that does not fit this model (--num-iter), worded as argparse would
        flag = "--" + e.setting.replace("_", "-")
        raise UserError(f"argument {flag}: must be {e.wanted}, got {shown(e.got)}") from None


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers, got {text!r}") from None


def progress_bar(total: float | None, desc: str, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr (rank 0 only; drawn after half a second, so quick commands stay quiet).

    `bar.update(k)` advances it; `advance_to(bar)` gives a callback that moves it to a (fractional) count.
    """
    fractional = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}]"
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, delay=0.5, disable=rank() != 0,
                bar_format=fractional if total is not None else None)


def advance_to(bar: tqdm):
    return lambda done: bar.update(done - bar.n)


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


def picture_files(sources: list[str]) -> list[Path]:
    """Picture files named on the command line, folders expanded to their pictures (sorted by name);
    a missing source or a folder without pictures is one error line."""
    from ..images import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not found:
                raise UserError(f"no image files in {source}")
            paths += found
        elif source.is_file():
            paths.append(source)
        else:
            raise UserError(f"not found: {source}")
    return paths
