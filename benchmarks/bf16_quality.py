"""Does sampling in bf16 cost the bundled AR model quality? fp32 against bf16 autocast, one table.

    python -m benchmarks.bf16_quality                     # 4 x 1,000 samples and 2 likelihood passes
    python -m benchmarks.bf16_quality --per-class 10      # a quick look

For each precision and each seed: `--per-class` samples of every digit at the model's recommended
settings, the fraction the bundled classifier recognises as their class and their classifier FID
against the 500 held-out digits (the measures of benchmarks.model_quality). A bf16 run draws other
images than an fp32 run with the same seed, so the spread between two seeds at one precision is the
yardstick for the difference between precisions. Then the held-out bits/dim (exact for AR levels,
so no seed) with the forward pass in fp32 and in bf16 autocast: `fractalgen nll` has no precision
flag, so the likelihood runs inside `precision_context`, the autocast `fractalgen.sample` uses.
"""
from __future__ import annotations

import argparse
import json

import torch

import fractalgen
from benchmarks.model_quality import held_out_bits, sample_scores
from fractalgen.classifier import features, load_mnist_classifier
from fractalgen.data import mnist_split
from fractalgen.metrics.fid import statistics
from fractalgen.nn import precision_context

PRECISIONS = ("fp32", "bf16")


def held_out_bits_at(model, precision: str) -> tuple[float, float]:
    """Held-out bits/dim and its standard error with the model's forward pass at `precision`."""
    with precision_context(precision, model.device):
        return held_out_bits(model, passes=1, seed=0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mnist", help="an AR model of MNIST digits (default: the bundled one)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = fractalgen.load(args.checkpoint).eval()
    classifier = load_mnist_classifier()
    reference = statistics(features(torch.from_numpy(mnist_split("val")[0])[:, None], classifier).numpy())
    cfg = fractalgen.resolve_settings(model).cfg
    rows = []
    for precision in PRECISIONS:
        bits, stderr = held_out_bits_at(model, precision)
        for seed in args.seeds:
            row = sample_scores(model, cfg, args.per_class, seed, classifier, reference, precision=precision)
            rows.append({**row, "seed": seed, "bits_per_dim": round(bits, 4), "bits_stderr": round(stderr, 4)})

    print(f"{args.checkpoint}: {10 * args.per_class} samples per row at cfg {cfg:g} ({rows[0]['cfg_schedule']}), "
          f"{args.threads} thread(s); bits/dim on the 500 held-out digits (exact, the same for every seed)")
    print("| precision | seed | samples recognised | classifier FID | sampling s | held-out bits/dim |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['precision']} | {row['seed']} | {100 * row['accuracy']:.1f}% | {row['classifier_fid']:.1f} "
              f"| {row['seconds']:.0f} | {row['bits_per_dim']:.4f} +- {row['bits_stderr']:.4f} |")
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "rows": rows}))


if __name__ == "__main__":
    main()
