"""fp32 islands that autocast cannot lower.

The checkpoints were trained with fp32 attention logits and fp32 pixel logits (SPEC). Autocast
lists SDPA and the batched matmuls among its reduced-precision ops, so an explicit `.float()` in
front of them is cast straight back to bf16 when the caller runs under autocast. Code inside
`fp32_island` runs with autocast off, on the fp32 tensors it is handed. (On CPUs this also avoids
the bf16 flash-attention backward, several times slower than the fp32 one.)
"""
import contextlib

import torch


def fp32_island(device_type: str):
    """A context in which autocast is off for `device_type` (a no-op when it was not on)."""
    if torch.is_autocast_enabled(device_type):  # the device argument needs torch >= 2.4
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
