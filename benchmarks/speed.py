"""Speed benchmark (issue 5): one training step and sampling, for the AR and MAR benchmark configs.

    python -m benchmarks.speed                         # cifar_ar and cifar_mar, seeded random weights
    python -m benchmarks.speed --kinds mar --train-reps 5 --sample-reps 3 --threads 1
    python -m benchmarks.speed --checkpoint ckpt.pth --config cifar_mar   # given (official) weights

For each model it measures
  - one AdamW training step (loss, backward, clip 3.0, step) at batch 32: time per step;
  - sampling 16 images (cfg 2.0 linear, temperature 1.0, filter 1e-4, iterations 16 per level):
    time per image;
and prints time, images/s, achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode on an untimed
run, divided by the median time), its ratio to a large fp32 matmul timed in the same run (the
machine's practical peak), and peak memory (CPU: the process's peak resident set during the
measurement; CUDA: peak allocated). Times are medians over the repetitions; "CPU time" is the
process CPU time (all threads) of the same runs, which says more than wall time on a loaded machine.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

import fractalgen


@dataclass
class Result:
    model: str
    task: str  # "train" (seconds per step) or "sample" (seconds per image)
    seconds: float  # median per step / per image
    cpu_seconds: float  # process CPU time (all threads) per step / per image, median: less sensitive to load
    images_per_s: float
    gflops: float  # achieved GFLOP/s
    peak_mib: float
    reps: int


# ---- measurement helpers ---------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # hand freed heap back to the OS, so an earlier benchmark's allocations do not count
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    if device.type != "cuda" and os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:  # "5" resets the kernel's peak-RSS counter (VmHWM)
            f.write("5")


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # fallback: peak of the whole process so far
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, reps: int, device) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of each of `reps` calls."""
    times, cpu = [], []
    for _ in range(reps):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return times, cpu


def matmul_gflops(device, n: int = 2048, reps: int = 5) -> float:
    """The practical fp32 peak: GFLOP/s of an n x n x n matmul (median of reps, after a warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    return 2 * n**3 / statistics.median(timed(lambda: torch.mm(a, b), reps, device)[0]) / 1e9


# ---- the two benchmarks -----------------------------------------------------------------

def bench_train(name, model, batch, reps, device) -> Result:
    c = model.config
    g = torch.Generator().manual_seed(0)
    shape = (batch, c.channels, c.img_size, c.img_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    labels = torch.randint(0, max(c.num_classes, 1), (batch,), generator=g) if c.num_classes else None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss(images.to(device), None if labels is None else labels.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()

    step()  # warm-up: allocates the optimizer state
    flops = count_flops(step)
    reset_peak_memory(device)
    times, cpu = timed(step, reps, device)
    seconds = statistics.median(times)
    return Result(name, "train", seconds, statistics.median(cpu), batch / seconds, flops / seconds / 1e9,
                  peak_memory_mib(device), reps)


def bench_sample(name, model, n, reps, device, num_iter) -> Result:
    c = model.config
    labels = [i % c.num_classes for i in range(n)] if c.num_classes else None
    model.eval()

    def run(count=n):
        fractalgen.sample(model, labels=None if labels is None else labels[:count], n=count, cfg=2.0,
                          cfg_schedule="linear", temperature=1.0, filter_threshold=1e-4, num_iter=num_iter,
                          seed=0)

    # Sampling FLOPs are exactly linear in the batch (every op is per row), so count one image:
    # FlopCounterMode routes each of the sampler's many small ops through Python and is slow.
    flops_per_image = count_flops(lambda: run(1))  # also the warm-up
    reset_peak_memory(device)
    times, cpu = timed(run, reps, device)
    seconds = statistics.median(times) / n
    return Result(name, "sample", seconds, statistics.median(cpu) / n, 1 / seconds,
                  flops_per_image / seconds / 1e9, peak_memory_mib(device), reps)


# ---- report -------------------------------------------------------------------------------

def table(results: list[Result], peak: float) -> str:
    lines = [
        ("| model | benchmark | time | CPU time | images/s | GFLOP/s | / matmul peak | peak memory |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        unit = "s/step" if r.task == "train" else "s/image"
        what = "training step" if r.task == "train" else "sampling"
        lines.append(f"| {r.model} | {what} | {r.seconds:.3f} {unit} | {r.cpu_seconds:.3f} s | "
                     f"{r.images_per_s:.2f} | {r.gflops:.2f} | "
                     f"{r.gflops / peak:.1%} | {r.peak_mib:.0f} MiB |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=["ar", "mar"], choices=["ar", "mar"],
                   help="benchmark presets cifar_<kind> (ignored with --checkpoint)")
    p.add_argument("--checkpoint", help="benchmark this checkpoint (ours or the official format) instead")
    p.add_argument("--config", help="preset or config JSON for an official checkpoint without a model name")
    p.add_argument("--tasks", nargs="+", default=["train", "sample"], choices=["train", "sample"])
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--images", type=int, default=16, help="images sampled per run")
    p.add_argument("--num-iter", type=int, default=16, help="sampling iterations at every level")
    p.add_argument("--train-reps", type=int, default=5)
    p.add_argument("--sample-reps", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.checkpoint:
        try:
            model = fractalgen.load(args.checkpoint, config=args.config)
        except (fractalgen.CheckpointError, fractalgen.ConfigError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        models = [(model.config.name, model)]
    else:
        models = []
        for kind in args.kinds:
            torch.manual_seed(0)  # the same weights every run
            models.append((f"cifar_{kind}", fractalgen.build(f"cifar_{kind}")))

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, load average {os.getloadavg()}", flush=True)
    peaks = [matmul_gflops(device)]
    results = []
    for name, model in models:
        model.to(device)
        num_iter = (args.num_iter,) * model.config.num_levels
        if "train" in args.tasks:
            results.append(bench_train(name, model, args.batch, args.train_reps, device))
            print(f"  {name} train: {results[-1].seconds:.3f} s/step", flush=True)
        if "sample" in args.tasks:
            results.append(bench_sample(name, model, args.images, args.sample_reps, device, num_iter))
            print(f"  {name} sample: {results[-1].seconds:.3f} s/image", flush=True)
    peaks.append(matmul_gflops(device))
    peak = max(peaks)
    print(f"\nfp32 matmul 2048^3: {peak:.1f} GFLOP/s (best of the start and end measurements "
          f"{', '.join(f'{x:.1f}' for x in peaks)}); load average at the end {os.getloadavg()}")
    print(f"training batch {args.batch}; sampling {args.images} images, cfg 2.0 linear, temperature 1.0, "
          f"filter 1e-4, iterations {args.num_iter} per level; medians of {args.train_reps} (train) / "
          f"{args.sample_reps} (sample) runs\n")
    print(table(results, peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
