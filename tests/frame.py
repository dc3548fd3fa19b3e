"""The tests' shared scaffolding: where things are, tiny models and data, and the command line in this process.

Tests import these by name (`from frame import tiny_model`); tests/conftest.py puts this folder on the
path, whichever subfolder a test lives in. What a test specifies stays in the test.
"""
import contextlib
import io
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

import fractalgen
from fractalgen.cli import main
from fractalgen.config import ModelConfig
from fractalgen.train import TrainOptions

TESTS = Path(__file__).parent
ROOT = TESTS.parent  # the repository: README.md, pyproject.toml, benchmarks/
DATA = TESTS / "data"  # reference vectors and layouts (copied from the authors' reference material)
TRAIN_WORKER = TESTS / "train_worker.py"  # `fractalgen train` with test switches, for subprocesses

# ---- tiny models ---------------------------------------------------------------------------------

# An 8x8 grayscale two-class model with two AR levels: trains in a second.
TINY = {"img_sizes": [8, 2, 1], "widths": [16, 8, 8], "blocks": [1, 1, 1], "heads": [2, 2, 2], "kinds": ["ar", "ar"],
        "channels": 1, "num_classes": 2, "pixel_mean": [0.5], "pixel_std": [0.5], "name": "tiny_gray"}


def tiny_config(**changes) -> ModelConfig:
    """TINY as a ModelConfig, with `changes`."""
    return ModelConfig.from_dict({**TINY, **changes})


def small_config(sizes, kinds, channels=1, guiding=False, num_classes=10, **fields) -> ModelConfig:
    """Levels of `sizes` and `kinds`, each 16 wide with one block of two heads, dropout off."""
    n = len(sizes)
    return ModelConfig(**{
        "img_sizes": sizes, "widths": (16,) * n, "blocks": (1,) * n, "heads": (2,) * n, "kinds": kinds,
        "channels": channels, "num_classes": num_classes, "num_conds": 5 if "mar" in kinds else 1,
        "guiding_pixel": guiding, "attn_dropout": 0.0, "proj_dropout": 0.0, "pixel_mean": (0.5,) * channels,
        "pixel_std": (0.5,) * channels, **fields})


def tiny_model(config="tiny_ar", seed=0, perturb=0.0, **changes) -> fractalgen.FractalModel:
    """A model in eval mode built after `torch.manual_seed(seed)` from `config` (a preset name, a dict or a
    ModelConfig) with `changes`; `perturb` adds that much N(0, 1) noise to every weight, so that no
    distribution is close to uniform and a mix-up of weights would show."""
    torch.manual_seed(seed)
    config = fractalgen.get_config(config)
    model = fractalgen.build(config.replace(**changes) if changes else config)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model.eval()


# ---- the authors' reference vectors --------------------------------------------------------------

VECTOR_CONFIGS = json.loads((DATA / "configs.json").read_text())  # name -> official config and its losses


def reference_vector(name):
    """(model, images, labels, MAR masks, config with the losses) of one of the authors' tiny models."""
    fields = {k: v for k, v in VECTOR_CONFIGS[name].items() if k not in ("eval_loss", "train_loss")}
    # The vectors were made with every dropout and the label dropout switched off.
    cfg = ModelConfig.from_official(fields, attn_dropout=0.0, proj_dropout=0.0, label_drop_prob=0.0, name=name)
    model = fractalgen.load(DATA / f"{name}.pth", config=cfg)
    v = np.load(DATA / f"{name}.npz")
    masks = None
    if "mask_level0" in v:  # the given level-0 mask; every deeper MAR level masks all of its tokens
        masks = [torch.from_numpy(v["mask_level0"]).bool()] + ["all"] * (cfg.num_levels - 1)
    return model, torch.from_numpy(v["images"]), torch.from_numpy(v["labels"]), masks, VECTOR_CONFIGS[name]


class Exploit:
    """Pickled, it runs `touch target` when unpickled: a loader that runs code leaves the file behind."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


# ---- tiny training data and runs -------------------------------------------------------------------

def tiny_data(path, n=16, size=8) -> str:
    """Two classes of simple pictures: a bright left half or a bright top half, with noise."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 40, (n, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    images[labels == 0, :, : size // 2] += 200
    images[labels == 1, : size // 2, :] += 200
    np.savez(path, images=images, labels=labels)
    return str(path)


def tiny_inputs(folder: Path) -> tuple[str, Path]:
    """folder/d.npz (tiny_data) and folder/tiny.json (tiny_config): what `fractalgen train` reads."""
    data = tiny_data(folder / "d.npz")
    (folder / "tiny.json").write_text(tiny_config().to_json())
    return data, folder / "tiny.json"


def train_tiny(folder: Path) -> Path:
    """folder/run: `fractalgen train` of the tiny inputs for two steps (checkpoint.pt + model.safetensors)."""
    data, config = tiny_inputs(folder)
    assert main(["train", "--config", str(config), "--data", data, "--out", str(folder / "run"), "--steps", "2",
                 "--batch-size", "4", "--sample-every", "0", "--device", "cpu"]) == 0
    return folder / "run"


def train_options(tmp_path, data, **changes) -> TrainOptions:
    """Four steps of batch 4 into tmp_path/run, seeded, no flips and no samples."""
    base = dict(out=str(tmp_path / "run"), data=data, steps=4, batch_size=4, lr=3e-3, warmup_steps=1,
                flip=False, save_every=2, sample_every=0, device="cpu", seed=1)
    return TrainOptions(**{**base, **changes})


# ---- the command line in this process ------------------------------------------------------------

def last_json(out: str) -> dict:
    """The record `--json` prints as the last line of stdout."""
    return json.loads(out.strip().splitlines()[-1])


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return last_json(self.out)


def run_cli(*argv) -> CliResult:
    """`fractalgen ARGV` in this process with its own stdout and stderr; argparse's exits are exit codes,
    any other exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return CliResult(code, out.getvalue(), err.getvalue())
