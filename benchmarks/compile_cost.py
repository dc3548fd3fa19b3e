"""What `sample(compile=True)` costs before its first images: the first call from an empty compile cache.

    python -m benchmarks.compile_cost                  # cifar_ar and cifar_mar, 2 threads
    python -m benchmarks.compile_cost --models cifar_mar --threads 1

Each model runs in a fresh process with inductor's cache pointed at a new, empty folder
(`TORCHINDUCTOR_CACHE_DIR`), so nothing compiled earlier is reused. The process builds the preset
(seeded weights) and samples 16 images (`benchmarks.speed`'s settings, 16 iterations per level)
twice with compile=True: the first call compiles every graph, the second shows the cost of
sampling once they exist. Needs the C++ compiler torch.compile runs on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from .speed import SAMPLING

CHILD = """
import json, sys, time
import torch
import fractalgen
torch.set_num_threads(int(sys.argv[2]))
torch.manual_seed(0)
model = fractalgen.build(sys.argv[1]).eval()
settings = dict(labels=[i % 10 for i in range(16)], num_iter=(16,) * model.config.num_levels, threads=None,
                compile=True, **json.loads(sys.argv[3]))
for _ in range(2):
    start = time.perf_counter()
    fractalgen.sample(model, **settings)
    print(f"{time.perf_counter() - start:.1f}")
"""


def first_calls(model: str, threads: int) -> list[str]:
    """Seconds of the first and second compiled call, in a fresh process with an empty compile cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        out = subprocess.run([sys.executable, "-c", CHILD, model, str(threads), json.dumps(SAMPLING)], env=env,
                             check=True, capture_output=True, text=True)
    return out.stdout.split()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cifar_ar", "cifar_mar"])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    print(f"sample(compile=True) of 16 images, {args.threads} thread(s), empty compile cache; seconds")
    print("| model | first call (compiles) | second call |")
    print("|---|---|---|")
    for model in args.models:
        first, second = first_calls(model, args.threads)
        print(f"| {model} | {first} | {second} |")


if __name__ == "__main__":
    main()
