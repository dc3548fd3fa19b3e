"""Precision: the one policy (`PRECISIONS`, `precision_context`) and the fp32 islands it cannot lower.

Training and sampling take `precision`: "fp32", "bf16" (bf16 autocast: weights stay fp32, the
islands below stay fp32) or "auto" (bf16 on CUDA GPUs that compute it natively, compute
capability 8.0 on, as the authors train and sample; fp32 elsewhere, because bf16 changes the
numbers the fp32 recipe gives and is slow where it is emulated, as on CPUs without bf16
instructions; inside a caller's own autocast, auto keeps it).

The checkpoints were trained with fp32 attention logits and fp32 pixel logits. Autocast
lists SDPA and the batched matmuls among its reduced-precision ops, so an explicit `.float()` in
front of them is cast straight back to bf16 when the caller runs under autocast. Code inside
`fp32_island` runs with autocast off, on the fp32 tensors it is handed. (On CPUs this also avoids
the bf16 flash-attention backward, several times slower than the fp32 one.)
"""
import contextlib

import torch

from ..errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


class PrecisionError(UserError, ValueError):
    """An unknown precision, or bf16 asked of a GPU without it."""


def resolve_precision(precision: str, device) -> str:
    """"fp32" or "bf16": what `precision` means on `device` (a torch.device or its name)."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        native = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
        return "bf16" if native else "fp32"
    if precision == "bf16" and device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise PrecisionError("this GPU cannot run bf16: use precision fp32 (--precision fp32)")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # torch emulates bf16 there (V100, T4): slower than fp32, with bf16's rounding
            raise PrecisionError(f"this GPU (compute capability {major}.{minor}) only emulates bf16, slower than "
                                 "fp32: use precision fp32 (--precision fp32), or auto")
    return precision


def _keeps_callers_autocast(precision: str, device_type: str) -> bool:
    """auto inside a caller's own autocast leaves it as it is (their dtype, e.g. fp16)."""
    return precision == "auto" and torch.is_autocast_enabled(device_type)


def precision_in_effect(precision: str, device) -> str:
    """What `precision_context` runs: "fp32", "bf16", or the caller's own autocast dtype ("bf16", "fp16")
    when auto keeps it. For records and reports."""
    device_type = torch.device(device).type
    if _keeps_callers_autocast(precision, device_type):
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(torch.get_autocast_dtype(device_type), "other")
    return resolve_precision(precision, device)


def precision_context(precision: str, device):
    """The autocast context that runs code at `precision` on `device`. fp32 and bf16 hold whatever
    the caller had on; auto keeps a caller's own autocast."""
    device_type = torch.device(device).type
    if _keeps_callers_autocast(precision, device_type):
        return contextlib.nullcontext()
    bf16 = resolve_precision(precision, device) == "bf16"
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """t in fp32, or as it is when already wider (float64: the lossless codec's coding pass)."""
    # Checked here rather than by t.float(), which is a no-op for fp32 but still a dispatched call,
    # and decoding makes tens of thousands of these per image.
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def fp32_island(device_type: str):
    """A context in which autocast is off for `device_type` (a no-op when it was not on)."""
    if torch.is_autocast_enabled(device_type):  # the device argument needs torch >= 2.4
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
