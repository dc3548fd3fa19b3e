"""One writer per run folder: an exclusive lock held for the whole training, and clean-up of what a kill left.

The lock is `fcntl.flock` on RUN/.lock. The kernel releases it when the process ends, however it
ends (kill -9, power loss, a crash), so a lock is never stale and never needs removing by hand; a
second training or `--resume` in the same folder is refused while the first runs. Only the
holder deletes the temporary files an interrupted atomic write left behind (they can be as big
as a checkpoint): with the lock held, no other process can be writing them.
"""
from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import sys
from pathlib import Path

from .errors import UserError

LOCK_NAME = ".lock"


# The files a training run writes; their temporaries are .{name}.{random}.tmp (files.atomic_write).
RUN_FILES = re.compile(r"checkpoint(-\d+)?\.pt|model\.safetensors|metrics\.jsonl|step\d+\.png")


def is_temporary(name: str) -> bool:
    """Whether `name` is a temporary file the atomic writer made for one of RUN_FILES: a user's own
    `.notes.txt.tmp` is not, and is never removed."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    final, _, random = name[1:-len(".tmp")].rpartition(".")
    return bool(random) and RUN_FILES.fullmatch(final) is not None


class RunLock:
    """`with RunLock(folder):` holds the folder's lock (creating the folder) or raises UserError naming it."""

    def __init__(self, folder):
        self.folder, self.fd = Path(folder), None
        self.writing = False  # set by the holder once it writes into the folder

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        lock = self.folder / LOCK_NAME
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a symlink planted as .lock is refused, not followed; nothing is written to the file.
            self.fd = os.open(lock, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise UserError(f"cannot use run folder {self.folder}: {lock}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self.fd)
            self.fd = None
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"{self.folder} is in use by another training (it holds the lock {lock}); "
                                f"wait for it to finish, or choose another --out") from None
            raise UserError(f"cannot lock run folder {self.folder}: {e.strerror or e}") from None
        remove_stale_temporaries(self.folder)
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files left by interrupted writes in `folder` and its samples/; call with the lock held."""
    removed, size = 0, 0
    for place in (folder, folder / "samples"):
        try:
            entries = list(os.scandir(place))
        except OSError:
            continue
        for entry in entries:
            if not is_temporary(entry.name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(info.st_mode):
                    os.unlink(entry.path)
                    removed, size = removed + 1, size + info.st_size
            except OSError:
                continue
    if removed:
        print(f"note: removed {removed} temporary file(s) ({size / 2**20:.1f} MiB) left in {folder} by an "
              f"interrupted write", file=sys.stderr)
    return removed
