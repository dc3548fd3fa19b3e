"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

The images are shuffled with a fixed seed, then cut into `splits` chunks; p(y) is the mean
prediction within a chunk. The shuffle matters: `evaluate` writes images sorted by class, and
a chunk holding few classes has a low score (torch-fidelity shuffles the same way, seed 2020).
"""
from __future__ import annotations

import numpy as np

SHUFFLE_SEED = 2020


def inception_score(logits: np.ndarray, splits: int = 10, shuffle: bool = True) -> tuple[float, float]:
    """(mean, population std) of the score over `splits` chunks of (N, K) classifier logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(f"need (N, K) logits with N >= splits ({splits}), got shape {logits.shape}")
    if shuffle:
        logits = logits[np.random.RandomState(SHUFFLE_SEED).permutation(len(logits))]
    log_p = logits - _logsumexp(logits)  # log p(y|x), (N, K)
    scores = []
    for chunk in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(chunk).mean(axis=0, keepdims=True))  # log p(y), (1, K)
        kl = (np.exp(chunk) * (chunk - log_marginal)).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))
