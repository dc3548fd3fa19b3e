"""Scoring an image set: FID against a reference, Inception Score, precision/recall, on one feature network."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .features import FeatureNet, extract
from .fid import Statistics, fid_from_statistics, statistics
from .images import ImageSet
from .inception_score import inception_score
from .precision_recall import precision_recall


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
