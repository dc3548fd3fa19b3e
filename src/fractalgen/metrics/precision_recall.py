"""Improved precision and recall (Kynkaanniemi et al. 2019), the k-nearest-neighbour method, k = 3.

Each set of features approximates its manifold by a union of balls: around every point, a
ball reaching its k-th nearest neighbour within the same set. Precision is the fraction of
generated points inside the real manifold; recall the fraction of real points inside the
generated one.
"""
from __future__ import annotations

import numpy as np
import torch


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 1000,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """(precision, recall) of `fake` (M, D) features against `real` (N, D) features."""
    real_t = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    fake_t = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if real_t.shape[0] <= k or fake_t.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set "
                         f"(got {real_t.shape[0]} real, {fake_t.shape[0]} generated)")
    real_radii = knn_radii(real_t, k, batch_size)
    fake_radii = knn_radii(fake_t, k, batch_size)
    precision = coverage(fake_t, real_t, real_radii, batch_size)
    recall = coverage(real_t, fake_t, fake_radii, batch_size)
    return precision, recall


def knn_radii(points: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest neighbour among the others."""
    radii = []
    for batch in points.split(batch_size):
        distances = torch.cdist(batch, points)  # (b, N), includes the point itself at distance 0
        radii.append(distances.topk(k + 1, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def coverage(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    """Fraction of queries inside at least one ball (point, radius)."""
    inside = []
    for batch in queries.split(batch_size):
        distances = torch.cdist(batch, points)  # (b, N)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside).double().mean().item()
