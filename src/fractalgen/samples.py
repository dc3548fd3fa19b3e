"""Samples: `fractalgen.sample`, images drawn from a model (the sampler's pieces are in sampling.py).

What decides the images: the model, the labels, the settings (`settings.resolve_settings`:
argument > the model's recommendation > the defaults), the seed and the batch
size. Images are drawn `batch_size` at a time and batch i is drawn with its own generator
seeded `seed + i`, so the same seed, settings and batch size give the same images from the
library and from `fractalgen sample` (both default to DEFAULT_BATCH_SIZE); another batch size
draws other images (a batch shares one random stream).
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .memory import gib, host_room
from .model import FractalModel, as_labels, eval_mode
from .nn import precision_context
from .runtime import uses_threads
from .settings import SETTING_NAMES, SamplingSettings, check_seed, legacy_overrides, resolve_settings

DEFAULT_BATCH_SIZE = 100


def make_generator(model: FractalModel, seed: int | None) -> torch.Generator | None:
    """A generator on the model's device seeded with `seed` (None: torch's global random stream)."""
    if seed is None:
        return None
    generator = torch.Generator(device=model.device)
    generator.manual_seed(int(seed))
    return generator


def to_uint8(values: torch.Tensor) -> torch.Tensor:
    return values.round().clamp(0, 255).to(torch.uint8)


def check_count(value, name: str, minimum: int, image_bytes: int, error: type[Exception] = ValueError) -> int:
    """A number of images asked for: an integer >= `minimum` whose images (`image_bytes` each, the
    output alone) fit in the memory there is (memory.py), else `error` naming the argument as `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r:.60}")
    value = int(value)
    room = host_room()
    if room is not None and value * image_bytes > room.bytes:
        raise error(f"{name} = {value} asks for {gib(value * image_bytes)} of images, more than the "
                    f"{gib(room.bytes)} {room.source}")
    return value


def count_and_labels(labels, n, class_names: tuple[str, ...] | None = None,
                     image_bytes: int = 0) -> tuple[int, list | None]:
    """(number of images, labels as a list of indices or None for unconditional); names are looked up
    in `class_names`."""
    if labels is not None:
        labels = as_labels(labels, "cpu", class_names).tolist()  # floats, booleans and text refused, not truncated
        return check_count(len(labels), "the number of labels", 0, image_bytes), labels
    if n is None:
        raise ValueError("give labels or n")
    return check_count(n, "n (how many images)", 0, image_bytes), None


@uses_threads
@eval_mode
def sample(model: FractalModel, labels: Sequence[int | str] | torch.Tensor | None = None,
           n: int | None = None, *legacy: Any, settings: SamplingSettings | None = None, cfg: float | None = None,
           cfg_schedule: str | None = None, temperature: float | None = None,
           filter_threshold: float | None = None,
           num_iter: Sequence[int] | int | None = None, seed: int | None = None,
           batch_size: int | None = DEFAULT_BATCH_SIZE, on_step: Callable | None = None,
           progress: Callable[[float], None] | None = None, precision: str = "auto",
           compile: bool = False) -> torch.Tensor:
    """Sample images, uint8 (N, C, H, W). `labels=None` samples n images unconditionally; labels are
    class indices or the model's class names (`model.class_names`, e.g. labels=["circle", "square"]).

    `settings` (a SamplingSettings) says how to sample; None takes the model's recommendation
    (`model.recommended`), else the defaults. The keywords cfg, cfg_schedule,
    temperature, filter_threshold and num_iter override single settings (`settings.resolve_settings`);
    `num_iter` has one entry per level (AR levels always take one step per patch). Temperature
    multiplies the logits (the authors' convention). Batch i of `batch_size` images (None: one
    batch) is seeded `seed + i`. `on_step` follows level 0 of the first batch (see
    visualize.GenerationRecorder); `progress(images_done)` is called after every level-0 step with
    the (fractional) number of images generated so far. `precision`: fp32, bf16 (autocast; faster on
    GPUs and on CPUs with bf16 instructions, other images than fp32) or auto (bf16 on GPUs with native
    bf16, fp32 elsewhere; see nn/precision.py). `compile=True` runs the decode steps (the pixel
    heads' channels, the AR levels' positions) and the MAR levels' transformer passes through
    torch.compile (`sampling.compiled`: a C++ compiler on CPUs; the first batch of each shape compiles
    first, for seconds to minutes, so it pays for long runs). `threads` (keyword): CPU threads for
    this call, 'auto', a number or None (runtime.call_threads). Settings and the rest by position are deprecated.
    """
    given = legacy_overrides(legacy, "sample", LEGACY_ORDER, 5, cfg=cfg, cfg_schedule=cfg_schedule,
                             temperature=temperature, filter_threshold=filter_threshold, num_iter=num_iter,
                             seed=seed)
    seed = check_seed(given.pop("seed"))
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    settings = resolve_settings(model, settings=settings, **given)
    c, s = model.config.channels, model.config.img_size
    total, labels = count_and_labels(labels, n, model.class_names, image_bytes=c * s * s)
    autocast = precision_context(precision, model.device)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                   or batch_size < 1):
        raise ValueError(f"batch_size must be an integer >= 1 (or None: one batch), got {batch_size!r}")
    batch_size = batch_size or max(total, 1)
    out = []
    for i, start in enumerate(range(0, total, batch_size)):
        count = min(batch_size, total - start)
        chunk = labels[start:start + count] if labels is not None else None
        with autocast:
            values, _ = model.generate(labels=chunk, n=count, settings=settings,
                                       generator=make_generator(model, None if seed is None else seed + i),
                                       compile=compile,
                                       on_step=step_callback(on_step if i == 0 else None, progress, start, count))
        out.append(to_uint8(values))
    if not out:
        return torch.zeros(0, c, s, s, dtype=torch.uint8)
    return torch.cat(out)


# The positional parameters of sample() after n, as they were before the settings became keyword-only.
LEGACY_ORDER = (*SETTING_NAMES, "seed")


def step_callback(on_step, progress, done: int, count: int):
    """One level-0 callback from an optional on_step and an optional progress(images_done)."""
    if progress is None:
        return on_step

    def callback(canvas: torch.Tensor, filled: torch.Tensor):
        if on_step is not None:
            on_step(canvas, filled)
        progress(done + count * float(filled.float().mean()))  # filled (B, C, H, W): the generated share
    return callback
