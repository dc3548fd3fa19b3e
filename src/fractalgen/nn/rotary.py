"""2-D rotary position embedding of the AR levels, as in the authors' code."""
import torch

from .precision import fp32_or_wider


def rotary_table_2d(grid: int, head_dim: int, num_prefix: int, device=None, base: float = 10000.0,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """cos/sin table (num_prefix + grid*grid, head_dim // 2, 2) for a raster-ordered grid.

    The first half of the rotary pairs rotate with the token's row, the second half with its
    column; frequencies base^(-2j/(head_dim/2)), j < head_dim/4. Prefix tokens (the condition
    token) get cos = sin = 0, which zeroes their queries and keys: the official checkpoints
    were trained that way, so we keep it. Computed in `dtype`: fp32, or float64 for the codec.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, device=device)[: half // 2].to(dtype) / half))  # (head_dim/4,)
    pos = torch.arange(grid, device=device, dtype=dtype)
    angles = torch.outer(pos, freqs)  # (grid, head_dim/4)
    grid_angles = torch.cat([
        angles[:, None, :].expand(-1, grid, -1),  # rows
        angles[None, :, :].expand(grid, -1, -1),  # columns
    ], dim=-1).flatten(0, 1)  # (grid*grid, head_dim/2)
    table = torch.stack([grid_angles.cos(), grid_angles.sin()], dim=-1)  # (grid*grid, head_dim/2, 2)
    return torch.cat([torch.zeros(num_prefix, half, 2, device=device, dtype=dtype), table])


def apply_rotary(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (2k, 2k+1) of x (B, T, H, head_dim) by table (T, head_dim/2, 2), in fp32
    (float64 when x is)."""
    return rotate(x, torch.view_as_complex(table)[None, :, None])  # (1, T, 1, head_dim/2)


def rotate(x: torch.Tensor, turn: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (..., head_dim) by complex `turn` (cos + i*sin) broadcastable to
    (..., head_dim/2), or by its real view (..., head_dim/2, 2); in fp32 (float64 when x is)."""
    # As complex numbers, the rotation (a*cos - b*sin, b*cos + a*sin) is one multiplication by
    # cos + i*sin: one kernel instead of ten (it matters when decoding one token at a time).
    pairs = fp32_or_wider(x).unflatten(-1, (-1, 2))
    if not turn.is_complex():  # its real view (..., 2), for compiled steps: inductor has no complex kernels
        a, b, cos, sin = pairs[..., 0], pairs[..., 1], turn[..., 0], turn[..., 1]
        turned = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1).flatten(-2)
    else:
        turned = torch.view_as_real(torch.view_as_complex(pairs) * turn).flatten(-2)
    return turned if turned.dtype == x.dtype else turned.to(x.dtype)
