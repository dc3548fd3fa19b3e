"""The first `fractalgen.sample` call from Python on a busy machine, by thread setting.

    python -m benchmarks.first_call                 # 2 busy loops, best of 2 fresh processes each
    python -m benchmarks.first_call --busy 0 --reps 3

Each setting runs in a fresh process (`import fractalgen; fractalgen.load("mnist")`, then three
calls of `fractalgen.sample(model, labels=[0, 1, 2], seed=0)`), while `--busy` other processes spin
on the CPUs. Settings: `auto` (the library's default threads="auto"), `one`
(torch.set_num_threads(1) by the caller), `torch` (threads=None: torch's default, one per core,
which is what the library ran with before it took threads=).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, time
import torch
setting = sys.argv[1]
if setting == "one":
    torch.set_num_threads(1)
import fractalgen
model = fractalgen.load("mnist")
threads = None if setting == "torch" else "auto"
times = []
for _ in range(3):
    start = time.perf_counter()
    fractalgen.sample(model, labels=[0, 1, 2], seed=0, threads=threads)
    times.append(time.perf_counter() - start)
print(" ".join(f"{t:.3f}" for t in times))
"""


def run(setting: str, timeout: float) -> list[float] | None:
    """Seconds of the three calls in a fresh process (None: it ran past `timeout`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, setting], env=env, capture_output=True, text=True,
                              timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    return [float(t) for t in done.stdout.split()]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.first_call", description=__doc__.split("\n")[0])
    p.add_argument("--busy", type=int, default=2, help="processes spinning on the CPUs meanwhile")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=["auto", "one", "torch"])
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per process at most")
    args = p.parse_args(argv)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        print(f"load average at the start {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs), {args.busy} busy loops")
        results = {s: [] for s in args.settings}
        for _ in range(args.reps):  # settings alternate, so a change of load hits them alike
            for setting in args.settings:
                results[setting].append(run(setting, args.timeout))
        print(f"load average at the end {os.getloadavg()[0]:.2f}; best of {args.reps}\n")
        print("| setting | first call | second call | third call |\n|---|---|---|---|")
        for setting, runs in results.items():
            finished = [r for r in runs if r is not None]
            if not finished:
                print(f"| {setting} | > {args.timeout:.0f} s (with loading) | | |")
                continue
            best = [min(r[i] for r in finished) for i in range(3)]
            print(f"| {setting} | " + " | ".join(f"{t:.2f} s" for t in best) + " |")
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


if __name__ == "__main__":
    main()
