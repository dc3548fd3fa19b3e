"""Does the default thread count hurt? The bundled model's commands with --threads auto, 1 and 2.

    python -m benchmarks.threads                # best of 2 interleaved runs of each command
    python -m benchmarks.threads --reps 3 --threads auto 1

Each command runs as its own process (`python -m fractalgen ...`), so the wall time includes
start-up and loading, as a user sees it. Runs of the thread settings alternate, and each time
is the best of `--reps`. The load average is printed at the start and the end: run this while
another job keeps the machine busy to see the case issue 16 is about.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def commands(folder: Path) -> dict[str, list[str]]:
    """The bundled model's commands, small enough to repeat (name -> arguments after `fractalgen`)."""
    digit = folder / "digit.png"
    return {
        "sample": ["sample", "--checkpoint", "mnist", "--per-class", "4", "--out", str(folder / "sample")],
        "nll": ["nll", "--checkpoint", "mnist", "--split", "val", "--limit", "100"],
        "inpaint": ["inpaint", "--checkpoint", "mnist", "--image", str(digit), "--box", "0,14,28,28",
                    "--label", "3", "--n", "4", "--out", str(folder / "inpaint")],
        "train": ["train", "--preset", "mnist_ar", "--data", "mnist", "--out", str(folder / "train"),
                  "--steps", "10", "--batch-size", "32", "--sample-every", "0", "--save-every", "100"],
    }


def write_digit(path: Path):
    """One held-out MNIST digit as a PNG (the inpainting input)."""
    import numpy as np
    from PIL import Image

    from fractalgen.data import mnist_split

    images, _ = mnist_split("val")
    Image.fromarray(np.asarray(images[0], dtype=np.uint8)).save(path)


def run(args: list[str], threads: str, scratch: Path) -> tuple[float, float]:
    """Wall and CPU seconds of `python -m fractalgen ARGS --threads T` (outputs go to a fresh folder)."""
    out = scratch / f"run{time.monotonic_ns()}"
    argv = [a.replace(str(scratch), str(out)) for a in args]
    out.mkdir()
    if "inpaint" in argv:
        (out / "digit.png").write_bytes((scratch / "digit.png").read_bytes())
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cpu_start = children_cpu()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fractalgen", *argv, "--threads", threads], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fractalgen {' '.join(argv)} failed:\n{done.stderr}")
    return time.perf_counter() - start, children_cpu() - cpu_start


def children_cpu() -> float:
    """User + system CPU seconds of the finished child processes (less moved by other jobs than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.threads", description=__doc__.split("\n")[0])
    p.add_argument("--threads", nargs="+", default=["auto", "1", "2"])
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--commands", nargs="+", default=["sample", "nll", "inpaint", "train"])
    args = p.parse_args(argv)
    from fractalgen.runtime import auto_threads

    load_start = os.getloadavg()
    print(f"load average at the start {load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f} "
          f"({os.cpu_count()} CPUs); auto would pick {auto_threads()} thread(s) now", flush=True)
    best: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        write_digit(scratch / "digit.png")
        todo = commands(scratch)
        for rep in range(args.reps):
            for name in args.commands:
                order = args.threads if rep % 2 == 0 else args.threads[::-1]
                for threads in order:
                    seconds, cpu_seconds = run(todo[name], threads, scratch)
                    if seconds < best.get((name, threads), float("inf")):
                        best[name, threads], cpu[name, threads] = seconds, cpu_seconds
                    print(f"  rep {rep + 1}: {name} --threads {threads}: {seconds:.2f} s "
                          f"(CPU {cpu_seconds:.2f} s)", flush=True)
    load_end = os.getloadavg()
    print(f"\npython -m benchmarks.threads {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"load average at the start {load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f}; "
          f"at the end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f} ({os.cpu_count()} CPUs); "
          f"best of {args.reps}\n")
    header = " | ".join(f"--threads {t}" for t in args.threads)
    print(f"| command | {header} | default (auto) / one thread |")
    print("|---" * (len(args.threads) + 2) + "|")
    for name in args.commands:
        times = " | ".join(f"{best[name, t]:.2f} s (CPU {cpu[name, t]:.2f} s)" for t in args.threads)
        ratio = f"{best[name, 'auto'] / best[name, '1']:.2f}x" if {"auto", "1"} <= set(args.threads) else "-"
        print(f"| `fractalgen {name}` | {times} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
