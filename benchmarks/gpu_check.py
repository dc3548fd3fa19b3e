"""One-GPU check before a long run: the CUDA paths on tiny models, a short training, FractalMAR-H speed.

    python -m benchmarks.gpu_check              # on a CUDA GPU: every row, one table at the end
    python -m benchmarks.gpu_check --dry-run    # tiny shapes on the CPU (automatic without CUDA)

Rows, in order (each: what, result, seconds; a row that fails or raises says so and the rest go on):
- smoke, per tiny model: seeded sampling repeats exactly; a bf16 autocast forward and backward gives
  finite numbers; sampling gives images of the right shape; inpainting keeps the known pixels;
  the codec round trip, encoded by a CPU copy of the model and decoded by the device's copy;
- training: `fractalgen.train` of the TRAIN preset for a few steps on synthetic data of its shape;
- speed: FractalMAR-H sampling per image at the SPEED batches (benchmarks.gpu_huge's estimate from a
  few level-0 steps, extrapolated to a full image, and said so), eager, then with every transformer
  block under torch.compile; rows that would not finish within `--budget` are skipped;
- profile: one training step under torch.profiler, its most expensive operators.
The dry run takes the same code paths with tiny shapes (the test suite runs it), and compiles with
dynamo's eager backend (no C++ compiler needed).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fractalgen
from fractalgen.nn import precision_context
from fractalgen.nn.blocks import LlamaBlock, ViTBlock
from fractalgen.runtime import set_threads

from .gpu_huge import WARM_UP_STEPS, time_batch, warm_up


@dataclasses.dataclass(frozen=True)
class Plan:
    smoke: tuple[str, ...]  # tiny presets for the smoke rows
    train: str  # preset trained for `train_steps` steps at `train_batch`
    train_steps: int
    train_batch: int
    speed: str  # preset whose sampling is timed at each of `batches`
    batches: tuple[int, ...]
    timed_steps: int  # level-0 steps in which the levels below run (gpu_huge.time_batch)
    compile_backend: str
    budget: float  # seconds the whole check may take (a GPU command may run ten minutes: leave room)


FULL = Plan(smoke=("tiny_ar", "tiny_mar_gp4"), train="cifar_mar", train_steps=40, train_batch=64,
            speed="fractalmar_huge_in256", batches=(64, 256), timed_steps=4, compile_backend="inductor",
            budget=510.0)
DRY = Plan(smoke=("tiny_ar", "tiny_mar_gp4"), train="tiny_mar", train_steps=3, train_batch=4,
           speed="tiny_mar_gp4", batches=(2, 4), timed_steps=2, compile_backend="eager", budget=60.0)


@dataclasses.dataclass
class Row:
    what: str
    result: str
    seconds: float


class Check:
    """Runs rows, each timed and each allowed to fail on its own, within a time budget."""

    def __init__(self, device: torch.device, budget: float):
        self.device, self.rows, self.start, self.budget = device, [], time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def row(self, what: str, run, needs: float = 0.0) -> Row:
        """Run `run()` (a result string) as row `what`, unless `needs` seconds are not left."""
        if self.left() <= 0 or needs > self.left():
            why = "out of time" if self.left() <= 0 else f"needs about {needs:.0f} s, {self.left():.0f} s left"
            row = Row(what, f"skipped: {why} (--budget)", 0.0)
        else:
            start = time.perf_counter()
            try:
                result = run()
            except Exception as e:  # the check reports every failure and goes on
                lines = str(e).strip().splitlines()
                result = f"error: {type(e).__name__}: {lines[0][:160] if lines else ''}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.synchronize()
            row = Row(what, result, time.perf_counter() - start)
        self.rows.append(row)
        print(f"  {row.what}: {row.result} ({row.seconds:.1f} s)", flush=True)
        return row

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def table(self) -> str:
        width = max(len(r.what) for r in self.rows)
        lines = [f"{'what':<{width}}  {'seconds':>8}  result", f"{'-' * width}  {'-' * 8}  {'-' * 6}"]
        lines += [f"{r.what:<{width}}  {r.seconds:>8.1f}  {r.result}" for r in self.rows]
        return "\n".join(lines)


def passed(ok: bool, detail: str = "") -> str:
    return ("pass" if ok else "FAIL") + (f" ({detail})" if detail else "")


# ---- smoke rows on a tiny model ----------------------------------------------------------------

def random_images(model, n: int, seed: int) -> torch.Tensor:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c.channels, c.img_size, c.img_size), dtype=torch.uint8, generator=g)


def smoke_rows(check: Check, preset: str):
    torch.manual_seed(0)
    cpu_model = fractalgen.build(preset).eval()
    model = fractalgen.build(preset).to(check.device).eval()
    model.load_state_dict(cpu_model.state_dict())
    labels = [1, 2]

    def repeats():
        a, b = (fractalgen.sample(model, labels=labels, seed=3) for _ in range(2))
        return passed(torch.equal(a, b), f"{int((a != b).sum())} of {a.numel()} values differ")

    def bf16_backward():
        model.train()
        try:
            images = random_images(model, 2, 0).to(check.device)
            with precision_context("bf16", check.device):
                loss = model.loss(images, torch.tensor(labels, device=check.device))
            loss.backward()
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            loss = float(loss.detach())
            finite = math.isfinite(loss) and bool(grads) and all(torch.isfinite(g).all() for g in grads)
            return passed(finite, f"loss {loss:.3f}, {len(grads)} gradients")
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()

    def sampling():
        images = fractalgen.sample(model, labels=labels, seed=0)
        c = model.config
        expected = (len(labels), c.channels, c.img_size, c.img_size)
        return passed(tuple(images.shape) == expected and images.dtype == torch.uint8, f"{tuple(images.shape)}")

    def inpainting():
        images = random_images(model, 2, 1)
        known = torch.zeros(images.shape[-2:], dtype=torch.bool)
        known[: known.shape[0] // 2] = True  # the top half given
        out = fractalgen.inpaint(model, images, known, labels=labels, seed=0).cpu()
        kept = torch.equal(out[..., known], images[..., known])
        return passed(kept, "known pixels kept" if kept else "known pixels changed")

    def codec():
        images = random_images(model, 2, 2)
        data = fractalgen.compress(cpu_model, images, labels=labels)
        decoded = fractalgen.decompress(model, data)
        return passed(torch.equal(decoded.cpu(), images), f"{len(data)} bytes")

    where = check.device.type
    check.row(f"{preset}: seeded sampling repeats ({where})", repeats)
    check.row(f"{preset}: bf16 autocast forward+backward ({where})", bf16_backward)
    check.row(f"{preset}: sampling ({where})", sampling)
    check.row(f"{preset}: inpainting ({where})", inpainting)
    check.row(f"{preset}: codec, CPU encode -> {where} decode", codec)


# ---- training -------------------------------------------------------------------------------

def training_row(check: Check, plan: Plan):
    from fractalgen.train import TrainOptions, train

    config = fractalgen.get_config(plan.train)

    def run():
        with tempfile.TemporaryDirectory() as folder:
            n = 4 * plan.train_batch
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (n, config.img_size, config.img_size, config.channels), dtype=np.uint8)
            data = Path(folder) / "synthetic.npz"
            np.savez(data, images=images, labels=np.arange(n) % max(config.num_classes, 1))
            options = TrainOptions(out=str(Path(folder) / "run"), data=str(data), steps=plan.train_steps,
                                   batch_size=plan.train_batch, lr=1e-4, warmup_steps=1, sample_every=0,
                                   save_every=plan.train_steps, device=str(check.device))
            chatter = io.StringIO()  # the loop's own progress lines: the table says what matters
            start = time.perf_counter()
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                out = train(config, options)
            seconds = time.perf_counter() - start
        ok = out["step"] == plan.train_steps and math.isfinite(out["loss"])
        return passed(ok, f"last loss {out['loss']:.3f}, {seconds / plan.train_steps * 1000:.0f} ms/step "
                          f"with start-up and the checkpoint")

    check.row(f"{plan.train}: {plan.train_steps} training steps, batch {plan.train_batch}, synthetic data", run)


# ---- speed ----------------------------------------------------------------------------------

def compile_blocks(model, backend: str):
    """Every transformer block under torch.compile (in place), with dynamic shapes: the rows per call vary
    with each step's patches and with the batch; allow the recompiles the block widths still need."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for module in model.modules():
        if isinstance(module, (LlamaBlock, ViTBlock)):
            module.compile(backend=backend, dynamic=True)


def speed_rows(check: Check, plan: Plan):
    torch.manual_seed(0)
    model = fractalgen.build(plan.speed).to(check.device).eval()
    dtype = "bf16" if check.device.type == "cuda" else "fp32"
    classes = max(model.config.num_classes, 1)
    seconds = {}  # (mode, batch) -> seconds of its row, to judge whether the next fits

    def timing(batch: int, timed_steps: int):
        result = time_batch(model, [i % classes for i in range(batch)], dtype, timed_steps)
        how = (f"estimated: the levels below ran in {result['timed_steps']} of {result['level0_steps']} "
               f"level-0 steps, scaled to the rest" if result["estimated"] else "measured")
        return f"{result['per_image']:.3f} s/image, {result['seconds']:.1f} s/batch ({how}, {dtype})"

    def warm(labels):
        warm_up(model, labels, dtype, WARM_UP_STEPS)
        return f"done ({WARM_UP_STEPS} level-0 steps, every level running)"

    first = plan.batches[0]
    for mode in ("eager", "compiled"):
        if mode == "compiled":
            compiled = check.row(f"{plan.speed}: torch.compile every block ({plan.compile_backend})",
                                 lambda: compile_blocks(model, plan.compile_backend) or "done")
            if compiled.result != "done":
                continue
        for batch in plan.batches:
            labels = [i % classes for i in range(batch)]
            # What a row needs: this mode's first batch scaled by batch size, else the eager row of this batch.
            needs = (seconds[(mode, first)] * batch / first if (mode, first) in seconds
                     else seconds.get(("eager", batch), 0.0))
            # A warm-up runs a few level-0 steps; compiling them costs about what a whole timed row does.
            check.row(f"{plan.speed}: warm-up, batch {batch}, {mode}", lambda labels=labels: warm(labels),
                      needs=needs if mode == "compiled" else needs / 4)
            row = check.row(f"{plan.speed}: sampling, batch {batch}, {mode}",
                            lambda batch=batch: timing(batch, plan.timed_steps), needs=needs)
            if not row.result.startswith("skipped"):
                seconds[(mode, batch)] = row.seconds


def profile_row(check: Check, plan: Plan):
    def run():
        from torch.profiler import ProfilerActivity, profile

        torch.manual_seed(0)
        model = fractalgen.build(plan.train).to(check.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        images = random_images(model, plan.train_batch, 0).to(check.device)
        labels = torch.arange(plan.train_batch, device=check.device) % max(model.config.num_classes, 1)

        def step():
            with precision_context("auto", check.device):
                loss = model.loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # warm-up
        check.synchronize()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if check.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            step()
            check.synchronize()
        key = "self_device_time_total" if check.device.type == "cuda" else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
        total = sum(getattr(e, key) for e in events) or 1
        top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:3]
        return "top: " + ", ".join(f"{e.key} {100 * getattr(e, key) / total:.0f}%" for e in top)

    check.row(f"{plan.train}: profile of one training step, batch {plan.train_batch}", run, needs=15.0)


# ---- entry point ----------------------------------------------------------------------------

def main(argv=None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (automatic without CUDA)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds the whole check may take; rows that would not fit are skipped "
                        "(default: the plan's own, FULL.budget or DRY.budget)")
    args = p.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    plan = DRY if dry else FULL
    budget = args.budget if args.budget is not None else plan.budget
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"gpu_check: {'dry run, tiny shapes' if dry else 'full'} on {name}, torch {torch.__version__}, "
          f"budget {budget:.0f} s" + ("" if args.dry_run or not dry else " (no CUDA here: dry run)"), flush=True)

    check = Check(device, budget)
    for preset in plan.smoke:
        smoke_rows(check, preset)
    training_row(check, plan)
    speed_rows(check, plan)
    profile_row(check, plan)
    print("\n" + check.table(), flush=True)
    return check.rows


if __name__ == "__main__":
    set_threads("auto")  # on a CPU, its idle cores, as the command line does (runtime.auto_threads)
    main()
