"""Class-conditional editing (issue 4): do held-out digits edited to class k look like a k?

    python -m benchmarks.edit_accuracy                       # bundled MNIST model, all 500 held-out digits
    python -m benchmarks.edit_accuracy --limit 100 --cfg 3.0 --checkpoint run/model.safetensors

For every held-out MNIST digit (never seen in training) the top quarter of the rows is kept and
the lower three quarters are regenerated with `fractalgen.edit` under another label k (digit i
with label y gets k = (y + 1 + i mod 9) mod 10, so every other class is used equally often).
The bundled MNIST classifier then reads the edits. Reports the fraction recognised as k (the
target: at least 80%), the fraction still read as the original label, and for reference the
classifier's accuracy on the unedited digits and on digits "edited" to their own label.

It also reports how the classifier reads *real* edits, with no model involved: each digit's kept
rows pasted onto a training digit of the target class, either a random one or the one whose top
rows are nearest (squared distance): how often a real digit of the target class under that top
quarter is still recognised as the target. A faithful editor cannot be expected to beat it by much.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fractalgen
from fractalgen.classifier import load_mnist_classifier, predict
from fractalgen.cli.options import integer_list
from fractalgen.conditional import top_rows_known
from fractalgen.config import CFG_SCHEDULES
from fractalgen.data import mnist_split


def pasted_reference(images, targets, kept_rows: int, classifier, seed: int = 0) -> dict:
    """Real-digit edits: the kept rows of images (N, 1, H, W) pasted onto training digits of the target
    class, a random one and the one with the nearest top rows; the fraction read as the target each way."""
    train_images, train_labels = (torch.from_numpy(a) for a in mnist_split("train"))
    g = torch.Generator().manual_seed(seed)
    random_pick, nearest_pick = [], []
    for image, k in zip(images[:, 0], targets.tolist(), strict=True):
        pool = (train_labels == k).nonzero(as_tuple=True)[0]
        random_pick.append(pool[torch.randint(len(pool), (1,), generator=g)].item())
        distance = (train_images[pool, :kept_rows].float() - image[:kept_rows].float()).pow(2).sum((1, 2))
        nearest_pick.append(pool[distance.argmin()].item())
    result = {}
    for name, picks in (("random", random_pick), ("nearest_top", nearest_pick)):
        pasted = train_images[picks].clone()[:, None]
        pasted[:, :, :kept_rows] = images[:, :, :kept_rows]
        result[name] = (predict(pasted, classifier) == targets).float().mean().item()
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="mnist_mar", help="default: the bundled MAR model")
    parser.add_argument("--limit", type=int, default=500, help="held-out digits to edit (at most 500)")
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of the rows kept (from the top)")
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the model's recommended)")
    parser.add_argument("--cfg-schedule", choices=CFG_SCHEDULES, help="default: the model's recommended")
    parser.add_argument("--temperature", type=float, help="default: the model's recommended")
    parser.add_argument("--filter-threshold", type=float, help="default: the model's recommended")
    parser.add_argument("--num-iter", type=integer_list,
                        help="MAR steps per level, e.g. 16,8 (default: the model's recommended)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="skip the own-label reference run")
    parser.add_argument("--json", action="store_true", help="print one JSON object with the numbers as the last line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = fractalgen.load(args.checkpoint, device=args.device)
    classifier = load_mnist_classifier()
    images, labels = mnist_split("val")
    images = torch.from_numpy(images[: args.limit])[:, None]  # (N, 1, 28, 28)
    labels = torch.from_numpy(labels[: args.limit]).long()
    n = images.shape[0]
    targets = (labels + 1 + torch.arange(n) % 9) % 10
    known = top_rows_known(model.config.img_size, args.keep)

    def edit_all(goal):
        out = []
        for i in range(0, n, args.batch):
            out.append(fractalgen.edit(model, images[i:i + args.batch], goal[i:i + args.batch], known=known,
                                       cfg=args.cfg, cfg_schedule=args.cfg_schedule,
                                       temperature=args.temperature, filter_threshold=args.filter_threshold,
                                       num_iter=args.num_iter, seed=args.seed + i))
        return torch.cat(out)

    start = time.perf_counter()
    edited = edit_all(targets)
    seconds = time.perf_counter() - start
    read = predict(edited, classifier)
    same = None if args.quick else predict(edit_all(labels), classifier)  # regenerated under the own label
    settings = fractalgen.resolve_settings(model, cfg=args.cfg, cfg_schedule=args.cfg_schedule,
                                           temperature=args.temperature, filter_threshold=args.filter_threshold,
                                           num_iter=args.num_iter)
    result = {
        "checkpoint": str(args.checkpoint), "digits": n, "kept_rows": int(known[:, 0].sum()),
        "cfg": settings.cfg, "cfg_schedule": settings.cfg_schedule, "temperature": settings.temperature,
        "filter_threshold": settings.filter_threshold, "num_iter": list(settings.num_iter), "seed": args.seed,
        "edit_accuracy": (read == targets).float().mean().item(),
        "still_original": (read == labels).float().mean().item(),
        "own_label_accuracy": None if same is None else (same == labels).float().mean().item(),
        "classifier_accuracy_unedited": (predict(images, classifier) == labels).float().mean().item(),
        "per_target": {k: (read[targets == k] == k).float().mean().item() for k in range(10)},
        "real_digit_reference": pasted_reference(images, targets, int(known[:, 0].sum()), classifier, args.seed),
        "seconds_editing": round(seconds, 1),
    }
    print(f"edited {n} held-out digits (top {result['kept_rows']} rows kept) with cfg {result['cfg']} "
          f"({result['cfg_schedule']}), temperature {result['temperature']}, filter {result['filter_threshold']:g}: "
          f"{100 * result['edit_accuracy']:.1f}% recognised as the target class "
          f"({100 * result['still_original']:.1f}% still read as the original digit)")
    print(f"reference: classifier on the unedited digits {100 * result['classifier_accuracy_unedited']:.1f}%"
          + ("" if same is None else f", on digits regenerated under their own label "
                                     f"{100 * result['own_label_accuracy']:.1f}%"))
    real = result["real_digit_reference"]
    print(f"reference, real digits of the target class under the same kept rows (no model): "
          f"{100 * real['random']:.1f}% (a random one), {100 * real['nearest_top']:.1f}% (the nearest top rows)")
    print("per target class: " + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in result["per_target"].items()))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
