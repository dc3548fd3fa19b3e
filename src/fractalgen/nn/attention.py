"""Multi-head attention over whole sequences through PyTorch's fused SDPA (one-token decoding: decode.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .dropout import Dropout, dropout
from .precision import fp32_island, fp32_or_wider
from .rotary import apply_rotary


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, bias: bool, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.attn_dropout = attn_dropout
        self.proj_drop = Dropout(proj_dropout, inplace=True)  # on the projection's fresh output

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
            q, k, v = fp32_or_wider(q), fp32_or_wider(k), fp32_or_wider(v)
            if self.training and self.attn_dropout > 0.0 and x.device.type == "cpu":
                out = attention_with_dropout(q, k, v, causal, self.attn_dropout)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                     dropout_p=self.attn_dropout if self.training else 0.0)
            out = out.to(x.dtype)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D)))


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) with dropout p on the probabilities, times v: (B, H, Tq, hd) -> (B, H, Tq, hd).

    What SDPA computes with dropout_p = p, written out for CPU training: there SDPA falls back to
    its unfused path for any nonzero dropout and draws the mask with `bernoulli_`; this path draws
    it as `dropout` does, for a fraction of the cost. The (Tq, Tk) probabilities are materialised either way.
    """
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)  # (B, H, Tq, Tk)
    if causal:  # as SDPA's is_causal: query i sees keys <= i (top-left aligned)
        Tq, Tk = scores.shape[-2:]
        future = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill_(future, float("-inf"))
    # Not in place: softmax's backward reads its output.
    return torch.matmul(dropout(scores.softmax(-1), p), v)


def select_tokens(x: torch.Tensor, queries) -> torch.Tensor:
    """Tokens of x (B, T, D) at `queries`: a slice of positions, or positions per row (B, K) -> (B, K, D)."""
    if isinstance(queries, slice):
        return x[:, queries]
    return x.gather(1, queries[..., None].expand(-1, -1, x.shape[-1]))
