"""The fractal composition: a list of generator levels and a pixel head.

Each level takes a batch of squares with their conditions, and hands "generate these
patches given these conditions" to the next level; the pixel head ends the recursion.
"""
from __future__ import annotations

import functools
import json
import numbers
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn

from .config import LEGACY_DEFAULTS, SAMPLING_PRESETS, ModelConfig, presets_in_full
from .footprint import check_fits
from .levels import LEVEL_KINDS, PixelHead
from .levels.base import Level, init_weights
from .sampling import Known, SampleContext, ValueCoder
from .settings import SamplingSettings, resolve_settings
from .settings import check as check_settings


class FractalModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        device = torch.empty(0).device  # where the parameters will be made (`with torch.device(...)` chooses)
        if device.type != "meta":  # a config too large for this machine: one line, before any allocation
            check_fits(config, device)
        self.config = config
        # The recommended sampling settings, e.g. {"cfg": 10.0}: the preset's (SAMPLING_PRESETS) for a
        # fresh model, the file's for a loaded one; settings.resolve_settings prefers them to the defaults.
        self.recommended: dict = dict(SAMPLING_PRESETS.get(config.name, {}))
        # Set only for a model from an older file whose config held other sampling settings than its
        # recommendation (the bundled models): those four, which the codec's model fingerprint covers.
        self.fingerprint_presets: dict | None = None
        width0 = config.widths[0]
        if config.num_classes > 0:
            self.class_embed = nn.Embedding(config.num_classes, width0)
        self.null_class = nn.Parameter(torch.zeros(1, width0))  # the unconditional "class"
        self.levels = nn.ModuleList([LEVEL_KINDS[level.kind](level) for level in config.levels])
        self.pixel_head = PixelHead(config.pixel_head)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def recommend(self, sampling: dict, presets: dict | None = None, fingerprinted: dict | None = None) -> None:
        """Take `sampling` (a file's recommendation) over `presets` (the sampling settings an older config
        held) as this model's recommendation. `fingerprinted`: the four settings the codec's fingerprint
        covers for this model (default: `presets`, completed with their defaults); kept where they differ
        from what the recommendation gives (`config.presets_in_full`)."""
        presets = presets or {}
        self.recommended = {**{k: v for k, v in presets.items() if v is not None and v != LEGACY_DEFAULTS[k]},
                            **sampling}
        if fingerprinted is None and not presets:
            self.fingerprint_presets = None
            return
        held = presets_in_full(presets if fingerprinted is None else fingerprinted)
        # Compared as JSON, as the fingerprint hashes them: 2 and 2.0 differ there.
        same = json.dumps(held) == json.dumps(presets_in_full(self.recommended))
        self.fingerprint_presets = None if same else held

    def presets_for_fingerprint(self) -> dict:
        """The four sampling settings the codec's model fingerprint covers, as the config held them when the
        format was fixed: an older file's (`fingerprint_presets`) where they differ from the recommendation,
        else the recommendation's (their defaults where it names none)."""
        return self.fingerprint_presets or presets_in_full(self.recommended)

    def reset_parameters(self) -> None:
        init_weights(self)
        for name, p in self.named_parameters():
            if name.endswith(("pos_embed", "mask_token", "null_class")):
                nn.init.normal_(p, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.null_class.device

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The name of each class (index order), as the training folder's class folders named them; None
        when the model is unconditional or its checkpoint stored no names (its classes are numbers)."""
        return self.config.class_names

    # ---- class conditioning (level 0) ----------------------------------------------

    def class_condition(self, labels: torch.Tensor | None, batch: int, drop_prob: float = 0.0,
                        labels_checked: bool = False) -> torch.Tensor:
        """(B, width0): the class embedding, or the null class where labels are absent or dropped.
        `labels_checked`: the caller has checked them (see loss)."""
        null = self.null_class.expand(batch, -1)
        if labels is None or self.config.num_classes == 0:
            return null
        labels = labels.to(self.device)
        if not labels_checked:
            check_labels(labels, self.config.num_classes)
        emb = self.class_embed(labels)
        if drop_prob > 0:  # classifier-free guidance training
            drop = torch.rand(batch, device=emb.device) < drop_prob
            emb = torch.where(drop[:, None], null.to(emb.dtype), emb)
        return emb

    # ---- training and likelihood ------------------------------------------------------

    def _check_images(self, images: torch.Tensor):
        c, s = self.config.channels, self.config.img_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"images must be (N, {c}, {s}, {s}), got {tuple(images.shape)}")
        if images.is_complex() or images.dtype == torch.bool:
            raise TypeError(f"images must be uint8 pixel values 0..255, got a {images.dtype} tensor")
        if images.is_floating_point() and images.numel() and not (
                bool((images == images.round()).all()) and 0 <= float(images.min()) and float(images.max()) <= 255):
            raise ValueError("images must hold pixel values 0..255 (uint8); these floats are not whole numbers in "
                             "that range (scale images in [0, 1] by 255 and round)")

    @property
    def stages(self) -> tuple[Level | PixelHead, ...]:
        """What the recursion walks, top-down: the generator levels, then the pixel head (the last level)."""
        return (*cast(Sequence[Level], self.levels), self.pixel_head)

    def _recurse(self, images, labels, train: bool, masks=None, guide_targets=None, labels_checked=False):
        """Run every level; returns per-pixel losses with the image each came from, and guide terms."""
        self._check_images(images)
        x = images.to(self.device, self.null_class.dtype)  # raw 0..255 in fp32 (float64 in a .double() model)
        B = x.shape[0]
        drop = self.config.label_drop_prob if train else 0.0
        conds = [self.class_condition(labels, B, drop, labels_checked)]
        owner = torch.arange(B, device=x.device)
        terms = []  # (loss per row, the image of each row) of every level that has one; the pixel head's last
        for i, level in enumerate(self.stages):
            mask = masks[i] if masks is not None and i < len(masks) else None
            spec = mask if mask is not None else ("train" if train else "eval")
            target = guide_targets[i] if guide_targets is not None and i < len(guide_targets) else None
            out = level.forward_train(x, conds, spec, weighted=train, guide_target=target)
            if out.nll is not None:
                terms.append((out.nll, owner))
            x, conds, owner = out.x, out.conds, owner[out.parent]
        *guide_terms, (pixel_nll, pixel_owner) = terms
        return pixel_nll, pixel_owner, guide_terms

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None,
             masks: Sequence[str | torch.Tensor | None] | None = None, train: bool = True,
             guide_targets: Sequence[torch.Tensor | None] | None = None, labels_checked: bool = False) -> torch.Tensor:
        """Training loss: mean pixel-head loss over every pixel that reached it + guiding-pixel losses.

        images uint8 (N, C, H, W); labels int64 (N,) (None: unconditional). Class labels are
        dropped with the config's probability; MAR levels mask with the training schedule.
        train=False gives the authors' likelihood-mode loss instead (unconditional, plain
        channel mean, uniform MAR masks), averaged over pixels rather than per image.
        `masks` (tests): per level, None, "all" or a bool (B_level, N_level) tensor.
        `guide_targets` (tests): per level, None or the guiding pixel's targets (B_level, C).
        `labels_checked`: every label is known to be one of the model's classes (training checks its
        data once, when it is loaded), so the check, a read of the labels back from the device, is skipped.
        """
        pixel_nll, _, guide_terms = self._recurse(images, labels if train else None, train=train, masks=masks,
                                                  guide_targets=guide_targets, labels_checked=labels_checked)
        return pixel_nll.mean() + sum(g.mean() for g, _ in guide_terms)

    def nll(self, images: torch.Tensor, masks: Sequence[str | torch.Tensor | None] | None = None,
            labels: torch.Tensor | None = None) -> torch.Tensor:
        """Likelihood-mode loss per image (N,), in nats per dimension, plain channel mean: unconditional,
        or conditioned on the class with labels int64 (N,).

        For AR levels this is exact; a MAR level draws one uniform count of masked tokens per
        batch, which makes it an unbiased estimate (average several passes).
        """
        pixel_nll, owner, guide_terms = self._recurse(images, labels, train=False, masks=masks)
        B = images.shape[0]
        total = per_image_mean(pixel_nll, owner, B)
        for g, g_owner in guide_terms:
            total = total + per_image_mean(g, g_owner, B)
        return total

    # ---- sampling -----------------------------------------------------------------------

    @torch.inference_mode()  # not no_grad: no view/version tracking, which AR sampling's many small ops pay for
    def generate(self, labels: int | str | Sequence[int | str] | torch.Tensor | np.ndarray | None = None,
                 n: int | None = None, settings: SamplingSettings | None = None, *,
                 generator: torch.Generator | None = None, known: Known | None = None,
                 on_step: Callable | None = None, coder: ValueCoder | None = None, compile: bool = False,
                 **overrides: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample images; returns raw values (B, C, H, W) float and the log-probability of each value
        drawn (B, C, H, W) (0 where known; sum it for an image's log-probability). A `coder`
        (sampling.ValueCoder) chooses every value instead of the random draw (the lossless codec).
        `compile`: decode steps and MAR passes through torch.compile (`sampling.compiled`).

        `settings`: a SamplingSettings, built once by the caller (`settings.resolve_settings`);
        None takes the model's recommendation (`recommended`), else the defaults. Keyword `overrides`
        (cfg=..., num_iter=...) change single settings, as `fractalgen.sample` takes them.
        With labels and cfg != 1 the batch carries a conditional and an unconditional half down
        to the pixel heads (classifier-free guidance).
        Runs under inference mode: the tensors returned cannot be changed in place outside it (clone them).
        """
        if settings is None or overrides:
            settings = resolve_settings(self, settings=settings, **overrides)
        else:
            check_settings(settings, self.config.num_levels)
        if labels is not None:
            labels = as_labels(labels, self.device, self.config.class_names)
            B = labels.numel()
        elif n is not None:
            B = int(n)
        elif known is not None:
            B = known.values.shape[0]
        else:
            raise ValueError("give labels or n")
        guided = labels is not None and self.config.num_classes > 0 and settings.cfg != 1.0
        cond = self.class_condition(labels, B)
        if guided:
            cond = torch.cat([cond, self.null_class.expand(B, -1).to(cond.dtype)])
        ctx = SampleContext(guided=guided, temperature=settings.temperature,
                            filter_threshold=settings.filter_threshold, num_iter=settings.num_iter,
                            generator=generator, guidance_scale=settings.cfg, cfg_schedule=settings.cfg_schedule,
                            on_step=on_step, coder=coder, compiled=compile)
        guidance = torch.full((B,), settings.cfg, device=self.device)  # per row; level 0's schedule varies it
        return self._sample_level(0, ctx, [cond], guidance, known)

    def _sample_level(self, depth: int, ctx: SampleContext, conds, guidance, known: Known | None):
        """Level `depth` (ctx: the settings at that depth) generates its squares, the next level their
        patches; the pixel head, the last, draws single pixels."""
        return self.stages[depth].sample(conds, guidance, ctx, known,
                                         partial(self._sample_level, depth + 1, ctx.deeper()))


def eval_mode(function):
    """Decorator: run function(model, ...) with the model in eval mode, restoring its mode afterwards."""
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        was_training = model.training
        model.eval()
        try:
            return function(model, *args, **kwargs)
        finally:
            model.train(was_training)
    return wrapper


def per_image_mean(values: torch.Tensor, owner: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean of `values` (M,) grouped by `owner` (M,) into (batch,), accumulated in fp64 (exact enough for 8.0)."""
    values = values.double()
    sums = torch.zeros(batch, device=values.device, dtype=torch.float64).index_add_(0, owner, values)
    counts = torch.zeros(batch, device=values.device, dtype=torch.float64).index_add_(
        0, owner, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def class_indices(labels, class_names: tuple[str, ...] | None):
    """Labels with class names replaced by their indices (`class_names`: the model's, or None).

    A name is looked up first; text that is not a name but a whole number is taken as an index.
    Anything else (a tensor, numbers) is returned as it was.
    """
    if isinstance(labels, torch.Tensor):
        return labels
    single = isinstance(labels, str) or not isinstance(labels, (list, tuple))
    items = [labels] if single else list(labels)
    if not any(isinstance(v, str) for v in items):
        return labels
    index = {name: i for i, name in enumerate(class_names or ())}
    out = []
    for v in items:
        if isinstance(v, str) and v in index:
            out.append(index[v])
        elif isinstance(v, str) and v.strip().isdigit():
            out.append(int(v))
        elif isinstance(v, str):
            known = f"its classes are {', '.join(class_names)}" if class_names else "it has no class names"
            raise ValueError(f"class labels must be integers or the model's class names: unknown class {v!r} "
                             f"({known})")
        else:
            out.append(v)
    return out[0] if single else out


def as_labels(labels, device, class_names: tuple[str, ...] | None = None) -> torch.Tensor:
    """Class labels as int64 (B,); class names (see class_indices) become their indices; floats,
    booleans and other text are refused rather than truncated."""
    if isinstance(labels, np.ndarray):  # numpy's integers become a tensor; its floats and booleans are refused below
        # (unsigned integers past int64 go as Python ints, refused by their value rather than wrapped round)
        wraps = labels.dtype.kind == "u" and labels.size and int(labels.max()) >= 2**63
        labels = (torch.from_numpy(np.ascontiguousarray(labels)) if labels.dtype.kind in "iufcb" and not wraps
                  else labels.tolist())
    labels = class_indices(labels, class_names)
    values = labels if isinstance(labels, torch.Tensor) else None
    if values is None:
        items = labels if isinstance(labels, (list, tuple)) else [labels]
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
            raise ValueError(f"class labels must be integers, got {list(items)[:8]}")
        beyond = next((v for v in items if not -2**63 <= v < 2**63), None)  # what an int64 tensor holds
        if beyond is not None:
            raise ValueError(f"label {beyond} is out of range: class labels are class indices")
        values = torch.tensor([int(v) for v in items], dtype=torch.long)
    elif values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"class labels must be integers, got a {values.dtype} tensor")
    return values.to(device=device, dtype=torch.long).view(-1)


def label_problem(label: int, num_classes: int) -> str | None:
    """Why `label` is no class of a model with `num_classes` classes (the one wording), or None."""
    if num_classes == 0:
        return "this model is unconditional: it takes no class label"
    if not 0 <= label < num_classes:
        return (f"label {label} is out of range: the model has {num_classes} classes, so labels are "
                f"0..{num_classes - 1}")
    return None


def check_labels(labels, num_classes: int, error: type[Exception] = ValueError) -> None:
    """Every class label (an int, a sequence of them, or an int64 tensor) is one of the model's classes,
    else `error` (each caller's own exception type) with label_problem's words."""
    if isinstance(labels, torch.Tensor):
        if not labels.numel():
            return
        if num_classes and not bool(((labels < 0) | (labels >= num_classes)).any()):  # one host read
            return
        labels = labels.flatten().tolist()
    for label in [labels] if isinstance(labels, int) else labels:
        problem = label_problem(int(label), num_classes)
        if problem is not None:
            raise error(problem)
