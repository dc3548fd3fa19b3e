"""The training log (RUN/metrics.jsonl) and the loss-curve plot drawn from it."""
import json
import math
import os

import numpy as np
import pytest
import torch
from frame import TINY, tiny_config, tiny_data
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fractalgen.errors import UserError
from fractalgen.plot import LINE, nice_step, plot_run, ticks
from fractalgen.train import TrainOptions, train
from fractalgen.trainlog import FIELDS, MetricsLog, read_metrics


def options(tmp_path, **changes):
    base = {"out": str(tmp_path / "run"), "data": tiny_data(tmp_path / "d.npz"), "steps": 6, "batch_size": 4,
            "lr": 3e-3, "warmup_steps": 1, "flip": False, "save_every": 3, "sample_every": 0, "device": "cpu",
            "seed": 1, "log_every": 2}
    return TrainOptions(**{**base, **changes})


def lines(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_metrics_and_resume_appends(tmp_path):
    run = tmp_path / "run"
    train(tiny_config(), options(tmp_path, steps=4, log_every=3))
    first = lines(run)
    assert [r["step"] for r in first] == [3, 4]  # every 3 steps, and the last step
    for record in first:
        assert set(record) == set(FIELDS)
        assert record["loss"] > 0 and record["lr"] > 0 and record["grad_norm"] > 0
        assert record["images_per_s"] > 0 and record["steps_per_s"] > 0 and record["peak_memory_mb"] > 0
    assert first[1]["wall_s"] > first[0]["wall_s"] > 0

    train(None, options(tmp_path, steps=6, log_every=3, resume=str(run)))
    both = lines(run)
    assert both[:2] == first  # appended, nothing rewritten
    assert [r["step"] for r in both] == [3, 4, 6]
    assert both[2]["wall_s"] > first[1]["wall_s"]  # training time continues across the resume


def test_read_metrics_drops_lines_a_resume_replaced_and_a_torn_tail(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "loss": float(s)} for s in (10, 20, 30)] + [{"step": 20, "loss": -1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 30, "lo')
    assert [(r["step"], r["loss"]) for r in read_metrics(path)] == [(10, 10.0), (20, -1.0)]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match=":2 is not valid JSON"):
        read_metrics(path)


def test_a_symlink_planted_at_the_log_is_refused_not_followed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, run / "metrics.jsonl")
    with pytest.raises(UserError, match="symbolic link"):
        train(tiny_config(), options(tmp_path, steps=2))
    assert victim.read_text() == "precious"


def test_plot_draws_the_loss_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": s, "loss": 5.0 * 0.97**s, "lr": 1e-3} for s in range(10, 410, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    path = plot_run(run)
    assert path == run / "loss.png"
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (540, 900, 3)
    curve = np.all(image == LINE, axis=-1)
    rows, cols = np.nonzero(curve)
    assert cols.min() < 150 and cols.max() > 800  # spans the x axis
    assert rows[cols.argmin()] < rows[cols.argmax()]  # and falls from left to right (image rows grow downwards)
    assert (image < 100).all(axis=-1).sum() > 2000  # axes, ticks and labels in black

    assert plot_run(run, out=tmp_path / "lr.png", metric="lr").is_file()
    with pytest.raises(UserError, match="no values of 'grad_norm'"):
        plot_run(run, metric="grad_norm")


def test_ticks_are_round_numbers_covering_the_data():
    assert nice_step(10.0) == 2 and nice_step(0.9) == 0.2 and nice_step(4000) == 1000
    values, lo, hi = ticks(0.83, 5.4)
    assert lo <= 0.83 and hi >= 5.4 and values[0] == lo and values[-1] == hi
    assert all(abs(v / 1.0 - round(v)) < 1e-9 for v in values)
    values, lo, hi = ticks(2.0, 2.0)  # a flat line still gets an axis
    assert lo < 2.0 < hi


def test_train_and_plot_commands(tmp_path, capsys):
    from fractalgen.cli import main

    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    run = tmp_path / "run"
    code = main(["train", "--config", str(tmp_path / "tiny.json"), "--data", tiny_data(tmp_path / "d.npz"),
                 "--out", str(run), "--steps", "4", "--batch-size", "4", "--no-flip", "--sample-every", "0",
                 "--log-every", "2", "--device", "cpu"])
    assert code == 0
    assert [r["step"] for r in read_metrics(run)] == [2, 4]
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "curve.png")]) == 0
    assert "curve.png" in capsys.readouterr().out and Image.open(tmp_path / "curve.png").size == (900, 540)
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "no run folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's own one-line error
        main(["train", "--config", str(tmp_path / "tiny.json"), "--data", str(tmp_path / "d.npz"), "--out",
              str(tmp_path / "run2"), "--steps", "4", "--log-every", "0", "--device", "cpu"])
    assert "--log-every: must be >= 1" in capsys.readouterr().err
    with pytest.raises(UserError, match="log_every must be >= 1"):  # library callers
        options(tmp_path, log_every=0)


@pytest.mark.parametrize("values", [[10**400, 1.0], [1.7e308, 1.0], [1e308, -1e308], [5e-324, 1e-323], [5e-324],
                                    [1e299, -1e299]])
def test_plot_holds_extreme_numbers(tmp_path, values):
    """Huge integers, the largest floats, +-1e308 (whose span overflows) and subnormal losses: a plot or
    one clear line, in bounded time and memory, never an OverflowError, a math domain error or a runaway
    tick list."""
    from fractalgen.errors import UserError
    from fractalgen.plot import MAX_TICKS, plot_metric, ticks

    records = [{"step": i + 1, "loss": v} for i, v in enumerate(values)] + [{"step": 10**400, "loss": 1.0}]
    try:
        assert plot_metric(records, tmp_path / "p.png").is_file()
    except UserError as e:
        assert "no values of 'loss'" in str(e)
    assert len(ticks(-1e300, 1e300)[0]) <= MAX_TICKS + 1 and len(ticks(5e-324, 1e-323)[0]) <= MAX_TICKS + 1


# ---- fuzzed logs: records in step order, or one line; a resume reads on -----------------------------------

NUMBERS = st.integers(-3, 10**6) | st.floats(allow_nan=False) | st.sampled_from([2**63, -2**63, 10**400, 0, None])
VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=4),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=2), max_leaves=6)
RECORDS = (st.fixed_dictionaries({"step": st.integers(0, 12)}, optional={k: NUMBERS for k in FIELDS[1:]})
           | st.dictionaries(st.sampled_from([*FIELDS, "other"]), NUMBERS | VALUES, max_size=5))


def as_line(item) -> bytes:
    if isinstance(item, bytes):
        return item
    try:
        return json.dumps(item).encode()  # 10**400 as digits, inf and nan as Python writes them
    except ValueError:
        return b"{}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(RECORDS | VALUES | st.binary(max_size=12), max_size=6), torn=st.booleans(),
       start=st.integers(0, 10))
@example(lines=[{"step": 1, "wall_s": None}], torn=False, start=5)  # null: a value that was not finite
def test_fuzzed_logs_read_in_order_or_are_one_line(tmp_path_factory, lines, torn, start):
    """Whatever the lines: the reader gives records with integer steps in increasing order and numbers (or
    null) in the known fields, or one line; `fractalgen plot` draws them or says why not; a resumed run's
    log continues (an unreadable one restarts its wall time, with a note)."""
    run = tmp_path_factory.mktemp("log")
    (run / "metrics.jsonl").write_bytes(b"\n".join(map(as_line, lines)) + (b"" if torn else b"\n"))
    try:
        records = read_metrics(run)
    except UserError as e:
        assert "\n" not in str(e) and "metrics.jsonl:" in str(e), str(e)
    else:
        steps = [r["step"] for r in records]
        assert all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps)
        assert steps == sorted(set(steps))
        for record in records:
            assert all(record.get(k) is None or (isinstance(record[k], (int, float))
                                                 and not isinstance(record[k], bool)) for k in FIELDS)
        try:
            assert plot_run(run).is_file()
        except UserError as e:
            assert "no values of 'loss'" in str(e)
    wall = MetricsLog(run, 1, start, torch.device("cpu")).wall_before
    assert isinstance(wall, float) and math.isfinite(wall)
