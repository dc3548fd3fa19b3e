"""Speed, side by side with the authors' code: a training step and sampling, CIFAR-sized AR and MAR.

    python -m benchmarks.speed --reference DIR          # DIR: a checkout of LTH14/fractalgen
    python -m benchmarks.speed --reference DIR --threads 2 1 --reps 3
    python -m benchmarks.speed                          # ours only (no checkout at hand)

Models: our presets cifar_ar and cifar_mar (RGB 32x32, levels 32/4/1, widths 256/128/64,
blocks 6/2/1), seeded random weights. The authors' FractalGen is built with the same
configuration and gets exactly our weights through the official checkpoint layout
(`fractalgen.save_official`, loaded strictly). Before any timing, both compute the loss of
the same images with the same MAR masks (likelihood mode, and training mode with dropout
off), and the benchmark stops if they differ: the comparison is like for like.

Tasks: one AdamW training step (loss, backward, clip 3.0, step) at batch 32, dropout on, with
one fixed draw of the MAR training masks given to both (the work per step depends on it);
sampling 16 images (labels 0..9,0..5, cfg 2.0 linear, temperature 1.0, filter 1e-4,
iterations 16,16), reported per image. Ours samples eager (as `sample()` does by default) and
with compile=True (its compilation in an untimed warm-up run first), each a row of its own against
the same runs of theirs (`--ours-sampling` picks). Runs of the implementations alternate (the
order flips every repetition) and each time is the best of `--reps`: on a shared machine
the best run is the one least disturbed by other jobs; the process CPU time (best of the same
runs) moves less with the load than wall time. GFLOP/s: each implementation's own
FLOPs (torch's FlopCounterMode, on an untimed run) over its best time. Arithmetic limit: the
time those FLOPs would take at the machine's fp32 matmul peak (a 2048^3 matmul timed in the same
run), with nothing else taking any time; the share of it reached is limit / best time, so a
reader sees how far each row is from what its arithmetic allows. Peak memory: the
process's peak resident set during the run above the resident set at its start (both
models stay loaded, so this is what the run itself allocates).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fractalgen
from fractalgen.levels.mar import likelihood_mask, training_mask
from fractalgen.nn import precision_context
from fractalgen.sampling import CompilerMissing, check_cpu_compiler

TARGETS = {("ar", "train"): 2.0, ("mar", "train"): 2.0, ("ar", "sample"): 3.5, ("mar", "sample"): 2.0}  # issue 27
SAMPLING = {"cfg": 2.0, "cfg_schedule": "linear", "temperature": 1.0, "filter_threshold": 1e-4}
# Ours is timed as `sample()` runs by default (eager) and, for sampling, also with compile=True: each its own
# row, against the same runs of theirs.
OURS = {"eager": "ours", "compiled": "ours compiled"}
WHAT = {"ours": "", "ours compiled": ", compile=True"}


# ---- measurement helpers ---------------------------------------------------------------------

def resident_mib(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_memory_window() -> float:
    """Give freed heap back to the OS, reset the peak-RSS counter; returns the resident MiB now."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # "5" resets the kernel's peak resident set (VmHWM) to the current one
    return resident_mib("VmRSS")


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """The machine's practical fp32 peak at the current thread count: best of `reps` n^3 matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


@dataclass
class Timing:
    """Best-of-N wall time of one task for one implementation, with its FLOPs and memory."""

    per: int  # the time is divided by this (images for sampling, 1 for a training step)
    flops: float = 0.0  # per run
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time (all threads) of the same runs
    peak_mib: list[float] = field(default_factory=list)

    def run(self, fn):
        base = start_memory_window()
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        self.seconds.append((time.perf_counter() - start) / self.per)
        self.cpu_seconds.append((time.process_time() - cpu_start) / self.per)
        self.peak_mib.append(resident_mib("VmHWM") - base)

    @property
    def best(self) -> float:
        return min(self.seconds)

    def gflops(self) -> float:
        return self.flops / self.per / self.best / 1e9

    def limit(self, peak_gflops: float) -> float:
        """The task's arithmetic limit: its own FLOPs (per image or step) at the measured matmul peak, in
        seconds. The share of it reached (limit / time) is gflops() / peak."""
        return self.flops / self.per / (peak_gflops * 1e9)


# ---- inputs ----------------------------------------------------------------------------------

def inputs(config, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, config.channels, config.img_size, config.img_size),
                           dtype=torch.uint8, generator=g)
    labels = torch.randint(0, config.num_classes, (batch,), generator=g)
    return images, labels


def normalized(images: torch.Tensor, config) -> torch.Tensor:
    """What the authors' data loader hands their model: (v / 255 - mean) / std per channel."""
    mean = torch.tensor(config.pixel_mean).view(1, -1, 1, 1)
    std = torch.tensor(config.pixel_std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


def mar_masks(config, batch: int, train: bool, seed: int = 1):
    """One bool mask per MAR level (rows = the masked patches of the level above), or None for AR."""
    if "mar" not in config.kinds:
        return None
    g = torch.Generator().manual_seed(seed)
    masks, rows = [], batch
    for level in config.levels:
        draw = training_mask if train else likelihood_mask
        masks.append(draw(rows, level.seq_len, "cpu", g))
        rows = int(masks[-1].sum())
    return masks


# ---- the same loss from both implementations -------------------------------------------------------

@contextlib.contextmanager
def dropout_off(*models):
    """Every dropout probability of the models set to 0 (restored after), label dropout included."""
    saved = []
    for model in models:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                saved.append((m, "p", m.p))
                m.p = 0.0
            for name in ("attn_dropout", "attn_dropout_p", "label_drop_prob"):
                if isinstance(getattr(m, name, None), float):
                    saved.append((m, name, getattr(m, name)))
                    setattr(m, name, 0.0)
    try:
        yield
    finally:
        for m, name, value in saved:
            setattr(m, name, value)


@contextlib.contextmanager
def their_masks(theirs, masks):
    """Their MAR levels draw masks with numpy/scipy; hand them ours instead (float, 1 = masked)."""
    if masks is None:
        yield
        return
    levels, node = [], theirs
    while hasattr(node, "generator"):
        levels.append(node.generator)
        node = node.next_fractal
    for level, mask in zip(levels, masks, strict=False):
        level.random_masking = level.random_masking_uniform = lambda x, orders, m=mask: m.float()
    try:
        yield
    finally:
        for level in levels:
            del level.random_masking, level.random_masking_uniform


def check_same_loss(name, ours, theirs, reference, batch: int = 4) -> str:
    """Both implementations' losses on the same images and masks; raises if they differ."""
    from .reference import patched_cuda

    config = ours.config
    images, labels = inputs(config, batch, seed=123)
    lines = []
    for train in (False, True):
        masks = mar_masks(config, batch, train)
        ours.train(train)
        theirs.train(train)
        label_drop = config.label_drop_prob
        with torch.no_grad(), dropout_off(ours, theirs), patched_cuda(), their_masks(theirs, masks):
            ours.config = config.replace(label_drop_prob=0.0)  # read by ours at each call
            try:
                a = ours.loss(images, labels if train else None, masks=masks, train=train).item()
            finally:
                ours.config = config.replace(label_drop_prob=label_drop)
            b = theirs(normalized(images, config), labels).item()
        mode = "training (dropout off)" if train else "likelihood"
        if not abs(a - b) <= 1e-4 * max(1.0, abs(b)):
            raise SystemExit(f"error: {name} {mode} loss differs: ours {a:.6f}, authors' {b:.6f}")
        lines.append(f"{mode} {a:.6f} vs {b:.6f}")
    return f"{name}: same loss for the same weights, images and masks: " + "; ".join(lines)


# ---- the two tasks, for each implementation --------------------------------------------------------

def train_step_ours(model, images, labels, masks, precision: str):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        with precision_context(precision, "cpu"):  # as `train --precision`
            loss = model.loss(images, labels, masks=masks)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
    return step


def train_step_theirs(model, images, labels, masks, config, bf16: bool):
    from .reference import patched_cuda

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    x = normalized(images, config)

    def step():
        model.train()
        with patched_cuda(bf16), their_masks(model, masks):
            opt.zero_grad(set_to_none=True)
            with torch.cuda.amp.autocast():  # as their training loop (engine_fractalgen.py) wraps the forward
                loss = model(x, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
            opt.step()
    return step


def sample_ours(model, labels, num_iter, precision: str, compile: bool = False):
    def run(count=None):
        count = count or len(labels)
        torch.manual_seed(0)
        model.eval()
        # threads=None: the count this benchmark set (torch.set_num_threads), not the library's 'auto'
        fractalgen.sample(model, labels=labels[:count], num_iter=num_iter, precision=precision, threads=None,
                          compile=compile, **SAMPLING)
    return run


def sample_theirs(model, labels, num_iter, config, bf16: bool):
    from .reference import patched_cuda

    def run(count=None):
        count = count or len(labels)
        torch.manual_seed(0)
        model.eval()
        # As their evaluation loop: sampling under (their) autocast.
        with torch.no_grad(), patched_cuda(bf16), torch.cuda.amp.autocast():
            y = torch.tensor(labels[:count])
            cond = torch.cat([model.class_emb(y), model.fake_latent.repeat(count, 1)])  # cfg != 1: doubled
            model.sample(cond_list=[cond] * config.num_conds, num_iter_list=list(num_iter),
                         fractal_level=0, **SAMPLING)
    return run


# ---- one table per thread count ----------------------------------------------------------------

def measure(models, tasks, args, threads):
    """{(name, task): {"ours": Timing, "ours compiled": Timing, "theirs": Timing}} measured with `threads` torch
    threads (training: ours eager only)."""
    torch.set_num_threads(threads)
    cells = {}
    for name, ours, theirs in models:
        config = ours.config
        num_iter = (args.num_iter,) * config.num_levels
        if "train" in tasks:
            images, labels = inputs(config, args.batch)
            # The same MAR training masks for both and for every step: the work per step depends on how
            # many patches are masked, and fresh draws would make it differ from run to run.
            masks = mar_masks(config, args.batch, train=True, seed=2)
            runs = {OURS["eager"]: train_step_ours(ours, images, labels, masks, args.ours_precision)}
            if theirs is not None:
                runs["theirs"] = train_step_theirs(theirs, images, labels, masks, config,
                                                   args.theirs_precision == "bf16")
            cells[name, "train"] = {k: (Timing(per=1), fn) for k, fn in runs.items()}
        if "sample" in tasks:
            labels = [i % config.num_classes for i in range(args.images)]
            runs = {OURS[mode]: sample_ours(ours, labels, num_iter, args.ours_precision, mode == "compiled")
                    for mode in args.ours_sampling}
            if theirs is not None:
                runs["theirs"] = sample_theirs(theirs, labels, num_iter, config, args.theirs_precision == "bf16")
            cells[name, "sample"] = {k: (Timing(per=args.images), fn) for k, fn in runs.items()}
    # Warm-up and FLOPs (untimed). Sampling FLOPs are linear in the batch: count one image.
    for (name, task), runs in cells.items():
        for who, (timing, fn) in runs.items():
            if task == "train":
                fn()  # allocates the optimizer state
                timing.flops = count_flops(fn)
            else:
                timing.flops = count_flops(lambda fn=fn: fn(1)) * timing.per
            print(f"  {threads} thread(s): {name} {task} {who}: {timing.flops / 1e9:.1f} GFLOP per run", flush=True)
            if who == OURS["compiled"]:
                start = time.perf_counter()
                fn()  # compiles the graphs of the timed shapes (the FLOP count ran other ones)
                print(f"  {threads} thread(s): {name} sampling {who}: first run with compilation "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
    for rep in range(args.reps):
        for (name, task), runs in cells.items():
            order = list(runs.items()) if rep % 2 == 0 else list(runs.items())[::-1]
            for who, (timing, fn) in order:
                timing.run(fn)
                print(f"  {threads} thread(s), rep {rep + 1}: {name} {task} {who}: "
                      f"{timing.seconds[-1]:.3f} s", flush=True)
    return {key: {who: timing for who, (timing, _) in runs.items()} for key, runs in cells.items()}


def table(results, peaks, batch: int) -> str:
    rows = [
        ("| model | task | threads | authors' code | fractalgen | speed-up (target) | CPU time authors' / ours "
         "| GFLOP/s authors' / ours | arithmetic limit authors' / ours | share of it reached authors' / ours "
         "| peak memory authors' / ours |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for threads, cells in results.items():
        for (name, task), timings in cells.items():
            for who in OURS.values():
                if who in timings:
                    rows.append(table_row(name, task, threads, timings[who], timings.get("theirs"), peaks[threads],
                                          batch, WHAT[who]))
    return "\n".join(rows)


def table_row(name: str, task: str, threads: int, ours: Timing, theirs: Timing | None, peak: float, batch: int,
              how: str) -> str:
    unit = "s/step" if task == "train" else "s/image"
    what = f"training step, batch {batch}" if task == "train" else "sampling" + how
    if theirs is None:
        return (f"| {name} | {what} | {threads} | - | {ours.best:.3f} {unit} | - "
                f"| - / {min(ours.cpu_seconds):.3f} s | {ours.gflops():.1f} "
                f"| {ours.limit(peak):.3f} {unit} | {ours.gflops() / peak:.0%} "
                f"| {max(ours.peak_mib):.0f} MiB |")
    ratio = theirs.best / ours.best
    return (f"| {name} | {what} | {threads} | {theirs.best:.3f} {unit} | {ours.best:.3f} {unit} "
            f"| {ratio:.2f}x ({TARGETS[name.rsplit('_', 1)[1], task]:g}x) "
            f"| {min(theirs.cpu_seconds):.3f} / {min(ours.cpu_seconds):.3f} s "
            f"| {theirs.gflops():.1f} / {ours.gflops():.1f} "
            f"| {theirs.limit(peak):.3f} / {ours.limit(peak):.3f} {unit} "
            f"| {theirs.gflops() / peak:.0%} / {ours.gflops() / peak:.0%} "
            f"| {max(theirs.peak_mib):.0f} / {max(ours.peak_mib):.0f} MiB |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n")[0])
    p.add_argument("--reference", help="a checkout of the authors' repository (LTH14/fractalgen) to run beside ours")
    p.add_argument("--kinds", nargs="+", default=["ar", "mar"], choices=["ar", "mar"])
    p.add_argument("--tasks", nargs="+", default=["train", "sample"], choices=["train", "sample"])
    p.add_argument("--threads", nargs="+", type=int, default=[2, 1], help="one table block per thread count")
    p.add_argument("--reps", type=int, default=2, help="timed runs of each implementation (best is reported)")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--images", type=int, default=16, help="images sampled per run")
    p.add_argument("--num-iter", type=int, default=16, help="sampling iterations at every level")
    p.add_argument("--ours-precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: ours with precision bf16 (as `fractalgen train/sample --precision bf16`)")
    p.add_argument("--ours-sampling", nargs="+", choices=list(OURS), default=list(OURS),
                   help="how ours samples: eager (sample()'s default) and/or compiled (compile=True; compilation "
                   "happens in an untimed warm-up run, whose time is printed), each timed in the same "
                   "interleaved runs as theirs")
    p.add_argument("--theirs-precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: their torch.cuda.amp.autocast mapped to CPU bf16 autocast; fp32: a no-op, as on a "
                        "CPU their code runs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if "compiled" in args.ours_sampling and "sample" in args.tasks:
        try:
            check_cpu_compiler()
        except CompilerMissing as e:
            print(f"ours compiled is not timed: {e}", flush=True)
            args.ours_sampling = [mode for mode in args.ours_sampling if mode != "compiled"]
    reference = None
    if args.reference:
        from . import reference as ref_module

        reference = ref_module.load(args.reference)
    models = []
    for kind in args.kinds:
        torch.manual_seed(0)  # the same weights every run
        ours = fractalgen.build(f"cifar_{kind}")
        theirs = None
        if reference is not None:
            from .reference import build

            theirs = build(ours, reference)
            print(check_same_loss(f"cifar_{kind}", ours, theirs, reference), flush=True)
        models.append((f"cifar_{kind}", ours, theirs))
    np.random.seed(0)  # their MAR training masks come from numpy

    command = "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv)
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"load average {load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f}", flush=True)
    results, peaks = {}, {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        before = matmul_gflops()
        results[threads] = measure(models, args.tasks, args, threads)
        torch.set_num_threads(threads)
        peaks[threads] = max(before, matmul_gflops())
    load_end = os.getloadavg()
    print(f"\n{command}")
    print(f"load average (1, 5, 15 min) at the start {load_start[0]:.2f}, {load_start[1]:.2f}, {load_start[2]:.2f}; "
          f"at the end {load_end[0]:.2f}, {load_end[1]:.2f}, {load_end[2]:.2f} ({os.cpu_count()} CPUs)")
    print("fp32 matmul peak (2048^3, best of the start and end of each block): "
          + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in peaks.items()))
    print(f"training batch {args.batch}; sampling {args.images} images, cfg 2.0 linear, temperature 1.0, "
          f"filter 1e-4, iterations {args.num_iter} per level; best of {args.reps} interleaved runs")
    print(f"precision: authors' code {args.theirs_precision}, fractalgen {args.ours_precision}"
          + ("" if args.ours_precision == args.theirs_precision else " (NOT the same precision)")
          + ("; fractalgen samples " + " and ".join(args.ours_sampling) if "sample" in args.tasks else "") + "\n")
    print(table(results, peaks, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
