"""One-token decoding for the samplers: a static key/value cache and each block's step.

A sampler feeds one token per row per step, so every matmul has a few rows (the batch) against a
whole weight matrix, and every step runs the same few dozen small kernels. Two things make such a
step cheap, and both are set up once per generation rather than per step:
- `Projection`: a small linear layer's weight transposed to (in, out) and contiguous. The matrix
  library then streams it as it is; with the (out, in) layout of nn.Linear it repacks the whole
  matrix at every call, which for a few rows costs about a third of the product.
- `KVCache`: keys and values of every position a generation reaches, allocated once per generation
  and batch size; a step writes one slot and attends over the slots written so far.
Rotary embedding turns queries, keys and values in one product (values by 1).

A step's position t is a Python int in eager decoding: it attends over the t + 1 slots written. As an int64
tensor (1,) every shape is the same at every position (the step attends over all slots, those
after t masked out), so `sampling.compiled` builds one graph for all positions (on CUDA, one graph
replayed), as gpt-fast does for language models.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention
from .blocks import LlamaBlock, ViTBlock
from .precision import fp32_island
from .rotary import rotate


def step_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a decode step's matmuls run in: autocast's when it is on (bf16 sampling), else the weight's."""
    device_type = weight.device.type
    if weight.dtype == torch.float32 and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


# Weights up to this many elements are laid out for decoding; larger ones are read where they are, so
# a generation never holds a second copy of a large model's weights (the repacking matters less
# for them: it is paid once per call against a product that is larger too).
LAYOUT_LIMIT = 2**17


class Projection:
    """x (R, in) -> x W^T + b, from an nn.Linear's weight and bias, for decode steps (never trained).
    Small weights are copied once per generation to (in, out), contiguous, in the step's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        w = weight.detach().t()
        if weight.numel() <= LAYOUT_LIMIT:
            w = w.to(step_dtype(weight)).contiguous()
        self.w, self.b = w, None if bias is None else bias.detach()

    @classmethod
    def of(cls, linear: nn.Linear) -> Projection:
        return cls(linear.weight, linear.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w if self.b is None else torch.addmm(self.b, x, self.w)


class KVCache:
    """Keys and values of up to max_len positions of R sequences: (2, R * H, max_len, head_dim), keys
    then values, allocated once. Stored as attention reads them (fp32, or float64 in the codec's
    coding pass): under bf16 autocast each key and value is cast once, when written."""

    def __init__(self, rows: int, heads: int, max_len: int, head_dim: int, device=None,
                 dtype: torch.dtype = torch.float32):
        self.rows, self.heads, self.max_len = rows, heads, max_len
        self.kv = torch.zeros(2, rows * heads, max_len, head_dim, device=device, dtype=dtype)
        self.slots = self.kv.view(2, rows, heads, max_len, head_dim)  # the same memory, by row and head
        self.positions = torch.arange(max_len, device=device)

    def write(self, t: int | torch.Tensor, kv: torch.Tensor) -> None:
        """Store one token's keys and values, kv (R, 2, H, head_dim), at position t (an int, or a tensor (1,))."""
        if isinstance(t, int):
            self.slots[:, :, :, t] = kv.transpose(0, 1)
        else:  # the view made here: a compiled step given `kv` and `slots` would get two inputs sharing memory
            self.kv.view(self.slots.shape).index_copy_(3, t, kv.transpose(0, 1).unsqueeze(3))

    def attend(self, q: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Scaled queries (R * H, 1, head_dim) at position t over positions 0..t -> (R * H, 1, head_dim).

        Written out rather than through SDPA: for one query, a score row, a softmax and a weighted
        sum of values are three kernels, and SDPA's fixed cost per call is more than their arithmetic.
        In fp32 (or float64) whatever the autocast: the checkpoints were trained with fp32 attention logits.
        A tensor t scores every slot and masks those after t (their weights are exactly 0).
        """
        k, v = (self.kv[:, :, : t + 1] if isinstance(t, int) else self.kv).unbind(0)
        with fp32_island(q.device.type):
            scores = torch.bmm(q.to(k.dtype), k.transpose(1, 2))
            if not isinstance(t, int):
                scores = scores.masked_fill(self.positions > t, float("-inf"))
            return torch.bmm(torch.softmax(scores, dim=-1), v)


class AttentionStep:
    """An `Attention` layer's one-token step for R rows, with its cache (evaluation only: no dropout)."""

    def __init__(self, attention: Attention, rows: int, max_len: int):
        qkv, proj = attention.qkv, attention.proj
        width = proj.out_features
        self.heads = attention.heads
        head_dim = width // self.heads
        self.scale = head_dim**-0.5
        self.qkv = Projection.of(qkv)
        self.proj = Projection.of(proj)
        w = proj.weight
        self.cache = KVCache(rows, self.heads, max_len, head_dim, w.device,
                             torch.float64 if w.dtype == torch.float64 else torch.float32)

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, turn: torch.Tensor | None = None) -> torch.Tensor:
        """x (R, D) at position t -> (R, D); turn: the rotary turn at t (`rotary_turns`), None without rotary."""
        R, D = x.shape
        H = self.heads
        qkv = self.qkv(x).view(R, 3, H, D // H)
        if turn is not None:
            qkv = rotate(qkv, turn)  # queries and keys turned, values by 1: one kernel for all three
        self.cache.write(t, qkv[:, 1:])
        if isinstance(t, int) and t == 0:
            # One position to attend to: its weight is exactly 1, so the output is exactly its value. (A pixel
            # head's first channel, a third of its steps: four kernels fewer of about thirty.)
            out = qkv[:, 2].reshape(R, D)
        else:
            q = qkv[:, 0] * self.scale  # (R, H, hd): scaled and contiguous in one kernel
            out = self.cache.attend(q.view(R * H, 1, -1), t).view(R, D)
        return self.proj(out if out.dtype == x.dtype else out.to(x.dtype))


def rotary_turns(table: torch.Tensor) -> torch.Tensor:
    """A rotary table (T, head_dim/2, 2) as the decode steps' turns (T, 3, 1, head_dim/2), complex:
    queries and keys turn by cos + i*sin, values by 1."""
    turn = torch.view_as_complex(table)[:, None, None]  # (T, 1, 1, head_dim/2)
    return torch.cat([turn, turn, torch.ones_like(turn)], dim=1)


class LlamaStep:
    """A `LlamaBlock`'s one-token step: RMSNorm, rotary attention, RMSNorm, SwiGLU."""

    def __init__(self, block: LlamaBlock, rows: int, max_len: int):
        self.attn_norm, self.mlp_norm = block.attn_norm, block.mlp_norm
        self.attn = AttentionStep(block.attn, rows, max_len)
        mlp = block.mlp
        self.gate, self.up, self.down = Projection.of(mlp.gate), Projection.of(mlp.up), Projection.of(mlp.down)

    def __call__(self, x: torch.Tensor, t: int | torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm.forward(x), t, turn)
        h = self.mlp_norm.forward(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class ViTStep:
    """A `ViTBlock`'s one-token causal step: LayerNorm, attention, LayerNorm, GELU MLP."""

    def __init__(self, block: ViTBlock, rows: int, max_len: int):
        self.norm1, self.norm2 = block.norm1, block.norm2
        self.attn = AttentionStep(block.attn, rows, max_len)
        self.fc1, self.fc2 = Projection.of(block.mlp.fc1), Projection.of(block.mlp.fc2)

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        x = x + self.attn(self.norm1.forward(x), t)
        return x + self.fc2(F.gelu(self.fc1(self.norm2.forward(x))))
