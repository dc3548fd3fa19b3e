"""Feature networks: uint8 images in, feature vectors (and, if the network has them, class logits) out.

Every metric here works on features from any such network: the FID Inception network for
ImageNet-style numbers (inception.py), the small MNIST classifier for a "classifier FID" on
digits, or any function a user or a test supplies.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ..errors import UserError


class FeatureNet:
    """`net(images uint8 (B, C, H, W), with_logits) -> (features (B, D), logits (B, K) or None)`."""

    name: str = "features"
    has_logits: bool = False
    no_logits_reason: str = "this feature network has no classifier output"

    def __call__(self, images: torch.Tensor, with_logits: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


class FunctionFeatureNet(FeatureNet):
    """Wrap plain functions: `features(images) -> (B, D)`, optional `logits(images) -> (B, K)`."""

    def __init__(self, name: str, features: Callable, logits: Callable | None = None):
        self.name, self._features, self._logits = name, features, logits
        self.has_logits = logits is not None

    @torch.no_grad()
    def __call__(self, images, with_logits=True):
        logits = self._logits(images) if with_logits and self._logits is not None else None
        return self._features(images), logits


def mnist_classifier_net(model=None) -> FeatureNet:
    """The small MNIST classifier (`fractalgen.classifier`, e.g. `load_mnist_classifier()`): its (N, 128)
    penultimate activations as features (a "classifier FID", common practice for digits) and its 10 logits
    (a classifier Inception Score). Not comparable with Inception-based numbers."""
    from .. import classifier

    model = model if model is not None else _bundled_classifier()
    return FunctionFeatureNet("mnist-classifier", lambda images: classifier.features(images, model),
                              lambda images: model(classifier.prepare(images)))


def _bundled_classifier():
    """Deprecated (goes away in the next release): `mnist_classifier_net()` without a model."""
    warnings.warn("mnist_classifier_net() without a model is deprecated: pass "
                  "fractalgen.classifier.load_mnist_classifier()", DeprecationWarning, stacklevel=3)
    from ..classifier import load_mnist_classifier

    return load_mnist_classifier()


@contextlib.contextmanager
def exact_fp32(device: torch.device):
    """Plain fp32 inside, as the reference statistics were computed: no TF32 in CUDA matmuls and
    convolutions (cuDNN allows TF32 convolutions by default on Ampere and later, which moves the
    features), and no caller's autocast. The settings are restored on the way out."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9: reading the legacy flags after this API errs
        settings: list[tuple[Any, str, Any]] = [(matmul, "fp32_precision", "ieee"),
                                                (conv.conv, "fp32_precision", "ieee")]  # type: ignore[attr-defined]
    else:
        settings = [(matmul, "allow_tf32", False), (conv, "allow_tf32", False)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def extract(net: FeatureNet, batches: Iterable[torch.Tensor], want_logits: bool = True,
            on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Run the network over uint8 batches: features (N, D) float64, logits (N, K) float64 or None."""
    features, logits = [], []
    for images in batches:
        with exact_fp32(images.device):  # every network: TF32 would move features on a GPU
            f, lg = net(images, with_logits=want_logits)
        features.append(f.detach().double().flatten(1).cpu().numpy())  # some nets return (B, D, 1, 1)
        if want_logits and lg is not None:
            logits.append(lg.detach().double().cpu().numpy())
        if on_batch is not None:
            on_batch(images.shape[0])
    if not features:
        raise UserError("no images to compute features of")
    return np.concatenate(features), (np.concatenate(logits) if logits else None)
