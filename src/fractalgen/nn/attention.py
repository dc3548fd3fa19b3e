"""Multi-head attention over whole sequences through PyTorch's fused SDPA (one-token decoding: decode.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import fp32_island, fp32_or_wider
from .rotary import apply_rotary


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x, causal=False, rotary=None, queries=None):
        """x (B, T, D) -> (B, T, D); with `queries` (see select_tokens) only those outputs (B, K, D)."""
        B, T, D = x.shape
        if queries is None:
            q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).unbind(2)  # each (B, T, H, hd)
        else:
            # Outputs are read only at `queries`: project queries there, keys/values for every token
            # (the same weights, split by rows, so checkpoints are unchanged).
            assert rotary is None and not causal, "queries: plain bidirectional attention only"
            w, b = self.qkv.weight, self.qkv.bias
            q = F.linear(select_tokens(x, queries), w[:D], None if b is None else b[:D])
            q = q.unflatten(-1, (self.heads, D // self.heads))  # (B, K, H, hd)
            k, v = F.linear(x, w[D:], None if b is None else b[D:]).view(B, T, 2, self.heads, -1).unbind(2)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        # fp32 island: the checkpoints were trained with fp32 attention logits; SDPA never
        # materialises the (T, T) score/bias tensors the official code builds.
        with fp32_island(x.device.type):
            out = F.scaled_dot_product_attention(
                fp32_or_wider(q), fp32_or_wider(k), fp32_or_wider(v), is_causal=causal,
                dropout_p=self.attn_dropout if self.training else 0.0,
            ).to(x.dtype)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D)))


def select_tokens(x: torch.Tensor, queries) -> torch.Tensor:
    """Tokens of x (B, T, D) at `queries`: a slice of positions, or positions per row (B, K) -> (B, K, D)."""
    if isinstance(queries, slice):
        return x[:, queries]
    return x.gather(1, queries[..., None].expand(-1, -1, x.shape[-1]))
