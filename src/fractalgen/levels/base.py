"""What every generator level shares: patchify/unpatchify, pixel normalisation, the level output."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, S, S) -> (B, N, C*p*p): raster order over the grid, channel-major inside a patch."""
    B, C, S, _ = x.shape
    g = S // p
    x = x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
    return x.reshape(B, g * g, C * p * p)


def unpatchify(x: torch.Tensor, p: int, channels: int) -> torch.Tensor:
    """(B, N, C*p*p) -> (B, C, S, S), the inverse of patchify."""
    B, N, _ = x.shape
    g = int(round(N**0.5))
    x = x.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, g, p, g, p)
    return x.reshape(B, channels, g * p, g * p)


class Normalize(nn.Module):
    """Raw values 0..255 -> (v/255 - mean) / std, per channel, for tensors whose last dim is C*k."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = tuple(mean), tuple(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = len(self.mean)
        k = x.shape[-1] // C  # values per channel (p*p for patches, 1 for pixels)
        mean = torch.tensor(self.mean, device=x.device).repeat_interleave(k)
        std = torch.tensor(self.std, device=x.device).repeat_interleave(k)
        return (x / 255.0 - mean) / std


@dataclass
class LevelOutput:
    """What a level hands to the next one in training/likelihood mode."""

    x: torch.Tensor  # (M, C, p, p) raw values of the patches that go down
    conds: list[torch.Tensor]  # conditions for those patches, each (M, width)
    parent: torch.Tensor  # (M,) row of this level's batch each patch came from
    guide_nll: torch.Tensor | None = None  # (B,) guiding-pixel loss per row, if the level has one


def complete_conds(conds: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """A level consuming n conditions from a parent that gives fewer (level 0, or an AR parent) repeats the first."""
    return conds[:n] + [conds[0]] * (n - len(conds))


def init_weights(module: nn.Module):
    """Xavier-uniform linears with zero bias, N(0, 0.02) embeddings/tokens, unit norms (the official init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
