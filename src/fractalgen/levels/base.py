"""What every generator level shares: the contract (`Level`), patchify/unpatchify, pixel
normalisation, the level output."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import LevelConfig
from ..sampling import Known, SampleContext

# next_level(conds, guidance, known) -> (values (M, C, p, p) raw, log-probabilities (M,)): the
# recursion below a level, handed down by the model (see FractalModel._sample_level).
NextLevel = Callable[[list, torch.Tensor, "Known | None"], "tuple[torch.Tensor, torch.Tensor]"]


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
        self._tables = {}  # (values per channel, device) -> (mean, std) per value; not weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = len(self.mean)
        k = x.shape[-1] // C  # values per channel (p*p for patches, 1 for pixels)
        # Built once per shape and device: the samplers normalise one patch per step.
        if (k, x.device) not in self._tables:
            with torch.inference_mode(False):  # kept for training too: never inference tensors from a sampler
                self._tables[k, x.device] = (torch.tensor(self.mean, device=x.device).repeat_interleave(k),
                                             torch.tensor(self.std, device=x.device).repeat_interleave(k))
        mean, std = self._tables[k, x.device]
        return (x / 255.0 - mean) / std


class Level(nn.Module):
    """The contract of a generator level: one kind per file in levels/, registered in LEVEL_KINDS.

    A level is built from its LevelConfig alone. It models a square of `config.size` pixels as a
    grid of `config.patch_size` patches and hands every patch, with its conditions, to the next
    level: in training (`forward_train`) and when sampling (`sample`).
    """

    def __init__(self, config: LevelConfig):
        super().__init__()
        self.config = config

    def forward_train(self, x: torch.Tensor, conds: list[torch.Tensor], mask_spec="train",
                      weighted: bool = True, guide_target: torch.Tensor | None = None) -> LevelOutput:
        """x (B, C, S, S) raw values, conds list of (B, cond_width) -> what goes to the next level.

        mask_spec (MAR levels): "train", "uniform", "eval", "all" or a bool (B, N) tensor, True = masked.
        weighted: training loss weights (False: the plain likelihood-mode mean).
        guide_target (levels with a guiding pixel, tests): its targets (B, C) instead of drawn ones.
        """
        raise NotImplementedError

    def sample(self, conds: list[torch.Tensor], guidance: torch.Tensor, ctx: SampleContext, known: Known | None,
               next_level: NextLevel):
        """Generate B squares -> raw values (B, C, S, S) and the log-probability of what was drawn (B,).

        conds: list of (R, cond_width) with R = 2B when ctx.guided (conditional rows, then the
        unconditional ones); guidance (B,): the guidance scale of each row, handed down;
        known: given content (None: nothing known). The settings at this level ride in ctx:
        ctx.steps (MAR), ctx.schedule (level 0's guidance by progress), ctx.level_on_step (level 0).
        """
        raise NotImplementedError


@dataclass
class LevelOutput:
    """What a level hands to the next one in training/likelihood mode."""

    x: torch.Tensor  # (M, C, p, p) raw values of the patches that go down
    conds: list[torch.Tensor]  # conditions for those patches, each (M, width)
    parent: torch.Tensor  # (M,) row of this level's batch each patch came from
    # (B,) the loss of the level's own prediction per row: a MAR level's guiding pixel (None without
    # one), the pixel head's values (the last level)
    nll: torch.Tensor | None = None


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
