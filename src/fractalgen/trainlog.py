"""The training log: RUN/metrics.jsonl, one JSON object per logged step, appended by rank 0.

    {"step": 100, "loss": 1.61, "lr": 0.002, "grad_norm": 0.83, "images_per_s": 41.2,
     "steps_per_s": 1.29, "wall_s": 77.5, "peak_memory_mb": 612.0, "time": 1764400000.0}

loss and grad_norm are means over the steps since the previous line; lr is the last step's;
images_per_s and steps_per_s are measured over the same steps; wall_s is the training time so far,
continued across resumes; peak_memory_mb is the process's peak resident memory on CPU, the peak
allocated memory on a GPU.

Every line is appended with one write on a descriptor opened O_APPEND (whole lines, even if two
processes append) and O_NOFOLLOW (a symbolic link planted at the path is refused, not followed).
A resumed run appends to the same file; its lines for steps past the checkpoint it resumed from
were never part of the run that continues, and `read_metrics` drops them.
"""
from __future__ import annotations

import json
import math
import os
import resource
import stat
import sys
import time
from pathlib import Path

import torch

from .errors import UserError
from .jsonfile import parse_object, read_bytes

METRICS_NAME = "metrics.jsonl"
MAX_LOG_BYTES = 2**30  # some 5 million lines: a line every step of a very long run
FIELDS = ("step", "loss", "lr", "grad_norm", "images_per_s", "steps_per_s", "wall_s", "peak_memory_mb", "time")


def open_for_append(path: Path) -> int:
    """A descriptor that appends to the regular file `path` (created if absent), never through a link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:  # a FIFO without a reader is ENXIO: name what is there instead
        reason = ("it is a symbolic link" if os.path.islink(path) else
                  "not a regular file" if os.path.exists(path) and not os.path.isfile(path) else e.strerror)
        raise UserError(f"cannot append to {path}: {reason}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device planted there
        os.close(fd)
        raise UserError(f"cannot append to {path}: not a regular file")
    return fd


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl (or a run folder holding one), in step order.

    A line whose step is not past the previous one starts a resumed run: the earlier lines it
    overlaps are dropped. A torn last line (a crash mid-write) is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_NAME
    data = read_bytes(path, str(path), max_bytes=MAX_LOG_BYTES, follow_links=False)
    lines = data.splitlines()
    records: list[dict] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_object(line, f"{path}:{number}")
        except UserError:
            if number == len(lines) and not data.endswith(b"\n"):  # torn by a crash mid-write
                continue
            raise
        check_record(record, f"{path}:{number}")
        while records and records[-1]["step"] >= record["step"]:
            records.pop()
        records.append(record)
    return records


def check_record(record: dict, where: str):
    """A step >= 0, and every known field a number (or null: a non-finite mean is written as null)."""
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f"{where} has no integer 'step' >= 0")
    for name in FIELDS[1:]:
        value = record.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UserError(f"{where}: {name!r} must be a number, got {json.dumps(value)[:40]}")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class MetricsLog:
    """Collects per-step numbers and appends one line every `every` steps (and when told to flush)."""

    def __init__(self, out: Path, every: int, start_step: int, device: torch.device):
        self.path = Path(out) / METRICS_NAME
        self.every = every
        self.device = device
        os.close(open_for_append(self.path))  # a path that cannot be appended to fails now, not mid-run
        self.wall_before = self.previous_wall(start_step)  # training time of the runs this one continues
        self.started = self.window_started = time.perf_counter()
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.images = 0

    def previous_wall(self, start_step: int) -> float:
        if start_step == 0 or not self.path.exists():
            return 0.0
        try:
            before = [r for r in read_metrics(self.path) if r["step"] <= start_step]
        except UserError as e:  # an unreadable old log: time restarts at zero, the run itself is unaffected
            print(f"note: {e}; the logged wall time restarts at zero", file=sys.stderr)
            return 0.0
        wall = before[-1].get("wall_s") if before else None  # null where a line had no finite value
        return float(wall) if wall is not None else 0.0

    def step(self, step: int, loss: float, lr: float, grad_norm: float, images: int, flush: bool = False):
        """Record one optimizer step (`step` counts steps done); write a line every `every` steps."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.images += images
        if step % self.every == 0 or flush:
            self.write(step, lr)

    def write(self, step: int, lr: float):
        if not self.losses:
            return
        now = time.perf_counter()
        seconds = max(now - self.window_started, 1e-9)
        record = {
            "step": step, "loss": mean(self.losses), "lr": lr, "grad_norm": mean(self.grad_norms),
            "images_per_s": round(self.images / seconds, 3), "steps_per_s": round(len(self.losses) / seconds, 4),
            "wall_s": round(self.wall_before + now - self.started, 3),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1), "time": round(time.time(), 3),
        }
        fd = open_for_append(self.path)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        self.window_started, self.losses, self.grad_norms, self.images = now, [], [], 0


def mean(values: list[float]) -> float | None:
    """The mean, or None (JSON null) when a value is not finite."""
    value = sum(values) / len(values)
    return value if math.isfinite(value) else None
