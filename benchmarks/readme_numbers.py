"""Re-measure the bundled models' numbers the README states, and print each beside the README's figure.

    python -m benchmarks.readme_numbers              # every entry (about 30 minutes on an idle 2-core machine)
    python -m benchmarks.readme_numbers --only nll   # the entries whose name contains "nll"

Each entry is a command anyone can type, the value read from its output, and the figure the README
prints (tests/test_readme.py checks that every figure below appears in README.md, so the two cannot
drift apart silently). The speed and compression tables come from their own benchmarks
(`python -m benchmarks.speed --reference DIR`, `python -m benchmarks.codec`), listed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    readme: str  # the figure as the README prints it
    command: tuple[str, ...]  # run with this Python: ("-m", "fractalgen", ...) or ("-m", "benchmarks.x", ...)
    key: str  # path into the command's last-line JSON, e.g. "curve.0.accuracy"
    digits: int = 3  # how the measured value is printed
    percent: bool = False


FG = ("-m", "fractalgen")
ENTRIES = [
    Entry("nll mnist (AR, exact)", "1.062", (*FG, "nll", "--checkpoint", "mnist", "--split", "val", "--json"),
          "bits_per_dim"),
    Entry("samples recognised, mnist cfg 4 (1,000)", "98.7%",
          (*FG, "eval-samples", "--checkpoint", "mnist", "--per-class", "100", "--json"), "accuracy", 1, True),
    Entry("classifier FID, mnist cfg 4 (500)", "21.8",
          ("-m", "benchmarks.model_quality", "--checkpoint", "mnist", "--skip-nll", "--cfg", "4", "--per-class", "50",
           "--json"), "curve.0.classifier_fid", 1),
    Entry("nll mnist_mar (MAR, 16 passes)", "1.172",
          (*FG, "nll", "--checkpoint", "mnist_mar", "--passes", "16", "--json"), "bits_per_dim"),
    Entry("samples recognised, mnist_mar cfg 6 falling (300)", "99.7%",
          ("-m", "benchmarks.model_quality", "--checkpoint", "mnist_mar", "--skip-nll", "--cfg", "6",
           "--per-class", "30", "--json"), "curve.0.accuracy", 1, True),
    Entry("classifier FID, mnist_mar cfg 6 falling (300)", "71.5",
          ("-m", "benchmarks.model_quality", "--checkpoint", "mnist_mar", "--skip-nll", "--cfg", "6",
           "--per-class", "30", "--json"), "curve.0.classifier_fid", 1),
    Entry("edits recognised as the target, mnist_mar (500, seed 0)", "91.0%",
          ("-m", "benchmarks.edit_accuracy", "--quick", "--threads", "1", "--json"), "edit_accuracy", 1, True),
    Entry("edits recognised as the target, mnist_mar (500, seed 1)", "89.8%",
          ("-m", "benchmarks.edit_accuracy", "--quick", "--seed", "1", "--threads", "1", "--json"), "edit_accuracy", 1,
          True),
]
OTHER_TABLES = ["python -m benchmarks.speed --reference DIR", "python -m benchmarks.codec"]


def dig(result, key: str):
    for part in key.split("."):
        result = result[int(part)] if isinstance(result, list) else result[part]
    return result


def measure(entry: Entry) -> str:
    done = subprocess.run([sys.executable, *entry.command], capture_output=True, text=True, check=False,
                          env={"OMP_NUM_THREADS": "1", **os.environ})
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    value = float(dig(json.loads(done.stdout.strip().splitlines()[-1]), entry.key))
    return f"{100 * value:.{entry.digits}f}%" if entry.percent else f"{value:.{entry.digits}f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run only the entries whose name contains this text")
    args = parser.parse_args(argv)
    print("| measurement | README | measured now | seconds | command |")
    print("|---|---|---|---|---|")
    for entry in ENTRIES:
        if args.only and args.only not in entry.name:
            continue
        started = time.perf_counter()
        value = measure(entry)
        command = "python " + " ".join(entry.command)
        print(f"| {entry.name} | {entry.readme} | {value} | {time.perf_counter() - started:.0f} | `{command}` |",
              flush=True)
    print("\nTheir own tables: " + "; ".join(f"`{c}`" for c in OTHER_TABLES))


if __name__ == "__main__":
    main()
