"""The evaluation protocol: sample with equal images per class, write PNGs, score them against a reference.

`generate_images` is resumable (indices whose PNG exists are skipped) and splits the missing
images across ranks under torchrun; `score_images` turns an image set into FID, Inception
Score and precision/recall with one feature network.
"""
from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from .. import sample
from ..checkpoint import atomic_save
from ..errors import UserError
from .features import FeatureNet, extract
from .fid import Statistics, fid_from_statistics, statistics
from .images import ImageSet
from .inception_score import inception_score
from .precision_recall import precision_recall

SETTINGS_FILE = "evaluate.json"  # the settings the images in a folder were made with
SAMPLING_KEYS = ("cfg", "cfg_schedule", "temperature", "filter_threshold", "num_iter")


# ---- the label schedule and the files ----------------------------------------------------

def class_schedule(num_images: int, num_classes: int) -> np.ndarray | None:
    """Labels 0..classes-1, each repeated num_images / classes times (the official protocol); None if unconditional."""
    if num_images < 1:
        raise UserError(f"--num-images must be positive, got {num_images}")
    if num_classes == 0:
        return None
    if num_images % num_classes:
        raise UserError(f"--num-images {num_images} is not a multiple of the {num_classes} classes: "
                        f"equal images per class needs e.g. {num_images // num_classes * num_classes or num_classes}")
    return np.repeat(np.arange(num_classes), num_images // num_classes)


def image_name(index: int, label: int | None) -> str:
    return f"{index:05d}_uncond.png" if label is None else f"{index:05d}_class{label}.png"


def write_png(image: np.ndarray, path: Path) -> None:
    """(H, W, C) uint8 to PNG through a temporary name, so an interrupted run leaves no half image."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def sampling_settings(model, overrides: dict) -> dict:
    """Explicit options > the checkpoint's recommended settings > the config's (None lets the model decide)."""
    defaults = getattr(model, "sampling_defaults", {}) or {}
    settings = {k: overrides.get(k) if overrides.get(k) is not None else defaults.get(k) for k in SAMPLING_KEYS}
    c = model.config
    settings["cfg"] = c.cfg if settings["cfg"] is None else float(settings["cfg"])
    settings["temperature"] = c.temperature if settings["temperature"] is None else float(settings["temperature"])
    settings["cfg_schedule"] = settings["cfg_schedule"] or c.cfg_schedule
    settings["filter_threshold"] = 1e-4 if settings["filter_threshold"] is None else float(settings["filter_threshold"])
    settings["num_iter"] = list(settings["num_iter"] or c.default_num_iter)
    return settings


def claim_folder(out: Path, manifest: dict) -> None:
    """Record the settings in the folder; refuse to mix in images made with other settings."""
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{path} is unreadable: use another --out") from None
        changed = sorted(k for k in set(manifest) | set(previous) if previous.get(k) != manifest.get(k))
        if changed:
            raise UserError(f"{out} holds images made with other settings ({', '.join(changed)} differ): "
                            f"use another --out to keep both")
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest, indent=1) + "\n")
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}") from None


# ---- distributed ---------------------------------------------------------------------------

def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        # Long timeout: ranks wait for each other at the barrier after hours of sampling.
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_ranks(values: list[float]) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---- sampling ------------------------------------------------------------------------------

@dataclass
class Generation:
    files: list[Path]  # every image of the run, in index order
    generated: int  # images made by this call, all ranks together
    seconds: float  # sampling time summed over ranks (device-seconds)

    @property
    def seconds_per_image(self) -> float | None:
        return self.seconds / self.generated if self.generated else None


def generate_images(model, out: Path, labels: np.ndarray | None, num_images: int, settings: dict,
                    batch_size: int, seed: int, rank: int = 0, world: int = 1,
                    on_images: Callable[[int], None] | None = None) -> Generation:
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
        images = sample(model, labels=batch_labels, n=len(indices), seed=seed * 1_000_003 + indices[0],
                        **settings).cpu()  # (B, C, H, W) uint8; .cpu() waits for the device
        seconds += time.perf_counter() - t0
        for i, image in zip(indices, images.permute(0, 2, 3, 1).numpy()):  # (B, H, W, C)
            write_png(image, files[i])
        generated += len(indices)
        if on_images is not None:
            on_images(len(indices))
    generated, seconds = sum_over_ranks([float(generated), seconds])
    return Generation(files=files, generated=int(generated), seconds=seconds)


# ---- scoring -------------------------------------------------------------------------------

@dataclass
class Scores:
    images: int
    feature_net: str
    fid: float | None = None
    inception_score: float | None = None
    inception_score_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    notes: list[str] = field(default_factory=list)  # why a metric is missing


def reference_statistics(net: FeatureNet, ref_images: ImageSet, batch_size: int, keep: int,
                         on_images: Callable[[int], None] | None = None) -> Statistics:
    features, _ = extract(net, ref_images.batches(batch_size), want_logits=False, on_batch=on_images)
    return statistics(features, feature_net=net.name, keep=keep)


def score_images(images: ImageSet, net: FeatureNet, reference: Statistics | None, batch_size: int = 100,
                 splits: int = 10, k: int = 3, pr_images: int = 10000, device: str | torch.device = "cpu",
                 on_images: Callable[[int], None] | None = None) -> Scores:
    """FID against `reference`, Inception Score when the net has logits, precision/recall when the
    reference carries features. Metrics that cannot be computed are None, with the reason in notes."""
    features, logits = extract(net, images.batches(batch_size), on_batch=on_images)
    scores = Scores(images=len(features), feature_net=net.name)
    if reference is None:
        scores.notes.append("no reference (--ref-stats or --ref-images): no FID, precision or recall")
    else:
        if reference.dim != features.shape[1]:
            raise UserError(f"the reference statistics have {reference.dim} features, {net.name} gives "
                            f"{features.shape[1]}: they were made with another feature network")
        scores.fid = fid_from_statistics(statistics(features, feature_net=net.name), reference)
        if reference.features is None:
            scores.notes.append("the reference statistics hold no features (the authors' files do not): "
                                "no precision/recall; make them with `fractalgen ref-stats` or pass --ref-images")
        else:
            rng = np.random.default_rng(0)
            fake = features[np.sort(rng.permutation(len(features))[:pr_images])]
            real = reference.features[:pr_images]
            scores.precision, scores.recall = precision_recall(real, fake, k=k, device=device)
    if logits is None:
        scores.notes.append(f"no Inception Score: {net.no_logits_reason}")
    elif len(logits) < splits:
        scores.notes.append(f"no Inception Score: {len(logits)} images are fewer than {splits} splits")
    else:
        scores.inception_score, scores.inception_score_std = inception_score(logits, splits)
    return scores


# ---- the whole protocol --------------------------------------------------------------------

class _NoProgress:
    total = 0

    def update(self, n):
        pass

    def set_description(self, text):
        pass


def evaluate_model(model, out: Path, num_images: int, settings: dict, net: FeatureNet,
                   reference: Statistics | None = None, ref_images: ImageSet | None = None,
                   batch_size: int = 64, feature_batch_size: int = 100, seed: int = 0, npz: Path | None = None,
                   splits: int = 10, k: int = 3, pr_images: int = 10000, manifest: dict | None = None,
                   progress=None) -> tuple[Scores | None, Generation]:
    """Sample the missing images of the run (all ranks), then score them on rank 0 (others get None).

    `progress` is one tqdm-like bar for the whole run: sampling, reference features, features.
    """
    rank, world = init_distributed()
    progress = progress if progress is not None and rank == 0 else _NoProgress()
    labels = class_schedule(num_images, model.config.num_classes)
    if npz is not None and npz.exists():
        raise UserError(f"{npz} exists: not overwriting it (choose another --npz)")
    if rank == 0:
        claim_folder(out, {**(manifest or {}), **settings, "num_images": num_images, "seed": seed})
    barrier()

    todo = sum(not (out / image_name(i, None if labels is None else int(labels[i]))).is_file()
               for i in range(num_images))
    progress.total = todo + num_images + (len(ref_images) if ref_images is not None else 0)
    progress.set_description("sampling")
    generation = generate_images(model, out, labels, num_images, settings, batch_size, seed, rank, world,
                                 on_images=lambda n: progress.update(n * world))  # rank 0 speaks for all
    barrier()
    if world > 1:
        dist.destroy_process_group()  # scoring happens on rank 0 alone
    if rank != 0:
        return None, generation
    progress.n = todo  # exact again after the round-robin estimate
    images = ImageSet.from_files(generation.files)
    if npz is not None:
        arrays = {"arr_0": images.read_all()}  # (N, H, W, C) uint8, the ADM evaluator's sample format
        if labels is not None:
            arrays["labels"] = labels
        atomic_save(lambda f: np.savez(f, **arrays), npz)
    if ref_images is not None:
        progress.set_description("reference features")
        reference = reference_statistics(net, ref_images, feature_batch_size, keep=pr_images,
                                         on_images=progress.update)
    progress.set_description("features")
    scores = score_images(images, net, reference, feature_batch_size, splits, k, pr_images,
                          device=getattr(net, "device", "cpu"), on_images=progress.update)
    return scores, generation
