"""FractalMAR-H sampling speed on a GPU (issue 5): seconds per image in bf16, one batch at a time.

    python -m benchmarks.gpu_huge                        # fractalmar_huge_in256, random weights, batch 256
    python -m benchmarks.gpu_huge --full                 # whole images, no extrapolation (long)
    python -m benchmarks.gpu_huge --compile              # sample(compile=True): the decode steps compiled
                                                         # (CUDA graphs on a GPU)
    python -m benchmarks.gpu_huge --config cifar_ar --batch 256 --full [--compile]   # a CIFAR-size AR model
    python -m benchmarks.gpu_huge --config tiny_mar_gp4 --batch 2 --device cpu --dtype fp32   # dry run on CPU

A whole batch of FractalMAR-H images takes minutes, so by default one batch is estimated: level 0
runs every one of its steps, and the levels below it run in `--timed-steps` of them, spread over
the schedule; the other steps get zeros at once (the work per step does not depend on the values)
and are charged the time of the timed step nearest in patch count, scaled by patch count. The
output says which it was, beside the paper's figure (PAPER_SECONDS_PER_IMAGE) and the goal (half of it).
Random weights are fine for speed: the work per image does not depend on the weights.
The authors' published sampling settings: the preset's iterations, cfg (linear) and temperature; FILTER.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import numpy as np
import torch

import fractalgen
from fractalgen.runtime import set_threads

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PAPER_SECONDS_PER_IMAGE = 1.29  # FractalMAR-H, one H100, batch 1024 (the paper)
FILTER = 1e-4  # the official sampling filter threshold
WARM_UP_STEPS = 3  # level-0 steps sampled (all levels running) before timing


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def below_level0(model, steps: int, timed: int | None, device: torch.device):
    """While active, the levels below level 0 run only in `timed` of level 0's `steps` steps (None: all).

    Yields a list that gets, per level-0 step, (patches generated, seconds in the levels below,
    or None where they were skipped). Wraps the model's recursion on this instance only.
    """
    calls = []
    chosen = set(range(steps)) if timed is None else set(np.linspace(0, steps - 1, timed).round().astype(int).tolist())
    recurse = model._sample_level  # the bound method; the instance attribute below shadows it
    size, channels = model.config.img_sizes[1], model.config.channels

    def level(depth, ctx, conds, guidance, known):
        if depth != 1:
            return recurse(depth, ctx, conds, guidance, known)
        rows = guidance.shape[0]  # patches generated at this level-0 step, over the batch
        if len(calls) in chosen:
            synchronize(device)
            start = time.perf_counter()
            out = recurse(depth, ctx, conds, guidance, known)
            synchronize(device)
            calls.append((rows, time.perf_counter() - start))
            return out
        calls.append((rows, None))
        zeros = torch.zeros(rows, channels, size, size, device=guidance.device)  # (R, C, S1, S1): values, log-probs
        return zeros, zeros.clone()

    model._sample_level = level
    try:
        yield calls
    finally:
        del model._sample_level


def estimate_below(calls: list[tuple[int, float | None]]) -> float:
    """Seconds the levels below level 0 take over all steps: measured where timed, else the timed step
    nearest in patch count scaled by patch count."""
    timed = [(rows, seconds) for rows, seconds in calls if seconds is not None]
    total = 0.0
    for rows, seconds in calls:
        if seconds is None:
            near_rows, near_seconds = min(timed, key=lambda t: abs(t[0] - rows))
            seconds = near_seconds * rows / near_rows
        total += seconds
    return total


def time_batch(model, labels: list[int], dtype: str, timed_steps: int | None, compile: bool = False) -> dict:
    """Sample one batch (one `sample` call, batch_size = the batch) and time it.

    timed_steps None: the whole batch is sampled and timed. Otherwise the estimate described in the
    module docstring. Returns {'seconds' (whole batch, measured or estimated), 'per_image', 'estimated',
    'level0_steps', 'timed_steps', 'measured_seconds' (wall time of this call)}.
    """
    device, c = model.device, model.config
    tokens = model.levels[0].config.seq_len
    settings = fractalgen.resolve_settings(model, filter_threshold=FILTER)  # the preset's (the authors')
    steps = tokens if c.kinds[0] == "ar" else min(tokens, settings.num_iter[0])  # AR: one step per patch
    step_ends = []

    def on_step(canvas, filled):
        synchronize(device)
        step_ends.append(time.perf_counter())

    guard = contextlib.nullcontext([]) if timed_steps is None else below_level0(model, steps, timed_steps, device)
    with guard as calls:
        synchronize(device)
        start = time.perf_counter()
        # Precision set once at the entry point: this autocast (fp32 islands kept by the model), which
        # precision "auto" keeps; fp32 asks for fp32 outright.
        with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
            fractalgen.sample(model, labels=labels, settings=settings, seed=0, batch_size=len(labels), on_step=on_step,
                              precision="fp32" if dtype == "fp32" else "auto", compile=compile)
        synchronize(device)
        measured = time.perf_counter() - start
    if timed_steps is None:
        seconds = measured
    else:
        below_measured = sum(s for _, s in calls if s is not None)
        seconds = measured - below_measured + estimate_below(calls)
    return {"seconds": seconds, "per_image": seconds / len(labels), "estimated": timed_steps is not None,
            "level0_steps": len(step_ends), "timed_steps": steps if timed_steps is None else len(
                [s for _, s in calls if s is not None]), "measured_seconds": measured}


class _Enough(Exception):
    """Stops a warm-up after its level-0 steps."""


def warm_up(model, labels: list[int], dtype: str, level0_steps: int, compile: bool = False) -> float:
    """Sample the first `level0_steps` level-0 steps of one batch, every level running, and stop there:
    kernel selection, the allocator and compilation see the batch's shapes. Returns the seconds it took."""
    device = model.device
    done = []

    def on_step(canvas, filled):
        done.append(None)
        if len(done) >= level0_steps:
            raise _Enough

    start = time.perf_counter()
    with contextlib.suppress(_Enough), torch.autocast(device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32"):
        fractalgen.sample(model, labels=labels, settings=fractalgen.resolve_settings(model, filter_threshold=FILTER),
                          seed=0, batch_size=len(labels), on_step=on_step,
                          precision="fp32" if dtype == "fp32" else "auto", compile=compile)
    synchronize(device)
    return time.perf_counter() - start


def describe(result: dict) -> str:
    if not result["estimated"]:
        return f"whole batch measured: {result['seconds']:.1f} s"
    return (f"estimated {result['seconds']:.1f} s for the whole batch from a {result['measured_seconds']:.1f} s run: "
            f"level 0 ran all {result['level0_steps']} steps, the levels below ran in {result['timed_steps']} "
            f"of them and were scaled by patch count to the rest")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="fractalmar_huge_in256")
    p.add_argument("--batch", type=int, default=256, help="images per sample() call (its batch_size)")
    p.add_argument("--reps", type=int, default=2,
                   help="timed runs after a short warm-up (0: one run, warm-up included, is the result)")
    p.add_argument("--timed-steps", type=int, default=8,
                   help="level-0 steps in which the levels below run (the rest are extrapolated)")
    p.add_argument("--full", action="store_true", help="sample whole batches: no extrapolation")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--compile", action="store_true",
                   help="sample(compile=True); the warm-up pays the compilation and is not timed")
    args = p.parse_args(argv)
    if args.batch < 1 or args.reps < 0 or args.timed_steps < 1:
        p.error("--batch and --timed-steps must be >= 1, --reps >= 0")

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = fractalgen.build(args.config).to(device).eval()
    c = model.config
    labels = [i % max(c.num_classes, 1) for i in range(args.batch)]
    timed_steps = None if args.full else args.timed_steps

    mode = f"{args.dtype}, compiled" if args.compile else args.dtype
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    settings = fractalgen.resolve_settings(model)
    print(f"{c.name}: batch {args.batch}, {mode}, iterations {list(settings.num_iter)}, cfg {settings.cfg}, "
          f"temperature {settings.temperature}; device {name}, torch {torch.__version__}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.reps == 0:  # the warm-up run is the result
        warm = time_batch(model, labels, args.dtype, timed_steps, args.compile)
        print(f"warm-up: {describe(warm)}", flush=True)
    else:
        warm_s = warm_up(model, labels, args.dtype, WARM_UP_STEPS, args.compile)
        print(f"warm-up: {warm_s:.1f} s for {WARM_UP_STEPS} level-0 steps", flush=True)
    results = []
    for _ in range(args.reps):
        results.append(time_batch(model, labels, args.dtype, timed_steps, args.compile))
        print(f"run: {describe(results[-1])} ({results[-1]['per_image']:.3f} s/image)", flush=True)
    per_image = statistics.median(r["per_image"] for r in results) if results else warm["per_image"]
    which = f"median of {args.reps}" if results else "the warm-up run"
    how = "estimated" if timed_steps is not None else "measured"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(f"\n{c.name} sampling, batch {args.batch}, {mode}: {per_image:.3f} s/image {how} ({which}); "
          f"paper {PAPER_SECONDS_PER_IMAGE} s/image (H100, batch 1024); goal < {PAPER_SECONDS_PER_IMAGE / 2:.3f} s; "
          f"peak memory {peak:.1f} GiB")
    return per_image


if __name__ == "__main__":
    set_threads("auto")  # on a CPU, its idle cores, as the command line does (runtime.auto_threads)
    main()
