"""One writer per run folder, and what a kill or a full disk leaves behind.

The lock is held by a real second process (released by the kernel when it is killed); a full
disk is simulated by a write that raises ENOSPC half way, the way a real one fails.
"""
import os
import signal
import subprocess
import sys

import pytest

from fractalgen.errors import UserError
from fractalgen.run_lock import LOCK_NAME, RunLock, is_temporary

HOLD = """
import sys, time
from fractalgen.run_lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on tmp_path/run until killed."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_a_second_writer_is_refused_until_the_first_dies(holder):
    folder, proc = holder
    with pytest.raises(UserError, match=f"{folder} is in use by another training"), RunLock(folder):
        pass
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel releases the lock
    proc.wait(timeout=60)
    with RunLock(folder), pytest.raises(UserError, match="in use"), RunLock(folder):  # one holder, even in one process
        pass
    with RunLock(folder):  # released on leaving the block
        pass


def test_stale_temporaries_are_removed_by_the_next_holder(tmp_path, capsys):
    folder = tmp_path / "run"
    (folder / "samples").mkdir(parents=True)
    stale = [folder / ".checkpoint.pt.k2j4_x.tmp", folder / ".model.safetensors.abc123.tmp",
             folder / "samples" / ".step0000020.png.q1w2e3.tmp"]
    kept = [folder / "checkpoint.pt", folder / "notes.tmp", folder / ".hidden", folder / "samples" / "step.png"]
    for path in stale + kept:
        path.write_bytes(b"x" * 1000)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(b"precious")
    os.symlink(outside, folder / ".planted.link.tmp")  # only regular files are removed: a link and its target stay
    with RunLock(folder):
        assert not any(p.exists() for p in stale)
        assert all(p.exists() for p in kept)
        assert outside.read_bytes() == b"precious"
    assert "removed 3 temporary file(s)" in capsys.readouterr().err
    assert is_temporary(".checkpoint.pt.k2j4_x.tmp") and not is_temporary("run.tmp")


def test_a_planted_lock_symlink_is_not_followed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    os.symlink(target, folder / LOCK_NAME)
    with pytest.raises(UserError, match="cannot use run folder"), RunLock(folder):
        pass
    assert target.read_bytes() == b"keep"
