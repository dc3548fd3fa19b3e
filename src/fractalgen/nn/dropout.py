"""Dropout whose keep mask costs half as much to draw on a CPU.

torch's CPU dropout draws its mask with `bernoulli_`, several times slower per element than a
uniform draw, and a MAR training step spends about an eighth of its time there (the level-1
MLP alone drops out tens of millions of activations per step). Here each element is kept when
a uniform draw in [0, 1) falls below the keep probability q = 1 - p: an independent Bernoulli(q)
mask (to the uniform's resolution, 2^-24 in fp32), scaled by 1/q as in torch's dropout, so the
expected output is the input. Off a CPU torch's own fused kernel is used.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """x with each element zeroed with probability p, the others scaled by 1/(1-p); x itself
    when not training or p is 0. `inplace` writes into x: only for a fresh intermediate whose
    backward does not read it (a linear layer's or GELU's output, not a softmax's)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True, inplace=inplace)
    keep = 1.0 - p
    if keep <= 0.0:
        return x.mul_(0.0) if inplace else x.mul(0.0)
    # The uniform draw in fp32 (or float64): a bf16 uniform has only 2^-8 steps, too coarse for q.
    draw_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    noise = torch.empty(x.shape, dtype=draw_dtype, device=x.device).uniform_().lt_(keep)  # 1 kept, 0 dropped
    noise = noise.to(x.dtype).div_(keep)  # 0 or 1/q, in x's dtype as torch's dropout scales it
    return x.mul_(noise) if inplace else x * noise


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, `inplace`, modes) drawing its mask with `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace)
