"""Run the authors' implementation (a checkout of LTH14/fractalgen) on a CPU, beside ours.

Nothing of theirs is copied here: `load(DIR)` imports their `models/` package from the given
checkout, after installing runtime shims for the three things it needs that a CPU-only
environment lacks:
  - CUDA: `Tensor.cuda()` returns the tensor and `torch.cuda.amp.autocast` is a no-op context
    (their code moves every new tensor to the GPU and disables autocast around fp32 islands);
  - timm: only `DropPath` and `Mlp` of `timm.models.vision_transformer` are used, with the
    module names (fc1, fc2) that their checkpoints carry; small stand-ins are registered;
  - util.visualize imports torchvision/IPython for a notebook preview we never call.
The shims are installed only inside `patched_cuda()` (CUDA) and in `sys.modules` under the
names their imports ask for (timm, util.visualize), so our own code never sees them.

`build(model, reference)` builds their model with the same configuration as ours and loads our
weights into it through the official checkpoint layout (`fractalgen.save_official`).
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

import fractalgen
from fractalgen.formats.official import safe_torch_load

# ---- shims -----------------------------------------------------------------------------------

class DropPath(nn.Module):
    """timm's stochastic depth; their blocks only build it with rate 0 (never reached)."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob)


class Mlp(nn.Module):
    """timm's two-layer MLP as their blocks call it: fc1 -> act -> dropout -> fc2 -> dropout."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


def _install_module(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _install_shims():
    vit = _install_module("timm.models.vision_transformer", DropPath=DropPath, Mlp=Mlp)
    models = _install_module("timm.models", vision_transformer=vit)
    _install_module("timm", models=models)
    _install_module("util.visualize", visualize_patch=lambda *a, **k: None)


@contextlib.contextmanager
def patched_cuda(bf16: bool = False):
    """Inside: `.cuda()` is the identity and `torch.cuda.amp.autocast` does nothing (CPU runs of their
    code), or with bf16 is CPU bf16 autocast with the same arguments (their fp32 islands disable it)."""
    saved = (torch.Tensor.cuda, nn.Module.cuda, torch.cuda.amp.autocast)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    if bf16:
        torch.cuda.amp.autocast = lambda enabled=True, **k: torch.autocast("cpu", dtype=torch.bfloat16,
                                                                           enabled=enabled)
    else:
        torch.cuda.amp.autocast = lambda *a, **k: contextlib.nullcontext()
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.amp.autocast = saved


def _import_package(name: str, folder: Path):
    """Make `folder` the top-level package `name` (their code imports `models.ar`, `util.visualize`)."""
    # Their folders have no __init__.py: a module with __path__ is all the import system needs
    # to find the files inside it.
    return _install_module(name, __path__=[str(folder)])


def load(reference_dir) -> types.ModuleType:
    """Their `models.fractalgen` module, imported from a checkout of LTH14/fractalgen."""
    root = Path(reference_dir).resolve()
    if not (root / "models" / "fractalgen.py").is_file():
        raise SystemExit(f"error: {root} is not a checkout of LTH14/fractalgen (no models/fractalgen.py)")
    _import_package("util", root / "util")
    _install_shims()
    _import_package("models", root / "models")
    with patched_cuda():
        return importlib.import_module("models.fractalgen")


# ---- their model with our weights ----------------------------------------------------------

def constructor_args(config: fractalgen.ModelConfig) -> dict:
    """Their FractalGen's keyword arguments for one of our configs (RGB, as their code hard-codes)."""
    if config.channels != 3:
        raise ValueError("the authors' code is RGB only")
    return {
        "img_size_list": tuple(config.img_sizes), "embed_dim_list": tuple(config.widths),
        "num_blocks_list": tuple(config.blocks), "num_heads_list": tuple(config.heads),
        "generator_type_list": tuple(config.kinds) + ("ar",),
        "label_drop_prob": config.label_drop_prob, "class_num": config.num_classes,
        "attn_dropout": config.attn_dropout, "proj_dropout": config.proj_dropout,
        "guiding_pixel": config.guiding_pixel, "num_conds": config.num_conds, "r_weight": config.r_weight,
    }


def build(model: fractalgen.FractalModel, reference: types.ModuleType) -> nn.Module:
    """Their FractalGen with exactly our model's weights, exported in the official layout and loaded strictly."""
    with patched_cuda():
        theirs = reference.FractalGen(**constructor_args(model.config))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "official.pth"
        fractalgen.save_official(model, path)
        state = safe_torch_load(path)["model"]
    theirs.load_state_dict(state, strict=True)
    return theirs
