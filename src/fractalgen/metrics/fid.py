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
from typing import Any

import numpy as np

from ..errors import UserError
from ..files import atomic_write
from ..npz import NpzArchive


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
    arrays: dict[str, Any] = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.count is not None:
        arrays["count"] = np.int64(stats.count)
    if stats.feature_net:
        arrays["feature_net"] = np.str_(stats.feature_net)
    if stats.features is not None:
        arrays["features"] = stats.features
    atomic_write(lambda f: np.savez(f, **arrays), path)  # a failure is one WriteError line


def load_statistics(path) -> Statistics:
    """Read `mu`/`sigma` (and our optional fields) from an .npz, without unpickling anything."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"statistics file not found: {path}")
    with NpzArchive(path) as archive:  # only these members are read, each after its shape is checked
        if "mu" not in archive or "sigma" not in archive:
            raise UserError(f"{path} is not a statistics file: it needs 'mu' and 'sigma' arrays "
                            f"(it has: {', '.join(archive.members) or 'nothing'})")
        shapes = {name: archive.header(name) for name in ("mu", "sigma", "count", "feature_net", "features")
                  if name in archive}
        (mu_shape, _), (sigma_shape, _) = shapes["mu"], shapes["sigma"]
        if len(mu_shape) != 1 or sigma_shape != (mu_shape[0], mu_shape[0]):
            raise UserError(f"{path}: mu {mu_shape} and sigma {sigma_shape} do not fit together")
        if "features" in shapes and (len(shapes["features"][0]) != 2 or shapes["features"][0][1] != mu_shape[0]):
            raise UserError(f"{path}: stored features {shapes['features'][0]} do not match mu {mu_shape}")
        for name, (shape, dtype) in shapes.items():
            kind = {"count": "iu", "feature_net": "U"}.get(name, "fiu")
            if dtype.kind not in kind or (name in ("count", "feature_net") and shape != ()):
                raise UserError(f"{path}: {name!r} has the wrong type or shape ({dtype} {shape})")
        mu, sigma = archive.read("mu").astype(np.float64), archive.read("sigma").astype(np.float64)
        count = int(archive.read("count")) if "count" in archive else None
        feature_net = str(archive.read("feature_net")) if "feature_net" in archive else None
        features = archive.read("features") if "features" in archive else None
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path}: mu or sigma holds non-finite values (NaN or infinity)")
    return Statistics(mu=mu, sigma=sigma, count=count, feature_net=feature_net, features=features)
