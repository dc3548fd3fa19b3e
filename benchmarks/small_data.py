"""How small can the data and the model be? AR vs MAR, 2 vs 3 levels, at equal CPU time on 4,500 digits.

    python -m benchmarks.small_data --cpu-seconds 300 --out runs/small_data

Every variant trains on the 4,500 embedded training digits with its preset's recipe for the same
budget of CPU time (one thread): two short probes measure the CPU seconds per step, and the run is
given as many steps as fit in the budget, so the cosine schedule ends where the budget does. Then:
held-out bits/dim on the 500 held-out digits (AR: exact; MAR: `--passes` random-mask passes, with
the standard error over digits) and the fraction of class-conditional samples (`--per-class` of
each digit, at the variant's recommended guidance) the bundled classifier recognises.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from .threads import children_cpu

# The two variables: generator kind and number of generator levels (28 = 7x7 patches of 4x4; with
# three levels each 4x4 patch is a 2x2 grid of 2x2 patches). Widths and depths: a 0.40M-parameter shape
# (the earlier bundled AR model), small enough for many steps in a short budget.
VARIANTS = {
    "AR, 2 levels": {"img_sizes": [28, 4, 1], "widths": [96, 32, 32], "blocks": [3, 1, 1], "heads": [4, 2, 2],
                     "kinds": ["ar", "ar"]},
    "MAR, 2 levels": {"img_sizes": [28, 4, 1], "widths": [96, 32, 32], "blocks": [3, 1, 1], "heads": [4, 2, 2],
                      "kinds": ["mar", "mar"], "num_conds": 5, "num_iter": [16, 8]},
    "AR, 3 levels": {"img_sizes": [28, 4, 2, 1], "widths": [96, 32, 32, 32], "blocks": [3, 1, 1, 1],
                     "heads": [4, 2, 2, 2], "kinds": ["ar", "ar", "ar"]},
    "MAR, 3 levels": {"img_sizes": [28, 4, 2, 1], "widths": [96, 32, 32, 32], "blocks": [3, 1, 1, 1],
                      "heads": [4, 2, 2, 2], "kinds": ["mar", "mar", "mar"], "num_conds": 5, "num_iter": [16, 4, 4]},
}
COMMON = {"channels": 1, "num_classes": 10, "num_conds": 1, "attn_dropout": 0.0, "proj_dropout": 0.0,
          "pixel_mean": [0.5], "pixel_std": [0.5], "cfg": 2.0, "temperature": 1.0}
TRAIN_FLAGS = ["--data", "mnist", "--batch-size", "32", "--lr", "2e-3", "--warmup-steps", "40", "--no-flip",
               "--sample-every", "0", "--threads", "1", "--device", "cpu"]


def run(args: list[str]) -> tuple[str, float]:
    """Run `fractalgen ARGS` in a child process; (stdout, CPU seconds it used)."""
    before = children_cpu()
    done = subprocess.run([sys.executable, "-m", "fractalgen", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"fractalgen {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout, children_cpu() - before


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-seconds", type=float, default=300.0, help="training budget per variant")
    parser.add_argument("--out", default="runs/small_data", help="folder for the runs (must not exist)")
    parser.add_argument("--passes", type=int, default=4, help="likelihood passes for MAR variants")
    parser.add_argument("--per-class", type=int, default=20, help="samples per digit for the accuracy")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        parser.error(f"{out} already exists")
    out.mkdir(parents=True)

    rows = []
    for name, shape in VARIANTS.items():
        slug = name.lower().replace(", ", "_").replace(" ", "")
        config = out / f"{slug}.json"
        config.write_text(json.dumps({**COMMON, **shape, "name": slug}))
        # Two probes (10 and 40 steps): their difference is the CPU time per step without start-up.
        probes = [run(["train", "--config", str(config), "--out", str(out / f"{slug}_probe{n}"), "--steps", str(n),
                       *TRAIN_FLAGS])[1] for n in (10, 40)]
        steps = max(20, int(args.cpu_seconds / max((probes[1] - probes[0]) / 30, 1e-3)))
        _, train_cpu = run(["train", "--config", str(config), "--out", str(out / slug), "--steps", str(steps),
                            *TRAIN_FLAGS])
        passes = args.passes if "mar" in shape["kinds"] else 1
        nll = last_json(run(["nll", "--checkpoint", str(out / slug), "--split", "val", "--passes", str(passes),
                             "--threads", "1", "--json"])[0])
        acc = last_json(run(["eval-samples", "--checkpoint", str(out / slug), "--per-class", str(args.per_class),
                             "--threads", "1", "--json"])[0])
        row = {"variant": name, "steps": steps, "train_cpu_seconds": round(train_cpu),
               "bits_per_dim": round(nll["bits_per_dim"], 3), "stderr": round(nll["stderr"], 3),
               "passes": passes, "sample_accuracy": round(acc["accuracy"], 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    print("\n| variant | steps | training CPU s | held-out bits/dim | samples recognised |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['steps']} | {r['train_cpu_seconds']} | {r['bits_per_dim']:.3f} +- "
              f"{r['stderr']:.3f} ({r['passes']} pass) | {100 * r['sample_accuracy']:.1f}% |")


if __name__ == "__main__":
    main()
