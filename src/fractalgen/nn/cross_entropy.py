"""Cross-entropy against tied output tables, computed in row chunks (a fused linear cross-entropy).

The pixel heads score every pixel that reaches them against 256 values per channel: at batch 32
that is a (3, 32768, 256) logit tensor, its softmax and its gradient, 100 MB each, written once
and read once. Here each chunk of rows is scored and its gradient formed while it is still in
cache; the forward keeps its inputs and the log-normaliser per row, not the logits, and the backward
recomputes each chunk's logits (one extra matmul, a few percent of the head's work). First-order
gradients only (once_differentiable): nothing in the project differentiates twice.
"""
import torch
from torch.autograd.function import once_differentiable

from .precision import fp32_island

CHUNK_ROWS = 1024  # rows per chunk on a CPU: 3 x 1024 x 256 fp32 logits, 3 MB, stay in its caches
# On a GPU the cost is one launch per chunk and per op, not cache misses: chunks as large as a memory
# budget allows (3 x 32768 x 256 fp32 logits, 100 MB) keep a FractalAR-64 step to a few launches.
CHUNK_ROWS_GPU = 32768


def chunk_rows(device_type: str) -> int:
    """Rows per chunk for tensors on a device of this type ("cpu", "cuda", ...)."""
    return CHUNK_ROWS if device_type == "cpu" else CHUNK_ROWS_GPU


def tied_cross_entropy(h: torch.Tensor, table: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                       chunk: int | None = None) -> torch.Tensor:
    """Cross-entropy (nats) of logits = h @ table^T + bias at `targets`, per channel and row.

    h (T, M, W), table (T, V, W), bias (T, 1, V), targets (T, M) int64 -> (T, M): equal to
    cross_entropy(baddbmm(bias, h, table^T), targets) without the (T, M, V) logits in memory.
    `chunk`: rows at a time (None: chunk_rows for h's device).
    """
    chunk = chunk if chunk is not None else chunk_rows(h.device.type)
    with fp32_island(h.device.type):  # the caller hands fp32 tensors; autocast must not lower the matmuls
        return _TiedCrossEntropy.apply(h, table, bias, targets, chunk)


class _TiedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, table, bias, targets, chunk):
        T, M, _ = h.shape
        lse, picked = h.new_empty(T, M), h.new_empty(T, M)
        for rows in _chunks(M, chunk):
            logits = torch.baddbmm(bias, h[:, rows], table.transpose(1, 2))  # (T, m, V)
            lse[:, rows] = logits.logsumexp(-1)
            picked[:, rows] = logits.gather(2, targets[:, rows, None]).squeeze(2)
        ctx.save_for_backward(h, table, bias, targets, lse)
        ctx.chunk = chunk
        return lse - picked

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, table, bias, targets, lse = ctx.saved_tensors
        with fp32_island(h.device.type):
            return _tied_backward(h, table, bias, targets, lse, grad, ctx.chunk)


def _tied_backward(h, table, bias, targets, lse, grad, chunk):
    grad_h = torch.empty_like(h)
    grad_table = torch.zeros_like(table)
    grad_bias = torch.zeros_like(bias)
    for rows in _chunks(h.shape[1], chunk):
        # d ce / d logits = softmax - onehot(target), scaled by the incoming gradient per row.
        g = torch.baddbmm(bias, h[:, rows], table.transpose(1, 2)).sub_(lse[:, rows, None]).exp_()
        g.scatter_add_(2, targets[:, rows, None], torch.full_like(lse[:, rows, None], -1.0))
        g.mul_(grad[:, rows, None])
        grad_h[:, rows] = torch.bmm(g, table)
        grad_table.baddbmm_(g.transpose(1, 2), h[:, rows])
        grad_bias += g.sum(1, keepdim=True)
    return grad_h, grad_table, grad_bias, None, None


def _chunks(n: int, size: int):
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]
