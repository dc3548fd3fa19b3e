"""`fractalgen plot`: a training run's loss curve (or another logged metric) as a PNG (plot.py).

    fractalgen plot runs/mnist                      # runs/mnist/loss.png from runs/mnist/metrics.jsonl
"""
from __future__ import annotations


def register(subparsers):
    add_plot(subparsers)


def add_plot(sub):
    p = sub.add_parser("plot", help="draw a training run's loss curve (or another logged metric) as a PNG",
                       description="Reads RUN/metrics.jsonl (written by fractalgen train) and draws one metric "
                       "against the step.")
    p.add_argument("run", help="a training run folder (or its metrics.jsonl)")
    p.add_argument("--metric", default="loss",
                   help="loss, lr, grad_norm, images_per_s, steps_per_s, wall_s or peak_memory_mb")
    p.add_argument("--out", help="the PNG to write (default: RUN/METRIC.png, replaced on each run)")
    p.set_defaults(func=run_plot)


def run_plot(args) -> int:
    from ..plot import plot_run

    path = plot_run(args.run, out=args.out, metric=args.metric)
    print(f"{args.metric} curve: {path}")
    return 0
