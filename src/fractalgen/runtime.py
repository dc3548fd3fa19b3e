"""Where the work runs: the device, CPU threads, and the processes of a torchrun launch.

Written once for every command. The library takes a device; its entry points choose CPU threads
for the length of one call (`uses_threads`) by the rule the command line applies to the whole
process (`set_threads`): `choose_threads`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import UserError

# ---- device and threads ------------------------------------------------------------------------

def pick_device(option: str = "auto") -> torch.device:
    """'auto' (CUDA if available, else the CPU), or a torch device name: cpu, cuda, cuda:1 ..."""
    if option == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if option.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {option}: CUDA is not available on this machine")
    try:
        return torch.device(option)
    except RuntimeError:
        raise UserError(f"unknown device {option!r}") from None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def auto_threads() -> int:
    """The 'auto' thread count: the usable CPUs that other work leaves idle, at least 1.

    Why not torch's default (one thread per core): when the cores are busy with other jobs,
    every parallel region of our many small ops waits for a thread the kernel has given to
    someone else (measured: `python -m benchmarks.threads`, benchmarks/RESULTS.md).
    Busy CPUs = the larger of two measures of other work: the threads of other processes runnable
    at this moment, and the 1-minute load average less this process's own part of it. The
    count of the moment sees a load that began seconds ago, which the average lags by up to a
    minute; the average sees jobs that pause now and then. The average counts this process too:
    a session that has sampled for a minute must not take itself for a competitor. Torch's own
    default (OMP_NUM_THREADS, or the core count) stays the upper bound.
    """
    cpus = usable_cpus()
    busy = max(os.getloadavg()[0] - own_cpu_use(), others_runnable_now()) if hasattr(os, "getloadavg") else 0.0
    return max(1, min(torch.get_num_threads(), cpus, round(cpus - busy)))


def others_runnable_now() -> int:
    """Threads of other processes runnable at this moment: the machine's runnable count (the fourth field
    of /proc/loadavg, "running/total") less this process's own runnable threads, the median of a few
    reads a millisecond apart (one read may catch a passing kernel task, or another job between
    steps); 0 where the kernel does not say."""
    try:
        counts = []
        for i in range(RUNNABLE_READS):
            if i:
                time.sleep(RUNNABLE_GAP_S)
            counts.append(max(0, system_runnable() - own_runnable()))
        return sorted(counts)[len(counts) // 2]
    except (OSError, ValueError, IndexError):
        return 0


def system_runnable() -> int:
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def own_runnable() -> int:
    """This process's threads in state R (running or waiting for a CPU), this one included."""
    running = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                running += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            continue
    return running


RUNNABLE_READS, RUNNABLE_GAP_S = 5, 0.001

# This process's share of the 1-minute load average, followed the way the kernel follows the load: an
# average of its CPU use with weights that decay over a minute, from 0 when fractalgen was imported.
_own = {"wall": time.monotonic(), "cpu": time.process_time(), "load": 0.0}
LOAD_MINUTE_S = 60.0


def own_cpu_use() -> float:
    """This process's own part of the 1-minute load average (its CPUs' worth of work, averaged as the
    kernel averages the load), so that a session busy for a minute does not count itself as other work."""
    wall, cpu = time.monotonic(), time.process_time()
    elapsed = wall - _own["wall"]
    if elapsed > 0:
        keep = math.exp(-elapsed / LOAD_MINUTE_S)
        rate = (cpu - _own["cpu"]) / elapsed
        _own.update(load=_own["load"] * keep + rate * (1 - keep), wall=wall, cpu=cpu)
    return _own["load"]


def choose_threads(option: str | int) -> int:
    """CPU threads for torch: a positive number, or 'auto' (see auto_threads)."""
    if str(option) == "auto":
        return auto_threads()
    try:
        threads = int(option)
    except ValueError:
        raise UserError(f"--threads is a positive number or 'auto', got {option!r}") from None
    if threads < 1:
        raise UserError(f"--threads must be >= 1 (or 'auto'), got {threads}")
    return threads


LOADER_WORKERS_CUDA = 8  # data loading processes feeding a GPU under auto, at most (one per usable CPU)


def loader_workers(option: int | None, device: torch.device) -> int:
    """DataLoader worker processes: the number asked for, or auto (None): none on the CPU, where workers
    would take cores from the training itself, and up to LOADER_WORKERS_CUDA on a GPU, which waits
    on data otherwise."""
    if option is not None:
        return option
    return min(LOADER_WORKERS_CUDA, usable_cpus()) if torch.device(device).type == "cuda" else 0


def set_threads(option: str | int) -> None:
    """Apply --threads (the command line's business: it changes the whole process)."""
    torch.set_num_threads(choose_threads(option))


# torch's own thread count in this process before anything of ours ran (OMP_NUM_THREADS or the cores).
# A different count later means someone called torch.set_num_threads: the caller's choice.
TORCH_DEFAULT_THREADS = torch.get_num_threads()
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_calls_inside = 0  # entry points running now (one inside another keeps the outer one's threads)


def caller_chose_threads() -> bool:
    """Whether the process's thread count is someone's choice rather than torch's default: set with
    torch.set_num_threads (it differs from TORCH_DEFAULT_THREADS) or by OMP_NUM_THREADS/MKL_NUM_THREADS.
    A count set before fractalgen was imported cannot be told from the default (pass threads= then)."""
    return torch.get_num_threads() != TORCH_DEFAULT_THREADS or any(v in os.environ for v in THREAD_VARIABLES)


@contextmanager
def call_threads(option: str | int | None = "auto"):
    """CPU threads for one library call, the caller's count restored after it.

    'auto': auto_threads(), unless the caller chose a count (caller_chose_threads): then theirs.
    A number: that many. None: torch's setting as it is. Why: torch's default (one thread per core)
    makes every small op of a first call wait for cores that other jobs hold (benchmarks/first_call.py).
    """
    global _calls_inside
    keep = option is None or _calls_inside > 0 or (str(option) == "auto" and caller_chose_threads())
    before = torch.get_num_threads()
    wanted = before if keep or option is None else choose_threads(option)
    _calls_inside += 1
    try:
        if wanted != before:
            torch.set_num_threads(wanted)
        yield
    finally:
        _calls_inside -= 1
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def uses_threads(function):
    """Give a library entry point the keyword-only option `threads` ('auto', a number or None; see
    call_threads), applied for the length of the call."""
    @functools.wraps(function)
    def wrapper(*args, threads: str | int | None = "auto", **kwargs):
        with call_threads(threads):
            return function(*args, **kwargs)

    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    at = len(parameters) - (parameters[-1].kind is inspect.Parameter.VAR_KEYWORD if parameters else 0)
    parameters.insert(at, inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default="auto",
                                            annotation="str | int | None"))
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper


# ---- torch versions ------------------------------------------------------------------------------

# Optional code paths that need a newer torch than the package's minimum (pyproject.toml), by the
# import they make. Each is checked by `require_torch` before the path runs.
NEWER_TORCH = {
    "torch.distributed.fsdp.fully_shard": (2, 6),  # --fsdp: public from 2.6 (private before)
    "torch.distributed.fsdp.MixedPrecisionPolicy": (2, 6),  # --fsdp under bf16: public with fully_shard
}


def torch_version() -> tuple[int, int]:
    """(major, minor) of the torch running now."""
    major, minor = re.match(r"(\d+)\.(\d+)", torch.__version__).groups()  # type: ignore[union-attr]
    return int(major), int(minor)


def require_torch(name: str, purpose: str) -> None:
    """One clear line when `purpose` (e.g. a flag) needs the import `name`, which this torch lacks."""
    needed = NEWER_TORCH[name]
    if torch_version() < needed:
        raise UserError(f"{purpose} needs torch >= {needed[0]}.{needed[1]} ({name}); "
                        f"this is torch {torch.__version__}")


# ---- processes (torchrun) ------------------------------------------------------------------------

@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        barrier()


def launched_ranks() -> Dist:
    """The rank, world size and local rank torchrun put in the environment (one process without it)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))


def setup_distributed(device_option: str, timeout: timedelta | None = None) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (if launched by it) and pick this process's device.

    Under torchrun with CUDA each process takes the GPU of its LOCAL_RANK; the CPU uses gloo.
    """
    d = launched_ranks()
    if not d.enabled:
        return d, pick_device(device_option)
    if device_option.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device_option}: CUDA is not available on this machine")
    use_cuda = torch.cuda.is_available() and (device_option == "auto" or device_option.startswith("cuda"))
    if use_cuda:  # one GPU per process, chosen by torchrun's LOCAL_RANK
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group("nccl" if use_cuda else "gloo", **kwargs)
    return d, torch.device("cuda", d.local_rank) if use_cuda else torch.device("cpu")


def barrier() -> None:
    """Wait for every process; nothing to wait for without a process group."""
    if dist.is_initialized():
        dist.barrier()


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sums over the processes (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def rank() -> int:
    """This process's rank (0 outside torchrun); readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))
