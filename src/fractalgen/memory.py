"""How much memory this process may still take: the one answer every size check compares with.

On the CPU it is the smaller of the memory the system has available (MemAvailable in /proc/meminfo)
and what this process's address-space limit (RLIMIT_AS, as `ulimit -v` sets it) leaves; on a CUDA
device, what the driver reports free. Where none of them can be read (another OS, another kind of
device) the answer is None and the callers skip their check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Room:
    """Bytes a new allocation may take, and where that figure comes from (for the error line)."""

    bytes: int
    source: str  # "of memory available (MemAvailable)", ...


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def proc_field(path: str, name: str) -> int | None:
    """A "Name:  1234 kB" line of a /proc file, in bytes; None where there is no such file or line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def address_space_left() -> int | None:
    """What the soft RLIMIT_AS leaves of this process's address space; None when it is unlimited."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    return max(0, soft - (proc_field("/proc/self/status", "VmSize") or 0))


def host_room() -> Room | None:
    """The memory a CPU allocation may take: the smallest of the figures this system gives."""
    found = []
    available = proc_field("/proc/meminfo", "MemAvailable")
    if available is not None:
        found.append(Room(available, "of memory available (MemAvailable)"))
    else:
        try:
            found.append(Room(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of physical memory"))
        except (AttributeError, ValueError, OSError):
            pass
    left = address_space_left()
    if left is not None:
        found.append(Room(left, "left under this process's address-space limit (RLIMIT_AS)"))
    return min(found, key=lambda room: room.bytes) if found else None


def device_room(device) -> Room | None:
    """The memory an allocation on `device` (a torch device or its name) may take; None where unknown."""
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return host_room()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return Room(free, f"free on {device}")
    return None
