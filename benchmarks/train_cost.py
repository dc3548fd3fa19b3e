"""Training cost of the small presets on this machine: steps/s, images/s and peak memory.

    python -m benchmarks.train_cost --steps 40 --batch-size 32 --threads 1
    python -m benchmarks.train_cost --steps 40 --threads 1 --precision bf16    # train --precision bf16

Each preset trains in a fresh process (`fractalgen train ...`, so the peak memory is that process's
own; MNIST presets on the embedded digits, the others on random images of their size) and the
numbers come from the run's metrics.jsonl: speed over the logged
windows after the first (which holds start-up), peak resident memory from the last line. The
machine's load average is printed beside them: on a shared machine it moves the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from fractalgen.config import get_config
from fractalgen.nn import PRECISIONS
from fractalgen.trainlog import read_metrics

SMALL_PRESETS = ["mnist_ar", "mnist_mar", "tiny_ar", "tiny_mar", "tiny_mar_gp4"]


def data_for(preset: str, folder: Path) -> str:
    """The embedded MNIST digits for the 28x28 grayscale presets; random images of the right shape for the
    others (the cost of a step does not depend on what the pixels show)."""
    config = get_config(preset)
    if (config.img_size, config.channels) == (28, 1):
        return "mnist"
    rng = np.random.default_rng(0)
    shape = (512, config.img_size, config.img_size, config.channels)
    path = folder / f"random_{config.img_size}x{config.img_size}x{config.channels}.npz"
    np.savez(path, images=rng.integers(0, 256, shape, dtype=np.uint8),
             labels=np.arange(shape[0]) % max(1, config.num_classes))
    return str(path)


def measure(preset: str, steps: int, batch_size: int, threads: int, folder: Path, precision: str = "auto") -> dict:
    out = folder / preset
    data = data_for(preset, folder)
    command = [sys.executable, "-m", "fractalgen", "train", "--preset", preset, "--data", data, "--out", str(out),
               "--steps", str(steps), "--batch-size", str(batch_size), "--lr", "1e-3", "--warmup-steps", "5",
               "--sample-every", "0", "--save-every", str(steps), "--threads", str(threads), "--device", "cpu",
               "--precision", precision]
    proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode:
        raise SystemExit(f"{preset}: training failed: {proc.stderr.strip().splitlines()[-1]}")
    records = read_metrics(out)
    first, last = (records[0], records[-1]) if len(records) > 1 else ({"step": 0, "wall_s": 0.0}, records[-1])
    # From the end of the first logged window: it holds start-up (first batches, allocator warm-up).
    steps_timed, seconds = last["step"] - first["step"], last["wall_s"] - first["wall_s"]
    return {"preset": preset, "data": "mnist" if data == "mnist" else "random", "batch_size": batch_size,
            "steps": steps, "steps_per_s": steps_timed / seconds,
            "images_per_s": steps_timed * batch_size / seconds, "peak_memory_mb": last["peak_memory_mb"],
            "steps_timed": steps_timed, "final_loss": last["loss"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(SMALL_PRESETS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="fractalgen train --precision (auto: fp32 on the CPU)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object per preset")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for preset in args.presets.split(","):
            before = os.getloadavg()[0]
            row = measure(preset, args.steps, args.batch_size, args.threads, Path(folder), args.precision)
            row["load_average"] = (before + os.getloadavg()[0]) / 2
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    print(f"{args.steps} steps per preset, {args.threads} torch thread(s), precision {args.precision}, "
          f"{os.cpu_count()} CPUs\n")
    print("| preset | data | batch | steps/s | images/s | peak memory (MiB, whole process) | load average |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['preset']}` | {r['data']} | {r['batch_size']} | {r['steps_per_s']:.2f} | "
              f"{r['images_per_s']:.1f} | "
              f"{r['peak_memory_mb']:.0f} | {r['load_average']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
