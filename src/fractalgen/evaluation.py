"""The evaluation protocol: sample equal images per class, write PNGs, score them against a reference.

`generate_images` is resumable (indices whose PNG exists are skipped) and splits the missing
images across ranks under torchrun; the scoring itself (FID, Inception Score, precision/recall)
is `metrics.score_images`. Image i is seeded by the batch it falls in: each batch is drawn with
seed * 1_000_003 + (its first index), so a rerun makes the same images for the same missing set.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch.distributed as dist
from PIL import Image

from .errors import UserError
from .files import atomic_write, image_name, save_image, to_pil, write_text
from .jsonfile import read_object
from .metrics import FeatureNet, ImageSet, Scores, Statistics, reference_statistics, score_images
from .nn import precision_in_effect
from .runtime import barrier, setup_distributed, sum_over_ranks
from .samples import sample
from .settings import SamplingSettings

SETTINGS_FILE = "evaluate.json"  # the settings the images in a folder were made with


# ---- the label schedule and the folder -------------------------------------------------------

def class_schedule(num_images: int, num_classes: int) -> np.ndarray | None:
    """Labels 0..classes-1, each repeated num_images / classes times (the official protocol); None if unconditional."""
    if num_images < 1:
        raise UserError(f"--n must be positive, got {num_images}")
    if num_classes == 0:
        return None
    if num_images % num_classes:
        raise UserError(f"--n {num_images} is not a multiple of the {num_classes} classes: "
                        f"equal images per class needs e.g. {num_images // num_classes * num_classes or num_classes}")
    return np.repeat(np.arange(num_classes), num_images // num_classes)


def claim_folder(out: Path, manifest: dict) -> None:
    """Record the settings in the folder; refuse to mix in images made with other settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = read_object(path, str(path))
        except UserError as e:
            raise UserError(f"{e}: use another --out") from None
        changed = sorted(k for k in set(manifest) | set(previous) if previous.get(k) != manifest.get(k))
        if changed:
            hint = ", or the --precision they were made with (fp32 when the folder names none)" \
                if "precision" in changed else ""
            raise UserError(f"{out} holds images made with other settings ({', '.join(changed)} differ): "
                            f"use another --out to keep both{hint}")
        return
    write_text(json.dumps(manifest, indent=1) + "\n", path)


# ---- sampling ------------------------------------------------------------------------------

@dataclass
class Generation:
    files: list[Path]  # every image of the run, in index order
    generated: int  # images made by this call, all ranks together
    seconds: float  # sampling time summed over ranks (device-seconds)

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.generated if self.generated else None


def generate_images(model, out: Path, labels: np.ndarray | None, num_images: int, settings: SamplingSettings,
                    batch_size: int, seed: int, rank: int = 0, world: int = 1,
                    on_images: Callable[[int], None] | None = None, precision: str = "auto") -> Generation:
    """Write image i as out/{i:05d}_class{label}.png for every i whose file is missing.

    The missing indices are dealt round-robin to the ranks; each batch is seeded from `seed`
    and its first index, so a rerun makes the same images for the same missing set.
    """
    names = [image_name(i, None if labels is None else int(labels[i])) for i in range(num_images)]
    files = [out / n for n in names]
    missing = [i for i, f in enumerate(files) if not f.is_file()][rank::world]
    generated, seconds = 0, 0.0
    for start in range(0, len(missing), batch_size):
        indices = missing[start:start + batch_size]
        batch_labels = None if labels is None else labels[indices].tolist()
        t0 = time.perf_counter()
        # (B, C, H, W) uint8; .cpu() waits for the device
        images = sample(model, labels=batch_labels, n=len(indices), seed=seed * 1_000_003 + indices[0],
                        batch_size=None, precision=precision, settings=settings).cpu()
        seconds += time.perf_counter() - t0
        for i, image in zip(indices, images, strict=True):
            save_image(cast(Image.Image, to_pil(image)), files[i])
        generated += len(indices)
        if on_images is not None:
            on_images(len(indices))
    total, seconds = sum_over_ranks([float(generated), seconds])
    return Generation(files=files, generated=int(total), seconds=seconds)


# ---- the whole protocol --------------------------------------------------------------------

class _NoProgress:
    total = 0

    def update(self, n):
        pass

    def set_description(self, text):
        pass


def evaluate_model(model, out: Path, num_images: int, settings: SamplingSettings, net: FeatureNet,
                   reference: Statistics | None = None, ref_images: ImageSet | None = None,
                   batch_size: int = 64, feature_batch_size: int = 100, seed: int = 0, npz: Path | None = None,
                   splits: int = 10, k: int = 3, pr_images: int = 10000, manifest: dict | None = None,
                   progress=None, precision: str = "auto") -> tuple[Scores | None, Generation]:
    """Sample the missing images of the run (all ranks), then score them on rank 0 (others get None).

    `progress` is one tqdm-like bar for the whole run: sampling, reference features, features.
    """
    # Long timeout: ranks wait for each other at the barrier after hours of sampling.
    ranks, _ = setup_distributed(model.device.type, timeout=timedelta(hours=12))
    rank, world = ranks.rank, ranks.world
    progress = progress if progress is not None and rank == 0 else _NoProgress()
    labels = class_schedule(num_images, model.config.num_classes)
    if npz is not None and npz.exists():
        raise UserError(f"{npz} exists: not overwriting it (choose another --npz)")
    manifest = {**(manifest or {}), **settings.to_dict(), "num_images": num_images, "seed": seed}
    in_effect = precision_in_effect(precision, model.device)
    if in_effect != "fp32":  # fp32 folders keep the manifest they always had
        manifest["precision"] = in_effect
    if rank == 0:
        claim_folder(out, manifest)
    barrier()

    todo = sum(not (out / image_name(i, None if labels is None else int(labels[i]))).is_file()
               for i in range(num_images))
    progress.total = todo + num_images + (len(ref_images) if ref_images is not None else 0)
    progress.set_description("sampling")
    generation = generate_images(model, out, labels, num_images, settings, batch_size, seed, rank, world,
                                 on_images=lambda n: progress.update(n * world),  # rank 0 speaks for all
                                 precision=precision)
    barrier()
    if world > 1:
        dist.destroy_process_group()  # scoring happens on rank 0 alone
    if rank != 0:
        return None, generation
    progress.n = todo  # exact again after the round-robin estimate
    images = ImageSet.from_files(generation.files)
    if npz is not None:
        arrays: dict[str, Any] = {"arr_0": images.read_all()}  # (N, H, W, C) uint8, the ADM evaluator's sample format
        if labels is not None:
            arrays["labels"] = labels
        atomic_write(lambda f: np.savez(f, **arrays), npz)
    if ref_images is not None:
        progress.set_description("reference features")
        reference = reference_statistics(net, ref_images, feature_batch_size, keep=pr_images,
                                         on_images=progress.update)
    progress.set_description("features")
    scores = score_images(images, net, reference, feature_batch_size, splits, k, pr_images,
                          device=getattr(net, "device", "cpu"), on_images=progress.update)
    return scores, generation
