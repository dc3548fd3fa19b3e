"""How good is an MNIST model? Held-out likelihood, sample accuracy and classifier FID against guidance.

    python -m benchmarks.model_quality --checkpoint mnist                     # the bundled AR model
    python -m benchmarks.model_quality --checkpoint mnist_mar --passes 8      # MAR: several mask passes
    python -m benchmarks.model_quality --checkpoint runs/x --cfg 1 2 3 5 --per-class 50
    python -m benchmarks.model_quality --checkpoint mnist --skip-nll --precision bf16   # samples in bf16 autocast

For each guidance scale: `--per-class` samples of every digit (seed `--seed`, drawn at `--precision`
as `fractalgen.sample` takes it), the fraction the bundled classifier recognises as their class, and
the classifier FID of those samples against the 500 held-out digits (features: the classifier's
penultimate layer; 500 training digits score about 6.7 against the same reference, the floor of
this measure at this sample size). Held-out bits/dim:
exact for AR levels (one pass); MAR levels draw random masks, so `--passes` passes are averaged and
the standard error over digits is reported with it.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

import fractalgen
from fractalgen.classifier import features, load_mnist_classifier, predict
from fractalgen.config import CFG_SCHEDULES
from fractalgen.data import mnist_split
from fractalgen.metrics.fid import fid_from_statistics, statistics
from fractalgen.nn import PRECISIONS, precision_in_effect


def held_out_bits(model, passes: int, seed: int) -> tuple[float, float]:
    """Mean bits/dim over the 500 held-out digits and its standard error."""
    images = torch.from_numpy(mnist_split("val")[0])[:, None]  # (500, 1, 28, 28)
    per_image = fractalgen.nll_per_image(model, images, passes=passes, generator_seed=seed)
    return float(per_image.mean()), float(per_image.std() / math.sqrt(per_image.numel()))


def sample_scores(model, cfg: float, per_class: int, seed: int, classifier, reference, cfg_schedule=None,
                  precision: str = "auto") -> dict:
    """Accuracy and classifier FID of `per_class` samples of each digit at guidance `cfg`."""
    labels = torch.arange(10).repeat_interleave(per_class)
    started = time.perf_counter()
    images = fractalgen.sample(model, labels=labels.tolist(), cfg=cfg, cfg_schedule=cfg_schedule, seed=seed,
                               precision=precision)
    seconds = time.perf_counter() - started
    accuracy = float((predict(images, classifier) == labels).float().mean())
    fid = fid_from_statistics(statistics(features(images, classifier).numpy()), reference)
    return {"cfg": cfg, "cfg_schedule": fractalgen.resolve_settings(model, cfg_schedule=cfg_schedule).cfg_schedule,
            "precision": precision_in_effect(precision, model.device),
            "accuracy": round(accuracy, 4), "classifier_fid": round(fid, 2),
            "samples": len(labels), "seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mnist")
    parser.add_argument("--cfg", type=float, nargs="*", help="guidance scales (default: the recommended one)")
    parser.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, help="default: the model's recommended")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--passes", type=int, help="likelihood passes (default: 1 for AR, 8 for MAR)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="sampling precision, as fractalgen.sample takes it (auto: fp32 on a CPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-nll", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = fractalgen.load(args.checkpoint).eval()
    result = {"checkpoint": args.checkpoint, "parameters": sum(p.numel() for p in model.parameters())}
    if not args.skip_nll:
        passes = args.passes or (1 if set(model.config.kinds) == {"ar"} else 8)
        bits, stderr = held_out_bits(model, passes, args.seed)
        result.update(bits_per_dim=round(bits, 4), stderr=round(stderr, 4), passes=passes)
        print(f"held-out bits/dim: {bits:.4f} +- {stderr:.4f} ({passes} pass(es), 500 digits)", flush=True)

    classifier = load_mnist_classifier()
    reference = statistics(features(torch.from_numpy(mnist_split("val")[0])[:, None], classifier).numpy())
    scales = args.cfg or [None]
    curve = []
    for cfg in scales:
        if cfg is None:
            cfg = fractalgen.resolve_settings(model).cfg
        row = sample_scores(model, cfg, args.per_class, args.seed, classifier, reference, args.cfg_schedule,
                            args.precision)
        curve.append(row)
        print(f"cfg {cfg:g} ({row['cfg_schedule']}, {row['precision']}): {100 * row['accuracy']:.1f}% recognised, "
              f"classifier FID {row['classifier_fid']:.1f} "
              f"({row['samples']} samples, {row['seconds']} s)", flush=True)
    result["curve"] = curve
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
