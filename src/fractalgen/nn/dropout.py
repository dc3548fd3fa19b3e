"""Dropout whose keep mask costs a third as much to draw on a CPU.

torch's CPU dropout draws its mask with `bernoulli_`, several times slower per element than the
raw random bits behind it, and a MAR training step spent about an eighth of its time there (the
level-1 MLP alone drops out tens of millions of activations per step). Here each element is kept
when 31 random bits of its own, read as an integer u in [0, 2^31), fall below round(q * 2^31),
q = 1 - p: an independent Bernoulli(q) mask (q to within 2^-32; torch's fp32 uniform has steps
of 2^-24), scaled by 1/q as in torch's dropout, so the expected output is the input. The bits
come 63 at a time (one int64 draw per two elements) and become the fp32 noise (0 or 1/q) in place,
with integer operations only. Other dtypes draw a uniform in [0, 1) instead; off a CPU torch's
own fused kernel is used.
"""
import struct

import torch
import torch.nn as nn
import torch.nn.functional as F


def keep_noise_fp32(shape, keep: float, device=None) -> torch.Tensor:
    """fp32 noise of `shape`: 1/keep with probability keep, else 0, independently per element."""
    noise = torch.empty(shape, dtype=torch.float32, device=device)
    flat = noise.view(-1)
    n = flat.numel()
    # int64 draws are uniform on [0, 2^63): per element either the low half (32 random bits) or
    # the high half (31 random bits, top bit 0). An odd last element gets an int32 draw, [0, 2^31).
    flat[: n - n % 2].view(torch.int64).random_()
    if n % 2:
        flat[-1:].view(torch.int32).random_()
    scale_bits = struct.unpack("<i", struct.pack("<f", 1.0 / keep))[0]  # the fp32 1/keep, as an int32
    u = flat.view(torch.int32).bitwise_and_(0x7FFFFFFF)  # 31 uniform bits: u in [0, 2^31)
    # u - threshold is negative exactly when the element is kept: shifted right by 31 it is all
    # ones (kept) or 0, and masking 1/keep's bits with it leaves the fp32 1/keep or 0.
    u.sub_(round(keep * 2**31)).bitwise_right_shift_(31).bitwise_and_(scale_bits)
    return noise


def dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """x with each element zeroed with probability p, the others scaled by 1/(1-p); x itself
    when not training or p is 0. `inplace` writes into x (unless x is a view): only for a fresh
    intermediate whose backward does not read it (a linear layer's or GELU's output, not a softmax's)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True, inplace=inplace)
    keep = 1.0 - p
    if keep <= 0.0:
        return x.mul_(0.0) if inplace else x.mul(0.0)
    if x.dtype == torch.float32:
        noise = keep_noise_fp32(x.shape, keep, x.device)
    else:  # a uniform in fp32 (or float64): a bf16 uniform has only 2^-8 steps, too coarse for q
        draw_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        noise = torch.empty(x.shape, dtype=draw_dtype, device=x.device).uniform_().lt_(keep)  # 1 kept, 0 dropped
        noise = noise.to(x.dtype).div_(keep)  # 0 or 1/q, in x's dtype as torch's dropout scales it
    # In place only on a tensor that is not a view (a linear layer's 3-D output is one): autograd would
    # rebuild the view's base in the backward, a copy and a zero fill costlier than the write saved.
    return x.mul_(noise) if inplace and not x._is_view() else x * noise


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, `inplace`, modes) drawing its mask with `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inplace)
