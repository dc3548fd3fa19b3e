"""Choosing a class-conditional model's guidance scale by measurement.

Classifier-free guidance (the paper's Section 4) trades variety for class likeness, and which scale
makes a freshly trained model's classes visible depends on the model and the data. So the end of a
class-conditional training run measures it: a small classifier (`Judge`) is trained on the run's
own training images, each candidate scale draws a few samples of every class, and the judge says
which share of them look like their class. The recommended scale is the smallest candidate whose
samples are recognised nearly as often as at the best one: more guidance than that only costs variety.

(The model cannot judge its own samples: its class-conditional likelihood tells its samples' classes
apart even where they show no shape at all, by colour statistics alone.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model import FractalModel
from .samples import sample

CANDIDATES = (1.0, 1.5, 2.0, 3.0, 4.0)
TOLERANCE = 0.05  # a scale within this share of the best recognition rate counts as good enough
MAX_CLASSES = 32  # more classes than this make the measurement too costly for the end of a run
SAMPLES_PER_SCALE = 64  # at least this many samples per candidate scale, spread evenly over the classes
JUDGE_SIDE = 32  # the judge sees images at most this large (larger ones are area-averaged down)
JUDGE_STEPS, JUDGE_BATCH, JUDGE_LR = 400, 64, 3e-3


class Judge(nn.Module):
    """Two convolutions and a linear read-out of the pooled features: uint8 (N, C, H, W) -> logits."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.out = nn.Linear(64, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        if max(x.shape[-2:]) > JUDGE_SIDE:
            x = F.adaptive_avg_pool2d(x, JUDGE_SIDE)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.out(x.mean((2, 3)))

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self(images).argmax(1) == labels).float().mean())


def train_judge(images: torch.Tensor, labels: torch.Tensor, classes: int, flip: bool = False,
                seed: int = 0, steps: int = JUDGE_STEPS) -> Judge:
    """A Judge trained on uint8 (N, C, H, W) images with int64 labels (N,) in [0, classes); `flip`:
    random horizontal flips (only where a flip keeps the class, as in the model's own training)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        judge = Judge(images.shape[1], classes)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=JUDGE_LR)
    for _ in range(steps):
        index = torch.randint(0, len(images), (min(JUDGE_BATCH, len(images)),), generator=generator)
        batch = images[index]
        if flip:
            flipped = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flipped[:, None, None, None], batch.flip(-1), batch)
        loss = F.cross_entropy(judge(batch), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return judge.eval()


@dataclass(frozen=True)
class GuidanceChoice:
    cfg: float
    recognised: dict[float, float]  # candidate scale -> share of its samples the judge gives their own class

    def summary(self) -> str:
        rates = ", ".join(f"{cfg:g}: {share:.0%}" for cfg, share in self.recognised.items())
        return f"samples recognised as their class by guidance scale {rates}; recommended cfg {self.cfg:g}"


def can_choose(model: FractalModel) -> bool:
    """Whether a guidance scale can be measured: a class-conditional model trained with label dropout
    (guidance needs its unconditional prediction), with few enough classes."""
    c = model.config
    return 2 <= c.num_classes <= MAX_CLASSES and c.label_drop_prob > 0


def choose_guidance(model: FractalModel, judge: Judge, candidates=CANDIDATES, per_class: int | None = None,
                    seed: int = 0) -> GuidanceChoice:
    """Measure each candidate scale with `judge` (see the module's docstring) and choose one. Seeded:
    the same model, judge and arguments give the same choice."""
    if not can_choose(model):
        raise ValueError("guidance is measured for class-conditional models trained with label dropout, "
                         f"with 2 to {MAX_CLASSES} classes")
    classes = model.config.num_classes
    per_class = per_class or -(-SAMPLES_PER_SCALE // classes)
    labels = torch.arange(classes).repeat_interleave(per_class)
    recognised = {}
    for cfg in candidates:  # sample and Judge.accuracy run without gradients
        images = sample(model, labels=labels, cfg=cfg, seed=seed, threads=None).cpu()  # the judge's device
        recognised[float(cfg)] = judge.accuracy(images, labels)
    best = max(recognised.values())
    chosen = next(cfg for cfg, share in recognised.items() if share >= best - TOLERANCE)
    return GuidanceChoice(chosen, recognised)
