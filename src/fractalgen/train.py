"""Training: one loop, single process or data-parallel under torchrun.

    fractalgen train --preset mnist_ar --data mnist --out runs/mnist      # the preset's own recipe
    torchrun --nproc_per_node=8 -m fractalgen train --preset fractalmar_in64 --data /imagenet --out runs/in64

A run directory holds `checkpoint.pt` (formats/run.py: everything needed to resume: model, optimizer,
step, RNG states of every rank, data position, config and options), `model.safetensors` (the
weights for `fractalgen sample`), `metrics.jsonl` (loss, lr, grad norm, speed and memory every
`log_every` steps; trainlog.py) and `samples/` (periodic grids). The checkpoint and the weights
are written atomically (temporary file, fsync, rename), so a crash never leaves a half-written one.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import re
import signal
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .config import ConfigError, ModelConfig, check_presets, config_for_data, split_sampling
from .data import DataSummary, EpochBatches, describe_data, load_dataset, stack
from .errors import UserError, WriteError
from .files import check_writable, save_grid
from .footprint import check_fits
from .formats import load as load_checkpoint
from .formats.checks import CheckpointError, check_sampling
from .formats.ours import save_ours
from .formats.run import CHECKPOINT_NAME, read_checkpoint, write_checkpoint  # noqa: F401 (re-exported)
from .guidance import can_choose, choose_guidance, train_judge
from .model import FractalModel
from .nn import PRECISIONS, precision_context, resolve_precision
from .run_lock import LOCK_NAME, RunLock
from .runtime import Dist, loader_workers, require_torch, setup_distributed
from .samples import sample
from .settings import SEED_MAX, resolve_settings
from .trainlog import MetricsLog

COLLECTIVE_TIMEOUT = timedelta(hours=2)  # how long a rank may wait for the others (see train_locked)
MAR_MASKS = {"official": "train", "uniform": "uniform"}  # TrainOptions.mar_masks -> the MAR levels' mask spec


@dataclasses.dataclass
class TrainOptions:
    out: str
    data: str = "mnist"
    steps: int | None = None  # total optimizer steps (a resumed run continues up to it)
    epochs: float | None = None  # used when steps is None; None = default_steps
    batch_size: int | None = None  # global, over all ranks; None = default_batch
    lr: float | None = None  # absolute; None = blr * batch_size / 256 when blr is given, else default_lr
    blr: float | None = None  # the official scaling's base lr per 256 images
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # None = warmup_epochs, else default_warmup
    warmup_epochs: float | None = None
    grad_clip: float = 3.0
    flip: bool = True
    shift: int = 0  # random translation by up to this many pixels, zero fill (augmentation; 0 = off)
    # MAR levels' training masks: "official" (ratio ~ N(1, 0.25)) or "uniform" (count ~ U{1..N})
    mar_masks: str = "official"
    precision: str = "auto"  # bf16 autocast (fp32 weights, optimizer and islands) or fp32; auto: nn/precision.py
    seed: int = 0
    grad_checkpointing: bool = False
    save_every: int = 500
    sample_every: int = 1000
    keep_checkpoints: bool = False  # also keep checkpoint-{step}.pt copies
    tensorboard: bool = False
    num_workers: int | None = None  # data loading processes; None = auto (runtime.loader_workers)
    device: str = "auto"
    resume: str | None = None
    init: str | None = None  # start from this checkpoint's weights (fresh optimizer and schedule)
    fsdp: bool = False  # shard parameters, gradients and optimizer state over ranks (FULL_SHARD)
    log_every: int = 10  # steps per line of metrics.jsonl

    def __post_init__(self) -> None:
        """Every option within OPTION_BOUNDS: for library callers and for the options a resumed run
        stored, as for the flags (steps=0 must not quietly fall back to epochs, nor epochs=0 to one step)."""
        for name, kind in OPTION_KINDS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                wanted = {str: "a string", bool: "true or false", int: "an integer"}[kind]
                raise UserError(f"training option {name} must be {wanted}, got {value!r:.60}")
        for name, bound in OPTION_BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL:
                continue
            problem = bound.problem(value)
            if problem:
                raise UserError(f"training option {name} {problem}")
        if not DEVICE_NAME.fullmatch(self.device):
            raise UserError(f"training option device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r:.60}")


@dataclasses.dataclass(frozen=True)
class Bound:
    """What one option accepts: an integer or a finite number in [low, high] (low excluded when `above`),
    or one of `choices`."""

    kind: type = int
    low: float | None = None
    high: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()

    def problem(self, value) -> str | None:
        """None when `value` is acceptable, else what is wrong ("must be ..., got ...")."""
        if self.choices:
            return None if value in self.choices else f"must be one of {', '.join(self.choices)}, got {value!r:.60}"
        assert self.low is not None and self.high is not None  # a numeric bound has both ends (OPTION_BOUNDS)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if self.kind is int and not is_int:
            return f"must be an integer, got {value!r:.60}"
        if not is_int and not (isinstance(value, float) and math.isfinite(value)):
            return f"must be a finite number, got {value!r:.60}"
        if self.above and value <= self.low:
            return f"must be > {show(self.low)}, got {value!r:.60}"
        if value < self.low:
            return f"must be >= {show(self.low)}, got {value!r:.60}"
        if value > self.high:
            return f"must be <= {show(self.high)}, got {value!r:.60}"
        return None


def show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


# One table of what each option accepts, read by the command line's flags (cli/train.py) and by
# TrainOptions.__post_init__: options read back from a run folder pass the same checks as flags.
# The upper bounds are far above any real run and well below what would exhaust a machine.
LONGEST = 10**12  # steps, and step counts between events
OPTION_BOUNDS = {
    "steps": Bound(int, 1, LONGEST), "epochs": Bound(float, 0, 10**9, above=True),
    "batch_size": Bound(int, 1, 2**20), "lr": Bound(float, 0, 10, above=True), "blr": Bound(float, 0, 10, above=True),
    "weight_decay": Bound(float, 0, 10**3), "warmup_steps": Bound(int, 0, LONGEST),
    "warmup_epochs": Bound(float, 0, 10**9), "grad_clip": Bound(float, 0, 1e30, above=True),
    "seed": Bound(int, 0, SEED_MAX),
    "save_every": Bound(int, 1, LONGEST), "sample_every": Bound(int, 0, LONGEST),
    "num_workers": Bound(int, 0, 256),  # processes: more than any machine's loader needs
    "log_every": Bound(int, 1, LONGEST),
    "shift": Bound(int, 0, 64),  # pixels: the image is padded by it on every side
    "mar_masks": Bound(choices=tuple(MAR_MASKS)), "precision": Bound(choices=tuple(PRECISIONS)),
}
OPTIONAL = ("steps", "epochs", "batch_size", "lr", "blr", "warmup_steps", "warmup_epochs", "num_workers", "resume",
            "init")  # None: derived (see the fields' comments)
OPTION_KINDS = {"out": str, "data": str, "device": str, "resume": str, "flip": bool, "grad_checkpointing": bool,
                "keep_checkpoints": bool, "tensorboard": bool, "fsdp": bool, "init": str}
DEVICE_NAME = re.compile(r"auto|cpu|(cuda|mps)(:\d{1,4})?")


# The bundled models' recipes (how they were trained); flags given, and a resumed run's stored options,
# override them. Every other preset and config takes the measured rules below.
PRESET_RECIPES: dict[str, dict[str, Any]] = {
    "mnist_ar": {"steps": 5500, "batch_size": 32, "lr": 2e-3, "warmup_steps": 60, "flip": False, "shift": 1},
    "mnist_mar": {"steps": 18000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 60, "flip": False, "shift": 1,
                  "mar_masks": "uniform"},
}


# ---- the measured defaults: length, batch, learning rate, warm-up ----------------------------------
# benchmarks/lr_rule.py sweeps learning rates over level-0 width, batch size and dataset size (its table
# is in benchmarks/RESULTS.md); default_lr is the rule fitted to it. The official recipe (blr 5e-5 per 256
# images) is made for ImageNet batches of 2048 and learns nothing at small batches: give --blr to use it.

DEFAULT_EPOCHS = 10  # a run's length in epochs when neither steps nor epochs are given ...
MIN_STEPS = 1800  # ... but at least this many steps: a few hundred images need many passes (benchmarks/own_images.py)
MAX_DEFAULT_BATCH, MIN_DEFAULT_BATCH = 64, 8
LR_CENTRE, LR_CENTRE_WIDTH = 3e-3, 64  # the best rate at the sweep's centre (width 64)
# Over widths 32-128 and batches 8-64 the best rate stayed within a factor 3 of the centre's; the batch
# showed no trend, so the rule ignores it; wider models get the square root of the width ratio (the
# sweep allows it, and it keeps the official ImageNet models near their own rates).
LR_WIDTH_POWER = 0.5
LR_FAR = 10.0  # a given lr this many times above or below the rule gets a warning
WARMUP_SHARE = 0.05  # warm-up as a share of the run (the sweep saw no difference from 0 to 20%)


def default_batch(images: int) -> int:
    """The global batch: a power of two giving at least 8 batches an epoch, within [8, 64]."""
    batch = MAX_DEFAULT_BATCH
    while batch > MIN_DEFAULT_BATCH and batch * 8 > images:
        batch //= 2
    return min(batch, images)


def default_lr(config: ModelConfig, batch: int) -> float:
    """The measured rule: the centre's best rate, scaled by the level-0 width (not by the batch: see above)."""
    return LR_CENTRE * (LR_CENTRE_WIDTH / config.widths[0]) ** LR_WIDTH_POWER


def default_steps(per_epoch: int) -> int:
    return max(MIN_STEPS, round(DEFAULT_EPOCHS * per_epoch))


def schedule(options: TrainOptions, config: ModelConfig, images: int, world: int) -> dict:
    """The run's global batch, total steps, warm-up steps and base lr: the options given, else the rules."""
    batch = options.batch_size or max(world, default_batch(images) // world * world)
    per_epoch = images // batch
    if options.steps:
        total = options.steps
    elif options.epochs is not None:
        total = max(1, round(options.epochs * per_epoch))
    else:
        total = default_steps(per_epoch)
    if options.warmup_steps is not None:
        warmup = options.warmup_steps
    elif options.warmup_epochs is not None:
        warmup = round(options.warmup_epochs * per_epoch)
    else:
        warmup = round(WARMUP_SHARE * total)
    if options.lr is not None:
        lr = options.lr
    elif options.blr is not None:
        lr = options.blr * batch / 256
    else:
        lr = default_lr(config, batch)
    return {"batch": batch, "total": total, "warmup": min(warmup, total // 2), "lr": lr}


def lr_warning(lr: float, config: ModelConfig, batch: int) -> str | None:
    """One line when `lr` is far outside the measured rule's range for this model and batch."""
    rule = default_lr(config, batch)
    if rule / LR_FAR <= lr <= rule * LR_FAR:
        return None
    return (f"warning: lr {lr:.3g} is far from {rule:.3g}, the rate the measured rule gives this model at batch "
            f"{batch} (benchmarks/lr_rule.py): expect {'divergence' if lr > rule else 'little learning'}")


def run_options(given: dict, preset: str | None = None) -> TrainOptions:
    """The options of a run: those given now > a resumed run's stored options > the preset's recipe
    (PRESET_RECIPES) > TrainOptions' defaults.

    `given` holds only what the caller chose (e.g. the flags typed); with `resume` the run
    folder defaults to the resumed one and everything else not given continues as stored.
    """
    given = {k: v for k, v in given.items() if v is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(sorted(unknown))}")
    if "resume" in given:
        given.setdefault("out", given["resume"])
    if "out" not in given:
        raise UserError("give --out (the run folder)")
    stored: dict[str, Any] = {}
    if "resume" in given:
        stored = read_checkpoint(given["resume"])["options"]
        stored = {k: v for k, v in stored.items()
                  if k not in ("out", "resume") and k in TrainOptions.__dataclass_fields__}
    recipe = dict(PRESET_RECIPES.get(preset, {})) if preset is not None and "resume" not in given else {}
    if "epochs" in given:  # a length asked for in epochs replaces the recipe's length in steps
        recipe.pop("steps", None)
    return TrainOptions(**{**recipe, **stored, **given})


# ---- pieces of the recipe --------------------------------------------------------------------

class LossModule(nn.Module):
    """DistributedDataParallel synchronises gradients around forward(): route the loss through it."""

    def __init__(self, model: FractalModel, mar_masks: str = "official") -> None:
        super().__init__()
        self.model = model
        self.masks = [MAR_MASKS[mar_masks]] * len(model.levels)  # AR levels ignore their mask spec

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # The labels were checked against the model's classes when the data was loaded (load_dataset,
        # fit_classes): checking each batch again would read it back from the device every step.
        return self.model.loss(images, labels, masks=self.masks, labels_checked=True)


def some_parameters_sit_out(config: ModelConfig, labelled: bool) -> bool:
    """Whether a training step may leave a parameter without a gradient, so that DDP must search for
    unused parameters after every forward. Every parameter takes part when labels reach the model and
    some are dropped (the null class enters through torch.where even in a batch where none is);
    otherwise the class embedding (no labels) or the null class (no dropping) sits out."""
    return not labelled or config.num_classes == 0 or config.label_drop_prob == 0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Official rule: weight decay on matrices only (none on biases, norms or other 1-D parameters)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine to zero at `total`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def enable_grad_checkpointing(model: FractalModel) -> None:
    """Recompute each transformer block in the backward pass instead of storing its activations."""
    from torch.utils.checkpoint import checkpoint

    def wrap(block):
        forward = block.forward

        @functools.wraps(forward)
        def checkpointed(*args, **kwargs):
            if block.training and torch.is_grad_enabled():
                return checkpoint(forward, *args, use_reentrant=False, **kwargs)
            return forward(*args, **kwargs)

        block.forward = checkpointed

    for module in model.modules():
        for block in getattr(module, "blocks", []):
            wrap(block)


def rng_state(device: torch.device) -> dict:
    # numpy's stubs type get_state() without arguments as its dict form; it returns the legacy tuple
    # ("MT19937", keys uint32 (624,), position, has_gauss, cached_gaussian).
    numpy_state = cast(tuple, np.random.get_state())
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)), "numpy_pos": int(numpy_state[2])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def shard(loss_module: LossModule, precision: str = "fp32") -> LossModule:
    """FSDP (FULL_SHARD): every transformer block is its own unit, the rest belongs to the root.

    The root must be the module whose forward() runs (LossModule): FSDP gathers parameters in
    forward hooks, and model.loss is not a forward.

    `precision` "bf16": the blocks gather their weights in bf16 (half the traffic and memory of fp32)
    and reduce their gradients in fp32, into fp32 shards that the optimizer steps. Their matmuls
    see the weights autocast would have cast to bf16 anyway (the same rounding); their norms see
    bf16-rounded gains. The root keeps fp32: it holds the pixel heads' output tables, which the fp32
    islands read (nn/precision.py). Inputs are not cast: the residual stream stays as autocast leaves
    it, and the images reach the root unrounded (they are also the pixel targets).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if precision == "bf16":
        blocks_policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32,
                                             cast_forward_inputs=False)
    else:
        blocks_policy = MixedPrecisionPolicy()  # fp32 throughout, as without sharding
    for module in loss_module.model.modules():
        for block in getattr(module, "blocks", []):
            fully_shard(block, mp_policy=blocks_policy)
    fully_shard(loss_module)
    return loss_module


def full_optimizer_state(model: FractalModel, optimizer: torch.optim.Optimizer, sharded: bool) -> dict:
    """The optimizer state in torch's usual layout (state keyed by parameter index), on CPU.

    Collective under FSDP (the shards are gathered; rank 0 gets the state, the others {}), so a
    checkpoint from a sharded run is the same file a single process writes, and vice versa.
    """
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # torch types the values loosely: "state" maps names to dicts, "param_groups" is a list of dicts.
    by_name = cast(dict[str, Any], get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(parameter_order(model, optimizer))}
    return {"state": {index[name]: value for name, value in by_name["state"].items()},
            "param_groups": [{**g, "params": [index[name] for name in g["params"]]} for g in by_name["param_groups"]]}


def load_optimizer_state(model: FractalModel, optimizer: torch.optim.Optimizer, state: dict, sharded: bool) -> None:
    """Inverse of full_optimizer_state: every rank passes the full state; FSDP keeps its shard."""
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = parameter_order(model, optimizer)
    by_name: dict[str, Any] = {
        "state": {names[i]: value for i, value in state["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    # Not strict: a parameter that never had a gradient (null_class without dropped labels) has no state yet.
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True, strict=False))


def parameter_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's index order (its groups, in order)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_model_state(model: FractalModel, sharded: bool) -> dict:
    """CPU tensors of the whole model; collective under FSDP (rank 0 gets them, the others {})."""
    if not sharded:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class StopRequest:
    """SIGINT/SIGTERM ask the loop to finish its step, write a checkpoint and return; a second one stops at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self.previous: dict[signal.Signals, Any] = {}  # signal -> the handler it had before

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: finishing this step and writing a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)


# ---- the model for the data ----------------------------------------------------------------------

def fit_classes(config: ModelConfig, data: DataSummary, from_data: bool, source: str) -> ModelConfig:
    """The config with the data's classes: taken from the data (`from_data`), else checked against it.

    A folder of class folders gives a class-conditional model with the folders' names, a folder of
    images an unconditional one. A config whose class count was chosen must match the data's.
    """
    names = data.class_names
    if from_data:
        return config.replace(num_classes=data.num_classes, class_names=names)
    if config.num_classes == 0:
        if data.num_classes:
            print(f"note: the model is unconditional: the {data.num_classes} classes of {source} are not used")
        return config
    if data.num_classes != config.num_classes:
        found = f"{data.num_classes} classes" if data.num_classes else "no classes (no class folders)"
        raise UserError(f"the model has {config.num_classes} classes, {source} {found}: make them agree (or leave "
                        f"class_num out of the config to take the data's)")
    if names is not None and config.class_names is not None and names != config.class_names:
        raise UserError(f"the model's classes ({', '.join(config.class_names)}) are not those of {source} "
                        f"({', '.join(names)})")
    return config if names is None else config.replace(class_names=names)


def start_from(model: FractalModel, initial: FractalModel, path: str) -> str | None:
    """Copy `initial`'s weights into `model` (--init); the class embedding is re-initialised, with a
    note returned, when the class counts differ. Any other difference is an error naming the tensor."""
    ours, theirs = model.state_dict(), initial.state_dict()
    skipped = []
    for key, value in ours.items():
        if key.startswith("class_embed.") and (key not in theirs or theirs[key].shape != value.shape):
            skipped.append(key)
            continue
        if key not in theirs or theirs[key].shape != value.shape:
            shape = tuple(theirs[key].shape) if key in theirs else "nothing"
            raise UserError(f"--init {path}: its {key} is {shape}, this model's {tuple(value.shape)} "
                            f"(give the checkpoint's own config, or none)")
    with torch.no_grad():
        for key, value in ours.items():
            if key not in skipped:
                value.copy_(theirs[key])
    if not skipped and model.config.num_classes == initial.config.num_classes:
        return None
    return (f"note: --init {path} has {initial.config.num_classes} classes, this run "
            f"{model.config.num_classes}: the class embedding starts afresh, every other weight from {path}")


# ---- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(out: Path, model: FractalModel, optimizer: torch.optim.Optimizer, step: int,
                    batches: EpochBatches, options: TrainOptions, d: Dist, device: torch.device,
                    sharded: bool = False) -> None:
    """Collective (every rank's RNG state is gathered, FSDP shards too); rank 0 writes."""
    states: list[dict | None] = [None] * d.world
    if d.enabled:
        dist.all_gather_object(states, rng_state(device))
    else:
        states[0] = rng_state(device)
    weights = full_model_state(model, sharded)
    optimizer_state = full_optimizer_state(model, optimizer, sharded)
    if d.main:
        try:
            write_checkpoint(out, model=weights, optimizer=optimizer_state, step=step, per_epoch=batches.per_epoch,
                             rng=states, config=model.config, sampling=model.recommended,
                             options=dataclasses.asdict(options),
                             world_size=d.world, keep=options.keep_checkpoints)
            save_ours(unsharded(model, weights) if sharded else model, out / "model.safetensors")
        except WriteError as e:  # a full disk: one line, and how to go on
            raise WriteError(f"{e} (training stopped at step {step}; make room, then --resume {out})") from None
    d.barrier()


def unsharded(model: FractalModel, weights: dict) -> FractalModel:
    """A plain CPU copy of a sharded model, from its gathered weights (for writing model.safetensors)."""
    with torch.device("meta"):
        copy = FractalModel(model.config)
    copy.recommended, copy.fingerprint_presets = model.recommended, model.fingerprint_presets
    copy.load_state_dict(weights, assign=True)
    return copy


def fit_checkpoint(load, path):
    """Run `load` (a load_state_dict); a mismatch means a damaged or hand-edited checkpoint: say so."""
    try:
        load()
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise UserError(f"--resume {path}: the checkpoint is damaged or does not fit its own config "
                        f"({str(e).strip().splitlines()[0][:200]})") from None


# ---- the loop --------------------------------------------------------------------------------

def train(config: ModelConfig | None, options: TrainOptions, classes_from_data: bool = False,
          dry_run: bool = False, presets: dict | None = None) -> dict:
    """Train (or resume) and return {'step', 'total', 'loss', 'seconds', 'interrupted', 'rank', 'already_done'}.

    `config` None: the checkpoint's when resuming or starting from `options.init`, else the default
    model for the data (config.config_for_data). `classes_from_data`: the data's classes (their count
    and names) replace the config's; otherwise they must agree (fit_classes). `dry_run`: print the
    data summary and the plan, check them, and return (with 'dry_run') before anything is written.
    A resumed run already at its total step returns at once (already_done) without writing anything.
    `presets`: the sampling settings an older config file carried beside `config` (config.config_and_presets),
    the model's recommendation (a preset's model takes its preset's).
    Rank 0 holds the run folder's lock (run_lock.py) from before it reads or checks anything there until
    it returns: a second training there is refused, and a folder holding another run or a model is left
    as it was.
    """
    lock, out = RunLock(options.out), Path(options.out)
    created, had_lock = not out.exists(), os.path.lexists(out / LOCK_NAME)
    try:
        return train_locked(config, options, lock, classes_from_data, dry_run, presets or {})
    finally:
        if lock.fd is not None and not had_lock and not lock.writing:
            (out / LOCK_NAME).unlink()  # refused before writing: the folder is left as it was
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def check_run_folder(out: Path, resume: str | None) -> None:
    """A fresh run (or a resumed one writing elsewhere) must not write over a run or a model in `out`."""
    if resume is not None and Path(resume).resolve() in (out.resolve(), (out / CHECKPOINT_NAME).resolve()):
        return
    if (out / CHECKPOINT_NAME).exists():
        raise UserError(f"{out} already holds a training run: --resume {out}, or choose another --out")
    held = [name for name in ("model.safetensors", "config.json")
            if (out / name).is_file() and not (out / name).is_symlink()]  # a planted link is replaced, not kept
    if held:
        raise UserError(f"{out} already holds a model ({held[0]}): choose another --out (nothing there is replaced)")


def train_locked(config: ModelConfig | None, options: TrainOptions, lock: RunLock, classes_from_data: bool,
                 dry_run: bool, presets: dict) -> dict:
    # The other ranks wait in the next step's collective while rank 0 samples a preview or writes a
    # checkpoint: minutes for a large model, beyond NCCL's default timeout.
    d, device = setup_distributed(options.device, timeout=COLLECTIVE_TIMEOUT)
    if d.main and not dry_run:  # one writer per run folder, from before anything in it is read or checked
        lock.acquire()  # also removes temporary files a killed run left here
        check_run_folder(Path(options.out), options.resume)
    resume = read_checkpoint(options.resume) if options.resume else None
    if resume is not None and options.init is not None:
        raise UserError("give --resume (continue a run) or --init (start from its weights), not both")
    initial = load_checkpoint(options.init) if options.init is not None and resume is None else None
    summary = describe_data(options.data)
    recommended = None  # the recommendation a resumed run stored: the model's
    if resume is not None:
        try:  # an older run's config also carries the model's sampling settings
            fields, presets = split_sampling(resume["config"])
            config, classes_from_data = ModelConfig.from_dict(fields), False
            check_presets(presets, config.num_levels)
        except ConfigError as e:
            raise UserError(f"--resume {options.resume}: the stored config: {e}") from None
        try:
            recommended = check_sampling(resume["sampling"], f"--resume {options.resume}", config,
                                         where="the stored 'sampling'")
        except CheckpointError as e:
            raise UserError(str(e)) from None
    elif config is None and initial is not None:  # the model it starts from: its config and sampling settings
        config, classes_from_data, presets = initial.config, True, initial.presets_for_fingerprint()
    elif config is None:
        config, classes_from_data = config_for_data(max(summary.sizes[0]), summary.channels[0], 0), True
    config = fit_classes(config, summary, classes_from_data, options.data)
    # A config too large for this machine is one line now, not an allocation that fails minutes later.
    check_fits(config, device, training=True, shards=d.world if options.fsdp and d.enabled else 1)
    out = Path(options.out)
    if d.main:
        for line in [*summary.lines(), *summary.fit_notes(config.img_size, config.channels)]:
            print(line, flush=True)
    torch.manual_seed(options.seed + d.rank)  # per-rank: different label dropout and MAR masks
    np.random.seed(options.seed + d.rank)
    random.seed(options.seed + d.rank)

    dataset = load_dataset(options.data, "train", config.img_size, config.channels)
    labelled = config.num_classes > 0 and dataset.num_classes > 0
    plan = schedule(options, config, len(dataset), d.world)
    global_batch, total, warmup, base_lr = plan["batch"], plan["total"], plan["warmup"], plan["lr"]
    if global_batch % d.world:
        raise UserError(f"global batch {global_batch} is not divisible by {d.world} processes")
    batches = EpochBatches(len(dataset), global_batch, d.rank, d.world, options.seed, options.flip)
    warning = lr_warning(base_lr, config, global_batch) if options.lr is not None else None
    if warning and d.main:
        print(warning, file=sys.stderr, flush=True)
    if dry_run:
        if d.main:
            print(f"dry run: would train {config.name} ({config.num_classes or 'no'} classes) for {total} steps "
                  f"of {global_batch} images, lr {base_lr:.3g}, warm-up {warmup}; nothing written", flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        return {"step": 0, "total": total, "loss": None, "seconds": 0.0, "interrupted": None, "rank": d.rank,
                "already_done": False, "dry_run": True}
    if resume is not None and int(resume["step"]) >= total:  # nothing to do: the checkpoint stays untouched
        if dist.is_initialized():
            dist.destroy_process_group()
        return {"step": int(resume["step"]), "total": total, "loss": None, "seconds": 0.0, "interrupted": None,
                "rank": d.rank, "already_done": True}

    with torch.random.fork_rng(devices=[]):
        # The same initial weights on every rank (FSDP does not broadcast them), drawn on the CPU. Only the
        # CPU generator is re-seeded: torch.manual_seed would also re-seed every GPU's generator, which
        # fork_rng(devices=[]) does not restore, leaving all ranks on one GPU stream.
        torch.default_generator.manual_seed(options.seed)
        model = FractalModel(config).to(device)
    if presets or recommended:
        model.recommend(recommended or {}, presets)
    if options.grad_checkpointing:
        enable_grad_checkpointing(model)
    # auto: bf16 autocast on GPUs with native bf16 only (nn/precision.py says why; on a CPU with bf16
    # instructions --precision bf16 gives faster steps: benchmarks/RESULTS.md).
    precision = resolve_precision(options.precision, device)  # "fp32" or "bf16"
    autocast = precision_context(precision, device)
    if options.fsdp:
        require_torch("torch.distributed.fsdp.fully_shard", "--fsdp")
        require_torch("torch.distributed.fsdp.MixedPrecisionPolicy", "--fsdp")
    sharded = options.fsdp and d.enabled
    if options.fsdp and not d.enabled and d.main:
        print("note: --fsdp needs several processes (torchrun --nproc_per_node=N); training unsharded",
              file=sys.stderr)
    loss_module: LossModule | nn.parallel.DistributedDataParallel
    loss_module = LossModule(model, options.mar_masks)
    if resume is not None:  # every rank loads the full weights; FSDP then keeps its shard
        fit_checkpoint(lambda: model.load_state_dict(resume["model"]), options.resume)
    elif initial is not None:
        assert options.init is not None  # initial is read from options.init
        note = start_from(model, initial, options.init)
        if note and d.main:
            print(note, flush=True)
    if sharded:
        loss_module = shard(loss_module, precision)  # before the optimizer: sharding replaces the parameters
    optimizer = torch.optim.AdamW(param_groups(model, options.weight_decay), lr=base_lr, betas=(0.9, 0.95))
    step = 0
    if resume is not None:
        fit_checkpoint(lambda: load_optimizer_state(model, optimizer, resume["optimizer"], sharded), options.resume)
        step = int(resume["step"])
        if len(resume["rng"]) == d.world:  # same world size: every rank continues its own stream
            fit_checkpoint(lambda: set_rng_state(resume["rng"][d.rank], device), options.resume)
        elif d.main:
            print(f"note: the run was saved from {len(resume['rng'])} process(es), resumed on {d.world}: "
                  f"the data order continues exactly, the random streams start afresh", file=sys.stderr)
    if d.main:  # everything read and checked: from here on the run writes into its folder
        lock.writing = True
        check_writable(out)
    batches.start = step
    if d.enabled and not sharded:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[d.local_rank] if device.type == "cuda" else None,
            find_unused_parameters=some_parameters_sit_out(config, labelled))
    # Its own generator: creating the iterator must not draw from the (restored) global RNG stream.
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches,
                                         num_workers=loader_workers(options.num_workers, device),
                                         pin_memory=device.type == "cuda", generator=torch.Generator())
    writer = tensorboard_writer(out) if options.tensorboard and d.main else None
    log = MetricsLog(out, options.log_every, step, device) if d.main else None  # out/metrics.jsonl

    if d.main:
        n_params = sum(p.numel() for p in model.parameters())
        parallel = f" ({dist.get_backend()}, {'FSDP' if sharded else 'DDP'})" if d.enabled else ""
        autocast_note = ", bf16 autocast" if precision == "bf16" else ""
        print(f"training {config.name} ({n_params / 1e6:.2f}M parameters) on {len(dataset)} images from "
              f"{options.data}: steps {step}->{total}, global batch {global_batch} over {d.world} process(es)"
              f"{parallel}, lr {base_lr:.3g}, warm-up {warmup}, device {device}{autocast_note}",
              flush=True)
    bar = tqdm(total=total, initial=step, disable=not d.main, dynamic_ncols=True, mininterval=2.0)
    model.train()
    started, seen, loss_value, interrupted = time.time(), 0, float("nan"), None
    data = iter(loader)
    with StopRequest(announce=d.main) as stop, bar:  # closing the bar first puts an error on its own line
        while step < total:
            images, labels = next(data)
            images = images.to(device, non_blocking=True)
            if options.shift:  # drawn from (seed, rank, step): a resumed run replays the same shifts
                g = torch.Generator().manual_seed((options.seed + d.rank) * 1_000_003 + step)
                images = random_shift(images, options.shift, g)
            labels = labels.to(device, non_blocking=True) if labelled else None  # a blocking copy waits for the device
            lr = lr_at(step, base_lr, warmup, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                loss = loss_module(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # queued behind the forward: nothing is read back in between
            total_norm = nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
            # One collective and one read-back per step: the mean loss, the gradient norm, and whether any
            # rank was asked to stop. Every rank sees the same values, so all stop together.
            loss_value, grad_norm, stopping = reduce_status(loss.detach(), total_norm, stop.signum is not None, d)
            if not math.isfinite(loss_value):
                raise UserError(f"loss is {loss_value} at step {step}; stopped before updating the weights "
                                f"(the last checkpoint, if any, is kept)")
            if not math.isfinite(grad_norm):
                raise UserError(f"gradient norm is {grad_norm} at step {step}; stopped before updating "
                                f"the weights (the last checkpoint, if any, is kept)")
            optimizer.step()
            step += 1
            seen += images.shape[0] * d.world
            if d.main:
                rate = seen / max(1e-9, time.time() - started)
                bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
                assert log is not None  # rank 0 keeps the metrics log
                log.step(step, loss_value, lr, grad_norm, images.shape[0] * d.world,
                         flush=step == total or stopping)
                if writer is not None:
                    writer.add_scalar("train/loss", loss_value, step)
                    writer.add_scalar("train/lr", lr, step)
            if step % options.save_every == 0 or step == total or stopping:
                save_checkpoint(out, model, optimizer, step, batches, options, d, device, sharded)
            if stopping and step < total:
                interrupted = stop.signum or signal.SIGTERM  # another rank's signal: report it as a SIGTERM
                break
            # Sampling would need the whole model on rank 0: sharded runs sample from model.safetensors afterwards.
            if options.sample_every and not sharded and (step % options.sample_every == 0 or step == total) and d.main:
                write_samples(model, out / "samples" / f"step{step:07d}.png", options.seed, precision)
    if writer is not None:
        writer.close()
    if d.main and labelled and not sharded and not interrupted and step == total:
        recommend_guidance(model, dataset, options, out, step)
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"step": step, "total": total, "loss": loss_value, "seconds": time.time() - started,
            "interrupted": int(interrupted) if interrupted else None, "rank": d.rank, "already_done": False}


GUIDANCE_MIN_STEPS = 200  # shorter runs keep the config's guidance scale: their samples say little yet
JUDGE_IMAGES = 2000  # training images the judge learns from at most (spread over the whole set)
JUDGE_MIN_ACCURACY = 0.8  # on those images; a judge below it cannot tell the classes apart, nor measure them


def recommend_guidance(model: FractalModel, dataset, options: TrainOptions, out: Path, steps: int):
    """At the end of a class-conditional run of `steps` steps whose model recommends no guidance yet (cfg 1;
    presets with their own recommendation keep it): measure which guidance scale makes the classes
    visible (guidance.py) and store it as the model's recommendation in out/model.safetensors."""
    if not can_choose(model) or steps < GUIDANCE_MIN_STEPS or len(dataset) < 2 * model.config.num_classes:
        return
    if resolve_settings(model).cfg != 1.0:  # a preset with its own recommendation (published, or a recipe's)
        return
    picked = torch.linspace(0, len(dataset) - 1, min(JUDGE_IMAGES, len(dataset))).long().tolist()
    images, labels = stack(dataset, indices=picked)
    judge = train_judge(images, labels, model.config.num_classes, flip=options.flip, seed=options.seed)
    accuracy = judge.accuracy(images, labels)
    if accuracy < JUDGE_MIN_ACCURACY:
        print(f"note: guidance not measured: a classifier trained on the images tells only {accuracy:.0%} of "
              f"them apart; the recommended cfg stays 1", flush=True)
        return
    choice = choose_guidance(model, judge, seed=options.seed)
    model.recommended = {**model.recommended, "cfg": choice.cfg}
    save_ours(model, out / "model.safetensors")
    print(f"guidance: {choice.summary()} (stored in {out / 'model.safetensors'})", flush=True)


def reduce_status(loss: torch.Tensor, grad_norm: torch.Tensor, stop: bool, d: Dist) -> tuple[float, float, bool]:
    """(mean loss over ranks, gradient norm, whether any rank asked to stop), read back at once."""
    if hasattr(grad_norm, "full_tensor"):  # FSDP: the norm is sharded over ranks; this gathers it
        grad_norm = grad_norm.full_tensor()
    status = torch.stack([loss.float(), grad_norm.float().to(loss.device),
                          torch.tensor(float(stop), device=loss.device)])
    if d.enabled:
        dist.all_reduce(status)
        status[:2] /= d.world  # the norm is the same on every rank: its mean is itself
    loss_value, norm, stopping = status.tolist()
    return loss_value, norm, stopping > 0


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: TensorBoard is not a dependency
        print("note: tensorboard is not installed; scalars are not logged")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def random_shift(images: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (N, C, H, W) moved by its own (dy, dx), each in [-limit, limit]; uncovered pixels are 0."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (limit, limit, limit, limit))
    offsets = torch.randint(0, 2 * limit + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def write_samples(model: FractalModel, path: Path, seed: int, precision: str) -> None:
    """A small preview grid (one row per class, up to 10 classes) with the model's resolved settings,
    at the training's precision."""
    classes = min(model.config.num_classes, 10)
    labels = [c for c in range(classes) for _ in range(4)] if classes else None
    save_grid(sample(model, labels=labels, n=None if labels else 16, seed=seed, precision=precision), path, nrow=4)
