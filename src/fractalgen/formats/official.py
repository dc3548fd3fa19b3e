"""The authors' checkpoints: a torch.save'd dict {'model': state_dict, 'args': Namespace, ...}
under their parameter names, read and written.

Every rename between our parameter names and the official ones lives in the tables below.
Loading never executes pickled code: `weights_only=True`, allow-listing only the argparse
Namespace that official training checkpoints carry under `args`.
"""
from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError, ModelConfig, get_config
from ..files import atomic_write
from ..model import FractalModel
from .checks import CheckpointError, check_before_building, check_tensors, given_config

# ---- official names --------------------------------------------------------------------

# Inside a level (ours -> official), by generator kind. Applied to the part after the level prefix.
_COMMON_LEVEL = [
    (r"^patch_embed\.", "patch_emb."), (r"^embed_norm\.", "patch_emb_ln."), (r"^cond_embed\.", "cond_emb."),
    (r"^pos_embed$", "pos_embed_learned"), (r"^guide_embed\.", "pix_proj."), (r"^guide_head\.", "guiding_pixel_loss."),
]
_LEVEL_RENAMES = {
    "ar": _COMMON_LEVEL + [
        (r"\.attn_norm\.", ".attention_norm."), (r"\.attn\.qkv\.", ".attention.wqkv."),
        (r"\.attn\.proj\.", ".attention.wo."), (r"\.mlp_norm\.", ".ffn_norm."),
        (r"\.mlp\.gate\.", ".feed_forward.w1."), (r"\.mlp\.up\.", ".feed_forward.w3."),
        (r"\.mlp\.down\.", ".feed_forward.w2."),
    ],
    "mar": _COMMON_LEVEL,
}
_CHANNEL_NAMES = "rgb"


def _pixel_head_key(key: str) -> str:
    """Pixel-head parameter (ours -> official): per-channel tables are r/g/b_codebook, biases r/g/b_mlm."""
    def channel(i):
        i = int(i)
        return _CHANNEL_NAMES[i] if i < len(_CHANNEL_NAMES) else f"c{i}"

    key = re.sub(r"^codebooks\.(\d+)\.", lambda m: f"{channel(m.group(1))}_codebook.", key)
    key = re.sub(r"^logit_bias\.(\d+)$", lambda m: f"{channel(m.group(1))}_mlm.bias", key)
    return re.sub(r"^embed_norm\.", "ln.", key)


def official_key(key: str, config: ModelConfig) -> str:
    """Our state-dict key -> the official one."""
    if key == "null_class":
        return "fake_latent"
    if key.startswith("class_embed."):
        return "class_emb." + key[len("class_embed."):]
    if key.startswith("pixel_head."):
        return "next_fractal." * config.num_levels + _pixel_head_key(key[len("pixel_head."):])
    m = re.match(r"^levels\.(\d+)\.(.*)$", key)
    if not m:
        raise KeyError(key)
    depth, rest = int(m.group(1)), m.group(2)
    if rest.startswith("guide_head."):
        rest = "guiding_pixel_loss." + _pixel_head_key(rest[len("guide_head."):])
    else:
        for pattern, repl in _LEVEL_RENAMES[config.kinds[depth]]:
            rest = re.sub(pattern, repl, rest)
    return "next_fractal." * depth + "generator." + rest


def official_state_dict(model: FractalModel) -> dict[str, torch.Tensor]:
    return {official_key(k, model.config): v for k, v in model.state_dict().items()}


# ---- safe torch.load ---------------------------------------------------------------------

SCALARS = (str, int, float, bool, type(None))
ARGS_NODE_BUDGET = 100_000  # official `args` hold a few hundred values; a bigger walk is an attack or damage


def _plain(value) -> bool:
    """Only scalars inside lists, tuples and str-keyed dicts.

    The walk is bounded: each container is visited once (by id), so shared or self-referencing
    structure (a list holding itself twice, 60 levels deep, is 2**60 paths) costs one visit per
    object, and the number of values looked at is capped.
    """
    seen, todo, budget = set(), [value], ARGS_NODE_BUDGET
    while todo:
        item = todo.pop()
        budget -= 1
        if budget < 0:
            return False
        if isinstance(item, SCALARS):
            continue
        if not isinstance(item, (list, tuple, dict)):
            return False
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            todo.extend(item.values())
        else:
            todo.extend(item)
    return True


def safe_torch_load(path: str | Path) -> dict:
    """torch.load with weights_only=True; an argparse.Namespace of plain values is the only class allowed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # noise before our own error line
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) files
    except Exception as e:  # the unpickler's refusal, a truncated zip, garbage bytes ...
        text = str(e).strip()
        msg = text.splitlines()[0] if text else type(e).__name__
        # The weights-only unpickler's own line: "... unsupported GLOBAL posix.system ..." (code) or
        # "Unsupported operand 255" (garbage bytes); the first line is the same boilerplate for both.
        detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line), msg)
        if "GLOBAL" in text or "Unsupported global" in text:
            raise CheckpointError(f"refusing to load {path}: it holds objects that would run code when "
                                  f"unpickled ({detail[:200]})") from None
        if "Weights only load failed" in text:
            msg = f"damaged or not a checkpoint ({detail[:200]})"
        raise CheckpointError(f"cannot read checkpoint {path}: {msg[:300]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint dict (got {type(obj).__name__})")
    args = obj.get("args")
    if args is not None and not (isinstance(args, argparse.Namespace) and _plain(vars(args))):
        raise CheckpointError(f"refusing {path}: its 'args' entry is not an argparse Namespace of plain values")
    return obj


# ---- official format ---------------------------------------------------------------------

def _official_config_from_args(args: argparse.Namespace | None) -> ModelConfig | None:
    """The official training args name the model (e.g. --model fractalmar_in64)."""
    name = getattr(args, "model", None) if args is not None else None
    try:
        return get_config(name) if isinstance(name, str) else None
    except ConfigError:
        return None


def load_official(path, config=None) -> FractalModel:
    """An official-format file ({'model': state_dict, ...}) into a model of the matching config."""
    ckpt = safe_torch_load(path)
    state = ckpt.get("model")
    if state is None:
        keys = ", ".join(map(str, list(ckpt)[:5])) + (", ..." if len(ckpt) > 5 else "")
        raise CheckpointError(f"{path} has no 'model' entry (its keys: {keys or 'none'})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: its 'model' entry is a {type(state).__name__}, not a state dict "
                              "(parameter names and tensors)")
    # A preset's model recommends the preset's sampling settings (the authors' for theirs); a given older
    # config's dict or file, the ones it carried.
    cfg, presets = given_config(config) if config is not None else (_official_config_from_args(ckpt.get("args")), None)
    if cfg is None:
        raise CheckpointError(f"{path} is an official-format checkpoint: say which model it is "
                              f"(a preset name or a config)")
    model = model_from_official_state(state, cfg, path)
    if presets is not None:
        model.recommend({}, presets, fingerprinted=presets)
    return model


def model_from_official_state(state: dict, cfg: ModelConfig, path) -> FractalModel:
    """A model of config `cfg` from a state dict under the official names (shapes checked key by key)."""
    check_before_building(cfg, len(state), path, context=f" for config {cfg.name!r}")
    with torch.device("meta"):
        model = FractalModel(cfg)
    wanted = model.state_dict()  # meta tensors: the shapes and dtypes to expect, under our names
    expected = {official_key(k, cfg): k for k in wanted}
    ours = {k: state[official] for official, k in expected.items() if official in state}
    check_tensors(ours, wanted, path, name=lambda k: official_key(k, cfg), context=f" for config {cfg.name!r}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]} ({len(unexpected)} in all) "
                              f"for config {cfg.name!r}")
    ours = {k: v.float() if v.is_floating_point() else v for k, v in ours.items()}  # bf16 files load as fp32
    model.load_state_dict(ours, assign=True, strict=True)
    return model


def save_official(model: FractalModel, path: str | Path, **extra: Any) -> None:
    """Export to the official layout ({'model': state_dict, **extra}), written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in official_state_dict(model).items()}
    atomic_write(lambda f: torch.save({"model": state, **extra}, f), path)
