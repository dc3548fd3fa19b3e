"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), mean and std over splits.

The images are cut into `splits` consecutive chunks (no shuffling, as torch-fidelity and the
ADM evaluator do); p(y) is the mean prediction within a chunk.
"""
from __future__ import annotations

import numpy as np


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """(mean, std) of the score over `splits` chunks of (N, K) classifier logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < splits or splits < 1:
        raise ValueError(f"need (N, K) logits with N >= splits ({splits}), got shape {logits.shape}")
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
