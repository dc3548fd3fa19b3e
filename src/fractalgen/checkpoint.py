"""Checkpoints: our own format (safetensors + config JSON), the official one (torch.save'd dict), and
model folders (config.json + model.safetensors + README.md, written by hub.py), by path or by
Hugging Face hub id from the local cache (huggingface_hub's snapshot_download owns the cache: it
honours HF_HOME / HF_HUB_CACHE, and HF_HUB_OFFLINE=1 reads the cache only).

Every rename between our parameter names and the official ones lives in the tables below.
Loading never executes pickled code: `weights_only=True`, allow-listing only the argparse
Namespace that official training checkpoints carry under `args`.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import warnings
from pathlib import Path

import torch

from .config import CFG_SCHEDULES, ConfigError, ModelConfig, get_config
from .files import atomic_write
from .jsonfile import parse_object, read_object
from .model import FractalModel
from .settings import SETTING_MAX

FORMAT_VERSION = "1"
ASSETS = Path(__file__).parent / "assets"
BUNDLED = {"mnist": ASSETS / "mnist.safetensors", "mnist_mar": ASSETS / "mnist_mar.safetensors"}
# Inpainting, outpainting and editing default to the MAR model: it sees known content on every side
# of a hole, where AR levels see only what precedes it in raster order.
DEFAULT_INPAINT_CHECKPOINT = "mnist_mar"

# A model folder (hub.py writes one; `load` reads it by path or by Hugging Face hub id).
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
DISTRIBUTION = "fractalgen-pytorch"  # the PyPI name (`fractalgen` on PyPI is someone else's package)
# "owner/name" or "owner/name@revision", in the Hub's character set.
HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[\w./-]+))?")
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".json", ".bin", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


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
    if not isinstance(state, dict):
        keys = ", ".join(map(str, list(ckpt)[:5])) + (", ..." if len(ckpt) > 5 else "")
        raise CheckpointError(f"{path} has no 'model' state dict (keys: {keys or 'none'})")
    cfg = get_config(config) if config is not None else _official_config_from_args(ckpt.get("args"))
    if cfg is None:
        raise CheckpointError(f"{path} is an official-format checkpoint: say which model it is "
                              f"(a preset name or a config)")
    return model_from_official_state(state, cfg, path)


def model_from_official_state(state: dict, cfg: ModelConfig, path) -> FractalModel:
    """A model of config `cfg` from a state dict under the official names (shapes checked key by key)."""
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


def save_official(model: FractalModel, path: str | Path, **extra) -> None:
    """Export to the official layout ({'model': state_dict, **extra}), written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in official_state_dict(model).items()}
    atomic_write(lambda f: torch.save({"model": state, **extra}, f), path)


# ---- our format -----------------------------------------------------------------------------

def stored_tensors(state: dict, dtype: torch.dtype | None = None) -> dict:
    """A state dict as safetensors stores it: detached, on the CPU, contiguous; floating-point
    tensors in `dtype` when given (e.g. torch.bfloat16 halves the file)."""
    return {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach())
            .cpu().contiguous() for k, v in state.items()}


def save(model: FractalModel, path: str | Path, dtype: torch.dtype | None = None,
         sampling: dict | None = None) -> None:
    """Safetensors weights with the config and the recommended sampling settings as metadata.

    `sampling` (e.g. {"cfg": 10.0, "temperature": 1.0}) defaults to the model's own
    recommendation (`model.recommended`, what `load` read), so a loaded model saves with it.
    """
    sampling = model.recommended if sampling is None else sampling
    from safetensors.torch import save as st_save

    tensors = stored_tensors(model.state_dict(), dtype)
    meta = {"format": "fractalgen", "version": FORMAT_VERSION, "config": model.config.to_json()}
    if sampling:
        meta["sampling"] = json.dumps(sampling)
    data = st_save(tensors, metadata=meta)
    atomic_write(lambda f: f.write(data), path)


def read_metadata(path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None


def metadata_json(meta: dict, key: str, path) -> dict:
    """One metadata entry parsed as a JSON object; anything else is one line naming the entry."""
    return parse_object(meta[key], f"{path}: metadata {key!r}", CheckpointError)


def recommended_sampling(meta: dict, path, config: ModelConfig) -> dict:
    """The checkpoint's recommended sampling settings (metadata 'sampling'), each checked for type and range."""
    if "sampling" not in meta:
        return {}
    return check_sampling(metadata_json(meta, "sampling", path), path, config)


def check_sampling(sampling: dict, path, config: ModelConfig, where: str = "metadata 'sampling'") -> dict:
    """Recommended sampling settings (from metadata or a model folder's config.json), type and range checked."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    checks = {
        "cfg": (lambda v: number(v) and abs(v) <= SETTING_MAX,
                f"a number between -{SETTING_MAX:g} and {SETTING_MAX:g}"),
        "temperature": (lambda v: number(v) and 0 < v <= SETTING_MAX, f"a number > 0 and <= {SETTING_MAX:g}"),
        "filter_threshold": (lambda v: number(v) and v >= 0, "a finite number >= 0"),
        "cfg_schedule": (lambda v: v in CFG_SCHEDULES, f"one of {', '.join(CFG_SCHEDULES)}"),
        "num_iter": (lambda v: isinstance(v, list) and len(v) == config.num_levels
                     and all(isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 1 << 20 for k in v),
                     f"a list of {config.num_levels} positive integers"),
    }
    for key, value in sampling.items():
        if key not in checks:
            raise CheckpointError(f"{path}: {where} has an unknown setting {key!r} "
                                  f"(known: {', '.join(checks)})")
        ok, wanted = checks[key]
        if not ok(value):
            raise CheckpointError(f"{path}: {where} field {key!r} must be {wanted}, "
                                  f"got {json.dumps(value)[:60]}")
    return sampling


def check_tensors(state: dict, expected: dict, path, name=lambda key: key, context: str = ""):
    """Keys, shapes, dtypes and finiteness of loaded tensors against the model's (meta) state dict.

    One cheap pass over the weights: a NaN or an infinity would otherwise surface only as garbage
    images or a 'nan' likelihood, far from its cause. `name` gives the key as the file spells it.
    """
    for key, want in expected.items():
        if key not in state:
            raise CheckpointError(f"{path}: missing key {name(key)}{context}")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {name(key)} is not a tensor")
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(f"{path}: shape mismatch for {name(key)}: checkpoint {tuple(value.shape)}, "
                                  f"model {tuple(want.shape)}{context}")
        if want.is_floating_point() and not value.is_floating_point():
            raise CheckpointError(f"{path}: {name(key)} holds {str(value.dtype).replace('torch.', '')} values "
                                  f"where floating-point weights belong")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: {name(key)} holds {bad} non-finite value(s) (NaN or infinity)")


def load_ours(path, config=None) -> FractalModel:
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    if "config" not in meta and config is None:
        raise CheckpointError(f"{path} carries no config: pass one")
    try:
        cfg = get_config(config) if config is not None else ModelConfig.from_dict(metadata_json(meta, "config", path))
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad config in metadata: {e}") from None
    sampling = recommended_sampling(meta, path, cfg)
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read {path}: {str(e).splitlines()[0][:300]}") from None
    with torch.device("meta"):
        model = FractalModel(cfg)
    expected = model.state_dict()
    check_tensors(state, expected, path)
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise CheckpointError(f"{path}: unexpected key {unexpected[0]}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # bf16 files load as fp32
    model.load_state_dict(state, assign=True, strict=True)
    model.recommended = sampling
    return model


# ---- model folders (config.json + model.safetensors + README.md; hub.py writes them) -------------

def read_config(path: Path) -> tuple[ModelConfig, dict]:
    """config.json -> (ModelConfig, recommended sampling settings); the config carries them as its presets."""
    fields = read_object(path, str(path), CheckpointError)
    sampling = fields.pop("sampling", None) or {}
    # Two official constructor arguments that do not describe the trained model.
    fields.pop("grad_checkpointing", None)  # a training switch
    if fields.pop("fractal_level", 0) != 0:
        raise CheckpointError(f"{path}: fractal_level must be 0 (a whole model, not one of its levels)")
    if not isinstance(sampling, dict):
        raise CheckpointError(f"{path}: 'sampling' must be a JSON object")
    id2label = fields.pop("id2label", None)
    fields.pop("label2id", None)  # the hub's inverse map, when a tool wrote one: id2label decides
    if id2label is not None:
        fields["class_names"] = class_names_from_id2label(id2label, path)
    try:
        config = ModelConfig.from_official(fields)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    sampling = check_sampling(sampling, path, config, where="'sampling'")
    presets = {k: sampling[k] for k in ("cfg", "cfg_schedule", "temperature", "num_iter") if k in sampling}
    return config.replace(**presets), sampling


def class_names_from_id2label(id2label, path) -> list:
    """config.json's {"0": "circle", "1": "cross", ...} as a list in index order (names checked by the config)."""
    if not isinstance(id2label, dict) or sorted(id2label) != sorted(str(i) for i in range(len(id2label))):
        raise CheckpointError(f"{path}: 'id2label' must map \"0\", \"1\", ... (every class index) to a name")
    return [id2label[str(i)] for i in range(len(id2label))]


def load_folder(folder, config=None) -> FractalModel:
    """A model folder (config.json + model.safetensors); `config` replaces config.json's structure."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder} is not a model folder: {name} is missing")
    cfg, sampling = read_config(folder / CONFIG_NAME)
    if config is not None:
        cfg = get_config(config)
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types for damaged headers
        raise CheckpointError(f"cannot read {folder / WEIGHTS_NAME}: {str(e).splitlines()[0][:300]}") from None
    model = model_from_official_state(state, cfg, folder / WEIGHTS_NAME)
    model.recommended = dict(sampling)
    return model


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


# ---- hub ids -----------------------------------------------------------------------------------------

def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """("owner/name", revision or None) when `text` reads as a hub id, else None."""
    match = HUB_ID.fullmatch(text)
    if not match or text.endswith(CHECKPOINT_SUFFIXES) or text.startswith((".", "/", "~")):
        return None
    return match.group("repo"), match.group("revision")


def download(repo_id: str, revision: str | None = None) -> Path:
    """The snapshot folder of `repo_id` in the Hugging Face cache (fetched first when online)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{repo_id} is no file or folder here; as a Hugging Face hub id it needs "
                              f"huggingface_hub: pip install \"{DISTRIBUTION}[hub]\"") from None
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(FOLDER_FILES),
                                 library_name="fractalgen")
    except Exception as e:  # not cached while offline, no such repository, no network ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{repo_id} is no file or folder here, nor in the Hugging Face cache or hub "
                                   f"({type(e).__name__}: {first[:300]})") from None
    return Path(path)


def model_folder(path) -> Path | None:
    """The model folder `path` names (a local folder with config.json, or a hub id), else None."""
    if str(path) in BUNDLED:
        return None
    local = Path(path)
    if local.is_file() and local.name == WEIGHTS_NAME and is_model_folder(local.parent):
        return local.parent  # a folder's weights carry official names and no config: read them with config.json
    if local.exists():
        return local if is_model_folder(local) else None
    hub_id = parse_hub_id(str(path))
    if hub_id is None:
        return None
    folder = download(*hub_id)
    if not is_model_folder(folder):
        raise CheckpointError(f"the hub repository {hub_id[0]} holds no {CONFIG_NAME}: not a model folder")
    return folder


# ---- any checkpoint ---------------------------------------------------------------------------

def resolve(path) -> Path:
    """A bundled model name, a file, or a directory holding model.safetensors."""
    if str(path) in BUNDLED:
        p = BUNDLED[str(path)]
        if not p.is_file():
            raise CheckpointError(f"the bundled model {path!r} is not installed ({p} missing)")
        return p
    p = Path(path)
    if p.is_dir():
        for name in ("model.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(f"no model.safetensors in directory {p}")
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    return p


def load(path: str | Path, config: str | Path | dict | ModelConfig | None = None,
         device: str | torch.device | None = None) -> FractalModel:
    """Load any checkpoint into a model in eval mode: ours, official, a bundled name, a model folder
    (config.json + model.safetensors) or a Hugging Face hub id ("owner/name", from the local cache)."""
    folder = model_folder(path)
    if folder is not None:
        model = load_folder(folder, config)
    else:
        p = resolve(path)
        with open(p, "rb") as f:
            head = f.read(16)
        if len(head) == 0:
            raise CheckpointError(f"checkpoint {p} is empty (0 bytes)")
        # safetensors: an 8-byte little-endian header length, then the JSON header's "{". Test it first:
        # a header length whose low byte is 0x80 would otherwise pass for a legacy pickle's first byte.
        is_safetensors = head[8:9] == b"{"
        is_torch = not is_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80")  # zip container or legacy pickle
        model = load_official(p, config) if is_torch else load_ours(p, config)
    if device is not None:
        model = model.to(device)
    return model.eval()
