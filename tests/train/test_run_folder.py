"""One writer per run folder, and what a kill or a full disk leaves behind.

The lock is held by a real second process (released by the kernel when it is killed); a full
disk is simulated by a write that raises ENOSPC half way, the way a real one fails.
"""
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from frame import tiny_inputs

from fractalgen.cli import main
from fractalgen.errors import UserError, WriteError
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


# ---- through the command line -----------------------------------------------------------------

def train_argv(data, out, *more):
    return ["train", "--config", data.parent / "tiny.json", "--data", data, "--out", out, "--steps", "2",
            "--batch-size", "4", "--save-every", "2", "--sample-every", "0", "--device", "cpu", *map(str, more)]


@pytest.fixture
def tiny(tmp_path):
    return Path(tiny_inputs(tmp_path)[0])


def test_a_second_training_in_a_locked_folder_is_refused(tiny, holder, capsys):
    folder, _ = holder
    code = main([str(a) for a in train_argv(tiny, folder)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"fractalgen train: error: {folder} is in use by another training (it holds the lock "
                           f"{folder / LOCK_NAME}); wait for it to finish, or choose another --out")
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main([str(a) for a in train_argv(tiny, out)]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full_disk(fd):  # the temporary checkpoint fills the disk; other files are written normally
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    code = main([str(a) for a in train_argv(tiny, out, "--resume", out, "--steps", "4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not any("Traceback" in line for line in err)
    assert err[-1] == (f"fractalgen train: error: could not write {out / 'checkpoint.pt'}: No space left on device; "
                       f"the previous checkpoint.pt is kept unchanged (training stopped at step 4; make room, then "
                       f"--resume {out})")
    assert (out / "checkpoint.pt").read_bytes() == good  # step 2, intact
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary file left
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert main([str(a) for a in train_argv(tiny, out, "--resume", out, "--steps", "4")]) == 0


def test_the_next_run_removes_what_a_kill_left(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([str(a) for a in train_argv(tiny, out)]) == 0
    stale = out / ".checkpoint.pt.x1y2z3.tmp"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"\0" * 4096)
    assert main([str(a) for a in train_argv(tiny, out, "--resume", out, "--steps", "3")]) == 0
    assert not stale.exists() and "removed 1 temporary file(s)" in capsys.readouterr().err


def test_planted_symlinks_are_never_followed(tiny, tmp_path, capsys):
    """Links planted at the names the commands write: the links are replaced, their targets never change."""
    victims = tmp_path / "outside"
    victims.mkdir()
    precious = victims / "precious.bin"
    precious.write_bytes(b"keep me")
    out = tmp_path / "run"
    out.mkdir()
    for name in ("model.safetensors", ".write-test", LOCK_NAME + "x"):
        os.symlink(precious, out / name)
    assert main([str(a) for a in train_argv(tiny, out)]) == 0
    assert precious.read_bytes() == b"keep me" and not (out / "model.safetensors").is_symlink()

    samples = tmp_path / "samples"
    samples.mkdir()
    os.symlink(victims / "grid.png", samples / "grid.png")  # dangling: the sampler would create the target
    os.symlink(precious, samples / "00001_class1.png")
    argv = ["sample", "--checkpoint", str(out), "--classes", "0,1", "--num-iter", "1,1", "--out", str(samples),
            "--device", "cpu"]
    assert main(argv) == 0  # the names are taken: the run goes into a fresh subfolder, the links stay as they are
    assert f"writes into {samples / '002'}" in capsys.readouterr().err
    assert (samples / "002" / "grid.png").is_file() and (samples / "00001_class1.png").is_symlink()
    assert main(argv + ["--overwrite"]) == 0  # replacing: the links are replaced, never followed
    assert not (samples / "grid.png").is_symlink() and not (victims / "grid.png").exists()
    assert not (samples / "00001_class1.png").is_symlink()
    assert precious.read_bytes() == b"keep me"
    assert sorted(p.name for p in victims.iterdir()) == ["precious.bin"]


def test_the_atomic_writer_replaces_a_link_and_never_leaves_an_empty_file(tmp_path, monkeypatch):
    from fractalgen.files import save_image, write_text

    target = tmp_path / "target.txt"
    target.write_text("keep")
    os.symlink(target, tmp_path / "bits_per_dim.txt")  # the demo's text file
    write_text("1.19 bits/dim\n", tmp_path / "bits_per_dim.txt")
    assert target.read_text() == "keep" and (tmp_path / "bits_per_dim.txt").read_text() == "1.19 bits/dim\n"

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(WriteError, match=r"could not write .*result.json: No space left on device; nothing was"):
        write_text("{}", tmp_path / "result.json")
    from PIL import Image

    with pytest.raises(WriteError, match="the previous bits_per_dim.txt is kept unchanged"):
        write_text("2.0", tmp_path / "bits_per_dim.txt")
    with pytest.raises(UserError):  # a WriteError is a user error: one line in the CLI
        save_image(Image.new("L", (4, 4)), tmp_path / "x.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bits_per_dim.txt", "target.txt"]  # no empty, no temp file


def test_a_waiting_resume_reads_the_checkpoint_only_with_the_lock(tiny, holder, monkeypatch, capsys):
    """--resume is refused at the lock, before it reads checkpoint.pt: a run waiting while another finishes
    must not continue from what it read before."""
    import fractalgen.train as training

    folder, _ = holder
    read, real = [], training.read_checkpoint

    def reading(path):
        read.append(path)
        return real(path)

    code = main([str(a) for a in train_argv(tiny, folder)])  # a run to resume (written before the holder locks)
    monkeypatch.setattr(training, "read_checkpoint", reading)
    code = main([str(a) for a in train_argv(tiny, folder, "--resume", folder)])
    assert code == 2 and "in use by another training" in capsys.readouterr().err
    assert len(read) == 1  # the stored options (to parse the flags); the weights and step only once locked


def test_a_folder_holding_a_model_or_a_run_is_left_as_it_was(tiny, tmp_path, capsys):
    from frame import tiny_config

    import fractalgen

    model_folder = Path(fractalgen.save_pretrained(fractalgen.build(tiny_config()), tmp_path / "exported"))
    before = {p.name: p.read_bytes() for p in model_folder.iterdir()}
    code = main([str(a) for a in train_argv(tiny, model_folder)])
    err = capsys.readouterr().err
    assert code == 2 and "already holds a model" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in model_folder.iterdir()} == before  # no lock file either
    run = tmp_path / "run"
    assert main([str(a) for a in train_argv(tiny, run)]) == 0
    capsys.readouterr()
    assert main([str(a) for a in train_argv(tiny, run)]) == 2  # a fresh run over a run: refused
    assert "already holds a training run" in capsys.readouterr().err
    refused = tmp_path / "never"
    assert main([str(a) for a in train_argv(tiny, refused, "--resume", tmp_path / "missing")]) == 2
    assert not refused.exists()  # a refused run leaves no folder behind


def test_only_temporaries_this_program_made_are_removed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    mine = [folder / ".notes.txt.tmp", folder / ".data.npz.x1.tmp", folder / ".checkpoint.pt.tmp"]
    for path in mine:
        path.write_text("the user's")
    stale = folder / ".checkpoint-0000010.pt.a1b2c3.tmp"
    stale.write_text("a kill's")
    with RunLock(folder):
        pass
    assert all(path.read_text() == "the user's" for path in mine) and not stale.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: a real full disk (mounting needs root; skipped otherwise)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_real_full_disk_under_torch_save_is_one_write_error(small_disk):
    """torch's zip writer reports a failed write as 'unexpected pos': the disk's own error is what the user
    reads, the temporary file is removed, and an earlier file is kept."""
    from fractalgen.files import atomic_write

    path = small_disk / "checkpoint.pt"
    atomic_write(lambda f: torch.save({"w": torch.zeros(1000)}, f), path)
    kept = path.read_bytes()
    with pytest.raises(WriteError, match=r"No space left on device; the previous checkpoint.pt is kept unchanged"):
        atomic_write(lambda f: torch.save({"w": torch.zeros(1_000_000)}, f), path)
    assert path.read_bytes() == kept and sorted(p.name for p in small_disk.iterdir()) == ["checkpoint.pt"]
