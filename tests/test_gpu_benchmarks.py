"""The GPU benchmarks run on the CPU with tiny shapes, so they cannot rot between GPU sessions."""
import pytest
import torch

import fractalgen
from benchmarks import gpu_huge

torch.set_num_threads(1)  # tiny models: more threads only add synchronisation on a shared CPU


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
    steps = model.config.default_num_iter[0]
    result = gpu_huge.time_batch(model, [0, 1], "fp32", timed_steps=3)
    assert result["estimated"] and result["level0_steps"] == steps and result["timed_steps"] == 3
    assert result["seconds"] >= result["measured_seconds"] > 0  # the skipped steps are charged, not dropped
    assert "_sample_level" not in vars(model)  # the model is left as it was
    whole = gpu_huge.time_batch(model, [0, 1], "fp32", timed_steps=None)
    assert not whole["estimated"] and whole["level0_steps"] == steps


def test_untimed_steps_are_charged_the_nearest_timed_step_scaled_by_patches():
    calls = [(4, 1.0), (8, None), (2, None), (8, 3.0)]
    assert gpu_huge.estimate_below(calls) == pytest.approx(1.0 + 3.0 + 0.5 + 3.0)
