"""The GPU benchmarks run on the CPU with tiny shapes, so they cannot rot between GPU sessions."""
import pytest
import torch

import fractalgen
from benchmarks import gpu_check, gpu_huge


def test_gpu_check_dry_run_runs_every_row_and_every_row_passes():
    rows = gpu_check.main(["--dry-run", "--budget", "1000"])
    whats = " | ".join(r.what for r in rows)
    for part in ("seeded sampling repeats", "bf16 autocast forward+backward", "sampling (cpu)", "inpainting",
                 "codec, CPU encode -> cpu decode", "training steps", "sampling, batch", "compiled",
                 "torch.compile every block", "profile of one training step"):
        assert part in whats, part
    failed = [r for r in rows if r.result.startswith(("FAIL", "error", "skipped"))]
    assert not failed, failed
    assert all(r.seconds >= 0 for r in rows)


def test_gpu_check_reports_a_failing_row_and_goes_on():
    check = gpu_check.Check(torch.device("cpu"), budget=1000)
    check.row("raises", lambda: 1 / 0)
    check.row("after it", lambda: "pass")
    assert check.rows[0].result.startswith("error: ZeroDivisionError")
    assert check.rows[1].result == "pass"
    assert "raises" in check.table() and "after it" in check.table()
    out_of_time = gpu_check.Check(torch.device("cpu"), budget=0)
    assert out_of_time.row("late", lambda: "pass").result.startswith("skipped")


def test_gpu_huge_samples_in_batches_of_batch_and_takes_zero_reps(monkeypatch):
    """`--batch 3` is one sample() call with batch_size 3 (not the library's default batching), and
    `--reps 0` reports the one run instead of taking the median of none."""
    seen = []
    sample = fractalgen.sample

    def recording(model, *args, **kwargs):
        seen.append((len(kwargs["labels"]), kwargs.get("batch_size")))
        return sample(model, *args, **kwargs)

    monkeypatch.setattr(fractalgen, "sample", recording)
    per_image = gpu_huge.main(["--config", "tiny_mar_gp4", "--batch", "3", "--device", "cpu", "--dtype", "fp32",
                               "--reps", "0", "--timed-steps", "2"])
    assert seen == [(3, 3)]
    assert per_image > 0
    with pytest.raises(SystemExit):
        gpu_huge.main(["--config", "tiny_mar_gp4", "--batch", "0", "--device", "cpu"])


def test_the_estimate_runs_every_level0_step_and_the_levels_below_only_where_timed():
    torch.manual_seed(0)
    model = fractalgen.build("tiny_mar_gp4").eval()
    steps = fractalgen.resolve_settings(model).num_iter[0]
    result = gpu_huge.time_batch(model, [0, 1], "fp32", timed_steps=3)
    assert result["estimated"] and result["level0_steps"] == steps and result["timed_steps"] == 3
    assert result["seconds"] >= result["measured_seconds"] > 0  # the skipped steps are charged, not dropped
    assert "_sample_level" not in vars(model)  # the model is left as it was
    whole = gpu_huge.time_batch(model, [0, 1], "fp32", timed_steps=None)
    assert not whole["estimated"] and whole["level0_steps"] == steps


def test_untimed_steps_are_charged_the_nearest_timed_step_scaled_by_patches():
    calls = [(4, 1.0), (8, None), (2, None), (8, 3.0)]
    assert gpu_huge.estimate_below(calls) == pytest.approx(1.0 + 3.0 + 0.5 + 3.0)
