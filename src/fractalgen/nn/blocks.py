"""The two transformer block styles: LLaMA (AR levels) and pre-LN ViT (MAR levels, pixel heads)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Attention, select_tokens
from .dropout import Dropout
from .precision import fp32_or_wider


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        if x.dtype == self.weight.dtype == torch.float32:  # torch's fused kernel: the same formula, one pass
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = fp32_or_wider(x)  # computed in fp32 (or wider), as the checkpoints expect
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed if normed.dtype == x.dtype else normed.to(x.dtype)) * self.weight


def swiglu_hidden(width: int) -> int:
    """LLaMA's hidden width: 2/3 of 4x, rounded up to a multiple of 256."""
    return -(-int(2 * 4 * width / 3) // 256) * 256


class SwiGLU(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        hidden = swiglu_hidden(width)
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    """RMSNorm, rotary attention without biases, SwiGLU; residual and MLP dropout."""

    def __init__(self, width: int, heads: int, residual_dropout: float, attn_dropout: float):
        super().__init__()
        self.attn_norm = RMSNorm(width)
        self.attn = Attention(width, heads, bias=False, attn_dropout=attn_dropout, proj_dropout=residual_dropout)
        self.mlp_norm = RMSNorm(width)
        self.mlp = SwiGLU(width)
        self.mlp_drop = Dropout(residual_dropout, inplace=True)  # on the MLP's fresh output

    def forward(self, x, rotary):
        x = x + self.attn(self.attn_norm(x), causal=True, rotary=rotary)
        # The MLP on rows (B*T, D): its output is then no view, and the dropout writes into it (see MLP).
        return x + self.mlp_drop(self.mlp(self.mlp_norm(x).flatten(0, -2))).view_as(x)


# Without gradients on a CPU, the MLP runs on pieces of rows whose hidden activations (rows x 4D)
# hold at most this many elements (4 MiB in fp32). Whole, a MAR level's hidden activations are a
# fresh buffer of several MB at every block (9 MB for level 0 of cifar_mar sampling 16 images), whose
# pages the kernel faults in and zeroes every time: about 240,000 page faults per 16 CIFAR samples,
# none in pieces, whose smaller buffers the allocator reuses.
MLP_PIECE_ELEMENTS = 2**20


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = Dropout(dropout, inplace=True)  # on fresh outputs (GELU's backward reads its input)

    def forward(self, x):
        """x (..., D) -> (..., D). Computed on rows (M, D): a linear layer's output on a 3-D input is a
        view, which an in-place dropout cannot write into cheaply (see nn/dropout.py)."""
        rows = x.flatten(0, -2)
        no_grad = not torch.is_grad_enabled()
        piece = max(1, MLP_PIECE_ELEMENTS // self.fc1.out_features)
        # (not inside torch.compile: inductor plans its own buffers, and pieces would make the graph depend on M)
        if no_grad and not torch.compiler.is_compiling() and rows.device.type == "cpu" and rows.shape[0] > piece:
            return torch.cat([self._rows(part, no_grad) for part in rows.split(piece)]).view(x.shape[:-1] + (-1,))
        return self._rows(rows, no_grad).view(x.shape[:-1] + (-1,))

    def _rows(self, rows: torch.Tensor, gelu_in_place: bool) -> torch.Tensor:
        hidden = self.fc1(rows)
        # Without gradients GELU overwrites its input (the same values, one fewer fresh buffer of the MLP's
        # widest activations: a MAR level-1 pass of cifar_mar sampling about 10% faster); with them its
        # backward reads the input.
        hidden = torch.ops.aten.gelu_(hidden) if gelu_in_place else F.gelu(hidden)
        return self.drop(self.fc2(self.drop(hidden)))


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm that applies a gain and bias handed in bf16 in fp32 (or wider), as CUDA's autocast
    does: FSDP under bf16 gathers a block's weights in bf16 (train.shard), and the CPU kernel refuses
    bf16 weights with an fp32 input. fp32 and wider weights are used as they are."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, fp32_or_wider(self.weight), fp32_or_wider(self.bias), self.eps)


class ViTBlock(nn.Module):
    """Pre-LN block: LayerNorm(1e-6), attention with biases, 4x GELU MLP."""

    def __init__(self, width: int, heads: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, bias=True, attn_dropout=attn_dropout, proj_dropout=proj_dropout)
        self.norm2 = LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width, 4 * width, proj_dropout)

    def forward(self, x, causal=False, queries=None):
        """x (B, T, D) -> (B, T, D); with `queries` (a slice, or positions (B, K)) only those outputs (B, K, D)."""
        h = self.norm1(x)
        if queries is not None:  # the residual stream of the tokens whose outputs are read
            x = select_tokens(x, queries)
        x = x + self.attn(h, causal=causal, queries=queries)
        return x + self.mlp(self.norm2(x))
