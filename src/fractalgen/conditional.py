"""Conditional pixel prediction (paper figure 4): inpainting, outpainting, uncropping, editing.

The known content is given first and the unknown part is generated conditioned on it, all the
way down the recursion (the levels do the work, see `model.generate(known=...)`):
- a MAR level starts with its fully known patches revealed and never generates them; patches
  with unknown pixels are generated in random order, and the next level receives their known
  pixels and does the same inside the patch;
- an AR level feeds known patches when the raster order reaches them; a partially known patch
  goes down with its known pixels;
- the pixel head copies known channel values instead of drawing them.
Every known pixel comes back bit-identical, and a fully unknown mask is the ordinary sampler.

What the completion is conditioned on:
- MAR levels see known content anywhere (bidirectional): the unknown part is drawn from the
  model's conditional given all known patches. Known pixels of a *partially* known patch are
  seen only inside that patch (at its own level the patch is a mask token, as in training),
  and a guiding-pixel head draws the patch's mean colour before the patch's known pixels
  are consulted.
- An AR level cannot look ahead of its raster order: an unknown patch is drawn given the class
  and the (known or generated) patches *before* it; known content later in raster order is
  fed when reached but does not influence what came before it. So with an AR model, filling
  the lower part of an image is exact conditioning, while a hole above known content ignores
  the content below it (the seam may not match). The same holds for pixels inside a patch
  at an AR level, and for channels inside a pixel (R, G, B order) in the pixel head.

Images are uint8 (N, C, H, W); `known` is bool, True where the pixel is given.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import UserError
from .model import FractalModel, as_labels, check_labels, eval_mode
from .nn import precision_context
from .runtime import uses_threads
from .samples import check_count, make_generator, step_callback, to_uint8
from .sampling import Known
from .settings import SamplingSettings, check_seed, legacy_overrides, resolve_settings


class ConditionalInputError(UserError, ValueError):
    """Bad input to inpainting: wrong shapes, out-of-range labels or boxes."""


# ---- the core: inpainting ----------------------------------------------------------------

@uses_threads
@eval_mode
def inpaint(model: FractalModel, images: torch.Tensor | np.ndarray, known: torch.Tensor | np.ndarray,
            labels: int | str | Sequence | torch.Tensor | None = None, *legacy: Any,
            settings: SamplingSettings | None = None,
            cfg: float | None = None, cfg_schedule: str | None = None, temperature: float | None = None,
            filter_threshold: float | None = None, num_iter: Sequence[int] | int | None = None,
            seed: int | None = None, n: int = 1, progress: Callable[[float], None] | None = None,
            precision: str = "auto", samples: int | None = None) -> torch.Tensor:
    """Regenerate the unknown pixels of `images` conditioned on the known ones.

    images: uint8 (N, C, H, W) (or one image (C, H, W)) at the model's size.
    known: bool (N, H, W) or (H, W) (one mask for all images), True where the pixel is given;
        (N, C, H, W) gives a mask per channel.
    labels: None (unconditional), one class for all images, or one per image.
    settings, cfg, cfg_schedule, temperature, filter_threshold, num_iter: how to sample, as `sample`
        takes them (None: the model's recommendation, else the defaults).
    n: completions per image (`samples`, its old name, is deprecated).
    precision: fp32, bf16 or auto (bf16 on GPUs with native bf16, fp32 elsewhere), as `sample` takes it.
    threads (keyword): CPU threads for this call, as `sample` takes them.
    Returns uint8 (N*n, C, H, W): the completions of image i are rows i*n .. (i+1)*n-1.
    `progress(k)`: called after every level-0 step with the (fractional) number of rows done.
    Images with no unknown pixel come back unchanged without running the model. With nothing
    known, the images are those `fractalgen.sample` draws for the same labels, seed and settings
    (in one batch).
    """
    given = legacy_overrides(legacy, "inpaint", INPAINT_LEGACY_ORDER, 5, cfg=cfg, cfg_schedule=cfg_schedule,
                             temperature=temperature, filter_threshold=filter_threshold, num_iter=num_iter,
                             seed=seed, samples=samples, progress=progress)
    seed, samples, progress = (given.pop(k) for k in ("seed", "samples", "progress"))
    seed = check_seed(seed)
    if samples is not None:
        warnings.warn("inpaint(samples=...) is deprecated: the number of completions per image is n=...",
                      DeprecationWarning, stacklevel=4)  # the caller, past the two decorators
        n = samples
    images = _as_images(model, images)
    autocast = precision_context(precision, model.device)  # an unknown name fails before any work
    N = images.shape[0]
    mask = _as_known(known, images.shape)
    labels = _as_labels(model, labels, N)
    settings = resolve_settings(model, settings=settings, **given)  # checked before any work
    n = check_count(n, "n (completions per image)", 1, N * images[0].numel() if N else 0, ConditionalInputError)
    images, mask = images.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
    if labels is not None:
        labels = labels.repeat_interleave(n, 0)
    out = images.clone()
    todo = (~mask).flatten(1).any(1).nonzero(as_tuple=True)[0]  # rows with something to generate
    if todo.numel() == 0:
        return out

    device = model.device
    with autocast:
        values, _ = model.generate(
            labels=None if labels is None else labels[todo].to(device), n=todo.numel(), settings=settings,
            generator=make_generator(model, seed),
            on_step=step_callback(None, progress, 0, len(todo)),
            known=Known(images[todo].to(device, torch.float32), mask[todo].to(device)),
        )
    out[todo] = to_uint8(values).to(out.device)
    return out


# The positional parameters of inpaint() after labels, as they were before the settings became keyword-only.
INPAINT_LEGACY_ORDER = ("cfg", "temperature", "num_iter", "seed", "samples", "cfg_schedule",
                        "filter_threshold", "progress")


# ---- thin helpers that build the mask ------------------------------------------------------

def box_mask(size: int, box: Sequence[int]) -> torch.Tensor:
    """Bool (size, size), True inside box = (x0, y0, x1, y1): columns x0..x1-1, rows y0..y1-1."""
    x0, y0, x1, y1 = check_box(box, size, size)
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    return inside


def outpaint(model: FractalModel, images: torch.Tensor | np.ndarray, box: Sequence[int],
             labels: int | str | Sequence | torch.Tensor | None = None, *,
             settings: SamplingSettings | None = None, **options: Any) -> torch.Tensor:
    """Keep the pixels inside box = (x0, y0, x1, y1) (end exclusive) and generate everything around them.
    `settings` and the keyword `options` (cfg=..., seed=..., n=...) as `inpaint` takes them."""
    return inpaint(model, images, box_mask(model.config.img_size, box), labels, settings=settings, **options)


def centre_box(size: int, fraction: float = 0.5) -> tuple[int, int, int, int]:
    """The central square whose side is round(fraction * size): (x0, y0, x1, y1)."""
    if not 0.0 < fraction <= 1.0:
        raise ConditionalInputError(f"the known centre fraction must be in (0, 1], got {fraction}")
    side = max(1, round(fraction * size))
    start = (size - side) // 2
    return (start, start, start + side, start + side)


def uncrop(model: FractalModel, images: torch.Tensor | np.ndarray, fraction: float = 0.5,
           labels: int | str | Sequence | torch.Tensor | None = None, *,
           settings: SamplingSettings | None = None, **options: Any) -> torch.Tensor:
    """Outpainting from a small known centre: keep the central square and generate the rest.

    By default the known centre is the central square of half the side (a quarter of the
    pixels; rows and columns 7..20 of a 28x28 digit); `fraction` sets its side. `settings` and the
    keyword `options` as `inpaint` takes them.
    """
    box = centre_box(model.config.img_size, fraction)
    return outpaint(model, images, box, labels, settings=settings, **options)


def top_rows_known(size: int, fraction: float = 0.25) -> torch.Tensor:
    """Bool (size, size): the top round(fraction * size) rows given, the rest to generate."""
    known = torch.zeros(size, size, dtype=torch.bool)
    known[: round(fraction * size)] = True
    return known


@uses_threads
def edit(model: FractalModel, images: torch.Tensor | np.ndarray, label: int | str | Sequence | torch.Tensor,
         known: torch.Tensor | np.ndarray | None = None, *, settings: SamplingSettings | None = None,
         **options: Any) -> torch.Tensor:
    """Class-conditional editing: inpainting with a chosen label (one for all images, or one per image).

    By default the top quarter of the rows is kept and the lower three quarters are regenerated,
    with the model's recommended settings (benchmarks/edit_accuracy.py compares the guidance
    schedules for edits). `settings` and the keyword `options` as `inpaint` takes them.
    """
    if model.config.num_classes == 0:
        raise ConditionalInputError("editing needs a class-conditional model; this one is unconditional")
    if known is None:
        known = top_rows_known(model.config.img_size)
    return inpaint(model, images, known, labels=label, settings=settings, **options)


# ---- input checks ------------------------------------------------------------------------------

def _as_images(model: FractalModel, images) -> torch.Tensor:
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if images.dim() == 3:
        images = images[None]
    c, s = model.config.channels, model.config.img_size
    if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
        raise ConditionalInputError(f"images must be (N, {c}, {s}, {s}) for this model, got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise ConditionalInputError(f"images must be uint8 (0..255), got {images.dtype}")
    return images


def _as_known(known, shape) -> torch.Tensor:
    """Any accepted mask form -> bool (N, C, H, W)."""
    N, C, H, W = shape
    known = torch.as_tensor(np.asarray(known) if not isinstance(known, torch.Tensor) else known)
    if known.dtype != torch.bool:
        raise ConditionalInputError(f"the known mask must be bool (True = given), got {known.dtype}")
    if known.dim() == 2:
        known = known[None]
    if known.dim() == 3:
        known = known[:, None].expand(-1, C, -1, -1)  # one mask for every channel
    if known.dim() != 4 or known.shape[1:] != (C, H, W) or known.shape[0] not in (1, N):
        raise ConditionalInputError(f"the known mask must be (N, H, W) = ({N}, {H}, {W}) to match the images, "
                                    f"got {tuple(known.shape)}")
    return known.to(device=torch.device("cpu")).expand(N, -1, -1, -1).contiguous()


def _as_labels(model: FractalModel, labels, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    k = model.config.num_classes
    if k == 0:
        raise ConditionalInputError("this model is unconditional: it takes no class label")
    try:
        labels = as_labels(labels, "cpu", model.class_names)  # floats and booleans refused, as sample refuses them
    except ValueError as e:
        raise ConditionalInputError(str(e)) from None
    if labels.numel() == 1:
        labels = labels.expand(n)
    if labels.numel() != n:
        raise ConditionalInputError(f"give one label, or one per image ({n}), got {labels.numel()}")
    check_labels(labels, k, ConditionalInputError)
    return labels.contiguous()


def check_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ConditionalInputError(f"a box is x0,y0,x1,y1 (four numbers), got {list(box)}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ConditionalInputError(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {width} and "
                                    f"0 <= y0 < y1 <= {height} (x1, y1 exclusive)")
    return x0, y0, x1, y1
