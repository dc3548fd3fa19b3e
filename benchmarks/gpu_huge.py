"""FractalMAR-H sampling speed on a GPU (issue 5): seconds per image at batch 256 in bf16.

    python -m benchmarks.gpu_huge                        # fractalmar_huge_in256, random weights, batch 256
    python -m benchmarks.gpu_huge --config tiny_mar_gp4 --batch 2 --device cpu --dtype fp32   # dry run on CPU

The paper reports 1.29 s per image on one H100 at batch 1024; the goal is under 0.65 s.
Random weights are fine for speed: the work per image does not depend on the weights.
Official sampling settings (SPEC 8): iterations 64,16,16, cfg 19.0 linear, temperature 1.1, filter 1e-4.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fractalgen

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="fractalmar_huge_in256")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=2, help="timed runs after one warm-up run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = fractalgen.build(args.config).to(device).eval()
    c = model.config
    labels = [i % max(c.num_classes, 1) for i in range(args.batch)]

    def run():
        # Precision set once at the entry point: this autocast (fp32 islands kept by the model), which
        # precision "auto" keeps; fp32 asks for fp32 outright.
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32"):
            out = fractalgen.sample(model, labels=labels, cfg=c.cfg, cfg_schedule=c.cfg_schedule,
                                    temperature=c.temperature, filter_threshold=1e-4,
                                    num_iter=c.default_num_iter, seed=0,
                                    precision="fp32" if args.dtype == "fp32" else "auto")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{c.name}: batch {args.batch}, {args.dtype}, iterations {list(c.default_num_iter)}, cfg {c.cfg}, "
          f"temperature {c.temperature}; device {name}, torch {torch.__version__}", flush=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    images = run()  # warm-up (kernel selection, allocator)
    seconds = time.perf_counter() - start
    print(f"warm-up: {seconds:.1f} s, output {tuple(images.shape)} {images.dtype}", flush=True)
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
        print(f"run: {times[-1]:.1f} s ({times[-1] / args.batch:.3f} s/image)", flush=True)
    per_image = statistics.median(times) / args.batch
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    print(f"\n{c.name} sampling, batch {args.batch}, {args.dtype}: {per_image:.3f} s/image "
          f"(median of {args.reps}); paper 1.29 s/image (H100, batch 1024); goal < 0.65 s; "
          f"peak memory {peak:.1f} GiB")


if __name__ == "__main__":
    main()
