"""Never lose a run: SIGKILL then --resume is bit-identical, SIGINT/SIGTERM checkpoint and exit, NaN stops cleanly.

The training runs are real `fractalgen train` processes (tests/train_worker.py), slowed down per
step so that a signal lands mid-run; the reference run is an uninterrupted one with the same seed.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from frame import TRAIN_WORKER, tiny_config, tiny_data, tiny_inputs, train_options

from fractalgen import cli
from fractalgen import train as train_module
from fractalgen.errors import UserError
from fractalgen.train import read_checkpoint, train

STEPS = 12  # 16 images, batch 4: three epochs, so the resumed order crosses epoch boundaries (with flips)


def train_args(data, config, out, *extra):
    return ["train", "--config", str(config), "--data", str(data), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "2", "--save-every", "1",
            "--sample-every", "0", "--device", "cpu", "--threads", "1", "--seed", "3", *extra]


def start(args, delay=0.0):
    env = {**os.environ, "FRACTALGEN_TEST_STEP_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, str(TRAIN_WORKER), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_step(proc, run: Path, step: int, timeout=120) -> int:
    """Poll the (atomically written) checkpoint until it holds at least `step`; return that step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoint.pt").exists():
            seen = read_checkpoint(run)["step"]
            if seen >= step:
                return seen
        assert proc.poll() is None, f"training ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Data, config and the uninterrupted reference run (started once, shared by the tests)."""
    root = tmp_path_factory.mktemp("resume")
    data, config = tiny_inputs(root)
    reference = start(train_args(data, config, root / "reference"))
    yield root, data, config, reference, root / "reference"
    if reference.poll() is None:
        reference.kill()


def reference_model(setup):
    _root, _data, _config, reference, run = setup
    if reference.returncode is None:
        code, _, err = finish(reference)
        assert code == 0, err[-2000:]
    state = read_checkpoint(run)
    assert state["step"] == STEPS
    return state["model"]


def assert_bit_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_sigkill_mid_run_then_resume_is_bit_identical(setup):
    root, data, config, _, _ = setup
    run = root / "killed"
    victim = start(train_args(data, config, run), delay=0.2)
    killed_at = wait_for_step(victim, run, 3)
    victim.kill()  # SIGKILL: no handler runs, whatever was being written is abandoned
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert killed_at < STEPS
    assert read_checkpoint(run)["step"] < STEPS  # the run really was cut short

    code, _, err = finish(start(["train", "--resume", str(run), "--threads", "1"]))
    assert code == 0, err[-2000:]
    assert read_checkpoint(run)["step"] == STEPS
    assert_bit_identical(reference_model(setup), read_checkpoint(run)["model"])


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(setup):
    root, data, config, _, _ = setup
    run = root / "terminated"
    victim = start(train_args(data, config, run), delay=0.2)
    wait_for_step(victim, run, 2)
    victim.send_signal(signal.SIGTERM)
    code, _, err = finish(victim)
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    stopped = read_checkpoint(run)["step"]
    last = err.strip().splitlines()[-1]
    assert last.startswith("fractalgen train: SIGTERM: ") and f"stopped at step {stopped}" in last
    assert "--resume" in last and 2 <= stopped < STEPS
    # The checkpoint written on the way out continues exactly.
    code, _, err = finish(start(["train", "--resume", str(run), "--threads", "1"]))
    assert code == 0, err[-2000:]
    assert_bit_identical(reference_model(setup), read_checkpoint(run)["model"])


def test_sigint_finishes_the_step_and_checkpoints(tmp_path, monkeypatch, capsys):
    """Ctrl-C during step 2 (in this process): step 2 completes, its checkpoint is written, exit 130."""
    data, config = tiny_inputs(tmp_path)
    forward, calls = train_module.LossModule.forward, []

    def interrupted(self, images, labels):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, images, labels)

    monkeypatch.setattr(train_module.LossModule, "forward", interrupted)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN under nohup / a background CI
    code = cli.main(train_args(data, config, tmp_path / "run", "--save-every", "100"))
    err = capsys.readouterr().err
    assert code == 128 + signal.SIGINT and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("fractalgen train: SIGINT: stopped at step 2")
    assert len(calls) == 2 and read_checkpoint(tmp_path / "run")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


@pytest.fixture
def nan_at_step(monkeypatch):
    """The loss turns NaN from the given step (0-based) on."""
    def install(bad_step):
        forward, calls = train_module.LossModule.forward, []

        def poisoned(self, images, labels):
            calls.append(1)
            loss = forward(self, images, labels)
            return loss * float("nan") if len(calls) > bad_step else loss

        monkeypatch.setattr(train_module.LossModule, "forward", poisoned)
    return install


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, nan_at_step):
    data = tiny_data(tmp_path / "d.npz")
    nan_at_step(3)
    with pytest.raises(UserError, match=r"loss is nan at step 3"):
        train(tiny_config(), train_options(tmp_path, data, steps=6, save_every=2))
    state = read_checkpoint(tmp_path / "run")
    assert state["step"] == 2  # the step-2 checkpoint, not overwritten by anything later
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    import fractalgen

    model = fractalgen.load(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_non_finite_loss_through_the_cli_is_one_line(tmp_path, nan_at_step, capsys):
    data, config = tiny_inputs(tmp_path)
    nan_at_step(0)
    code = cli.main(train_args(data, config, tmp_path / "run"))
    err = capsys.readouterr().err
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("fractalgen")]
    assert lines == [("fractalgen train: error: loss is nan at step 0; stopped before updating the weights "
                     "(the last checkpoint, if any, is kept)")]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
