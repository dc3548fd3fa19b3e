"""Frechet distance between two Gaussians fitted to features, and the statistics files that hold them.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

Statistics files are `.npz` with `mu` (D,) and `sigma` (D, D), the format of the authors'
reference statistics (`adm_in64_stats.npz`, `adm_in256_stats.npz`) and of torch-fidelity.
Ours may also carry `feature_net` (which network made them), `count` (how many images) and
`features` (a float16 subset of the raw features, which precision/recall needs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write


@dataclass
class Statistics:
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    count: int | None = None
    feature_net: str | None = None  # None: unknown (e.g. the authors' files)
    features: np.ndarray | None = None  # (M, D) raw features kept for precision/recall

    @property
    def dim(self) -> int:
        return self.mu.shape[0]


def statistics(features: np.ndarray, feature_net: str | None = None, keep: int = 0, seed: int = 0) -> Statistics:
    """Mean and unbiased covariance of (N, D) features; `keep` > 0 stores a random subset of them."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise UserError(f"need at least 2 feature vectors to estimate a covariance, got shape {features.shape}")
    kept = None
    if keep > 0:
        rows = np.random.default_rng(seed).permutation(features.shape[0])[:keep]
        kept = features[np.sort(rows)].astype(np.float16)  # half the bytes; the k-NN radii do not need more
    return Statistics(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False), count=features.shape[0],
                      feature_net=feature_net, features=kept)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    tr((S1 S2)^(1/2)) = tr((A S2 A)^(1/2)) with A = S1^(1/2): A S2 A is symmetric positive
    semi-definite, so its square root's trace is the sum of the square roots of its eigenvalues
    (eigh, tiny negative round-off clipped to 0). No complex parts to discard, unlike sqrtm(S1 S2).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise UserError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
                        f"{sigma2.shape} (were they made with the same feature network?)")
    sqrt_sigma1 = _sqrt_psd(sigma1)
    middle = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    middle = (middle + middle.T) / 2  # exact symmetry for eigh
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0, None)).sum()
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    return float(max(distance, 0.0))  # never negative; round-off can take identical sets to -1e-9 * trace


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def fid_from_statistics(a: Statistics, b: Statistics) -> float:
    if a.feature_net and b.feature_net and a.feature_net != b.feature_net:
        raise UserError(f"the statistics come from different feature networks ({a.feature_net} vs "
                        f"{b.feature_net}): their FID would mean nothing")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


# ---- files ---------------------------------------------------------------------------------

def save_statistics(stats: Statistics, path) -> None:
    """Write a statistics .npz atomically; refuses to replace an existing file."""
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"statistics files end in .npz: {path}")
    if path.exists():
        raise UserError(f"{path} exists: not overwriting it (choose another --out or remove it)")
    arrays = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.count is not None:
        arrays["count"] = np.int64(stats.count)
    if stats.feature_net:
        arrays["feature_net"] = np.str_(stats.feature_net)
    if stats.features is not None:
        arrays["features"] = stats.features
    try:
        atomic_write(lambda f: np.savez(f, **arrays), path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def load_statistics(path) -> Statistics:
    """Read `mu`/`sigma` (and our optional fields) from an .npz, without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"statistics file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise UserError(f"{path} is not a statistics file: it needs 'mu' and 'sigma' arrays "
                                f"(it has: {', '.join(data.files) or 'nothing'})")
            mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
            count = int(data["count"]) if "count" in data else None
            feature_net = str(data["feature_net"]) if "feature_net" in data else None
            features = data["features"] if "features" in data.files else None
    except UserError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects ...
        raise UserError(f"cannot read statistics {path}: {str(e).splitlines()[0][:200]}") from None
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise UserError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    if features is not None and (features.ndim != 2 or features.shape[1] != mu.size):
        raise UserError(f"{path}: stored features {features.shape} do not match mu {mu.shape}")
    return Statistics(mu=mu, sigma=sigma, count=count, feature_net=feature_net, features=features)
