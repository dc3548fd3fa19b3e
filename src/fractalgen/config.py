"""Configuration: one frozen dataclass per level, one for the model, presets by name.

A fractal model is a list of square sizes, one per level, each dividing the previous:
(64, 4, 1) means level 0 sees a 64x64 image as a 16x16 grid of 4x4 patches, level 1
sees a 4x4 patch as a 4x4 grid of pixels, and the pixel head models the channels of
one pixel. Every level but the last is a generator (`ar` or `mar`); the last entry's
width/blocks/heads belong to the pixel head.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from .jsonfile import read_object
from .settings import SCHEDULE_NAMES, SETTING_DEFAULTS, SettingsError, check_setting

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GENERATOR_KINDS = ("ar", "mar")
CFG_SCHEDULES = SCHEDULE_NAMES  # the names, as settings.py lists them (kept here for old imports)

# Fixed by the official code: the guiding-pixel head is a small pixel head.
GUIDE_HEAD_WIDTH, GUIDE_HEAD_BLOCKS, GUIDE_HEAD_HEADS, GUIDE_HEAD_RED_WEIGHT = 128, 3, 4, 5.0
# The official AR blocks' own dropouts (not taken from the dropout options): the defaults of the
# config fields ar_residual_dropout and ar_attn_dropout.
AR_RESIDUAL_DROPOUT, AR_ATTN_DROPOUT = 0.1, 0.0


class ConfigError(ValueError):
    """An invalid configuration; the message says why."""


@dataclass(frozen=True)
class PixelHeadConfig:
    """The last level: a causal transformer over the C channels of one pixel (also a MAR level's guiding pixel)."""

    width: int
    blocks: int
    heads: int
    cond_width: int  # width of the condition it receives
    channels: int  # one 256-way draw per channel
    red_weight: float  # training weight of the first channel's loss


@dataclass(frozen=True)
class LevelConfig:
    """One generator level: models a `size` x `size` square as a grid of `patch_size` patches."""

    kind: str  # "ar" (raster order, causal) or "mar" (random order, bidirectional)
    size: int  # side of the square this level generates
    patch_size: int  # side of the square handed to the next level
    width: int
    blocks: int
    heads: int
    cond_width: int  # width of the conditions it receives (the previous level's width)
    num_conds: int  # conditions it consumes: 1 for AR, the model's num_conds for MAR
    conds_down: int  # conditions the next level consumes (its num_conds; 1 for the pixel head)
    guiding_pixel: bool  # predict the patch's mean colour first (MAR levels >= 1)
    channels: int  # colour channels of the image
    attn_dropout: float  # MAR blocks (AR blocks have their own, below)
    proj_dropout: float
    pixel_mean: tuple[float, ...]  # per-channel normalisation of raw 0..255 values
    pixel_std: tuple[float, ...]
    ar_residual_dropout: float = AR_RESIDUAL_DROPOUT  # AR blocks
    ar_attn_dropout: float = AR_ATTN_DROPOUT

    @property
    def grid(self) -> int:
        return self.size // self.patch_size

    @property
    def seq_len(self) -> int:
        return self.grid**2

    @property
    def guide_head(self) -> PixelHeadConfig:
        """The guiding-pixel head: a small pixel head of the official code's fixed size."""
        return PixelHeadConfig(width=GUIDE_HEAD_WIDTH, blocks=GUIDE_HEAD_BLOCKS, heads=GUIDE_HEAD_HEADS,
                               cond_width=self.cond_width, channels=self.channels, red_weight=GUIDE_HEAD_RED_WEIGHT)


@dataclass(frozen=True)
class ModelConfig:
    img_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    blocks: tuple[int, ...]
    heads: tuple[int, ...]
    kinds: tuple[str, ...]  # one per generator level (len(img_sizes) - 1)
    channels: int = 3
    num_classes: int = 1000  # 0 = unconditional only
    num_conds: int = 1
    guiding_pixel: bool = False
    attn_dropout: float = 0.1
    proj_dropout: float = 0.1
    label_drop_prob: float = 0.1
    r_weight: float = 5.0  # weight of the first channel's loss in training
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    name: str = "custom"
    class_names: tuple[str, ...] | None = None  # one per class (from the training folder's class folders)
    # The AR blocks' dropouts, fixed by the official code; written to files only when changed.
    ar_residual_dropout: float = AR_RESIDUAL_DROPOUT
    ar_attn_dropout: float = AR_ATTN_DROPOUT

    def __post_init__(self):
        self._check_types()
        # Normalise lists to tuples so configs built from JSON compare equal and hash.
        for f in ("img_sizes", "widths", "blocks", "heads", "kinds", "pixel_mean", "pixel_std", "class_names"):
            value = getattr(self, f)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, f, tuple(value))
        self._validate()

    def _check_types(self):
        """Every field has its type (configs arrive as JSON from files and checkpoint metadata): one line
        names the field."""
        for f in dataclasses.fields(self):
            kind, value = FIELD_TYPES[f.name], getattr(self, f.name)
            optional = kind.endswith("?")
            kind = kind.rstrip("?")
            if value is None and optional:
                continue
            if kind.startswith("list of "):
                item = kind[len("list of "):]
                ok = isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
                wanted = f"a list of {item}s"
            else:
                ok = _has_type(value, kind)
                wanted = TYPE_PHRASES[kind]
            if not ok:
                raise ConfigError(f"config field {f.name!r} must be {wanted}{' or null' if optional else ''}, "
                                  f"got {_describe(value)}")

    def _validate(self):
        n = len(self.img_sizes)
        if n < 2:
            raise ConfigError(f"need at least two image sizes (a generator and the pixel head), "
                              f"got {list(self.img_sizes)}")
        for f in ("widths", "blocks", "heads"):
            if len(getattr(self, f)) != n:
                raise ConfigError(f"{f} has {len(getattr(self, f))} entries, img_sizes has {n}")
        if len(self.kinds) != n - 1:
            raise ConfigError(f"kinds needs one entry per generator level ({n - 1}), got {len(self.kinds)}")
        if self.img_sizes[-1] != 1:
            raise ConfigError(f"the last image size must be 1 (the pixel head), got {self.img_sizes[-1]}")
        for a, b in zip(self.img_sizes, self.img_sizes[1:], strict=False):
            if not isinstance(a, int) or not isinstance(b, int) or b < 1 or a <= b or a % b:
                raise ConfigError(f"each image size must be a multiple of the next, larger than it: {a} and {b} "
                                  f"in {list(self.img_sizes)}")
        for kind in self.kinds:
            if kind not in GENERATOR_KINDS:
                raise ConfigError(f"unknown generator kind {kind!r} (choose from {', '.join(GENERATOR_KINDS)})")
        for w, h in zip(self.widths, self.heads, strict=False):
            if w < 1 or h < 1 or w % h:
                raise ConfigError(f"width {w} is not divisible by {h} heads")
        for i, kind in enumerate(self.kinds):
            head_dim = self.widths[i] // self.heads[i]
            if kind == "ar" and head_dim % 4:
                raise ConfigError(f"AR level {i}: head dim {head_dim} must be a multiple of 4 for the 2-D rotary "
                                  "embedding")
        if any(b < 0 for b in self.blocks):
            raise ConfigError(f"blocks must be >= 0, got {list(self.blocks)}")
        if self.channels < 1:
            raise ConfigError(f"channels must be >= 1, got {self.channels}")
        if len(self.pixel_mean) != self.channels or len(self.pixel_std) != self.channels:
            raise ConfigError(f"pixel_mean and pixel_std need {self.channels} entries (one per channel)")
        if any(s <= 0 for s in self.pixel_std):
            raise ConfigError("pixel_std entries must be positive")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if not 1 <= self.num_conds <= 5:
            raise ConfigError(f"num_conds must be 1..5 (a MAR level hands down 5 conditions), got {self.num_conds}")
        for f in ("attn_dropout", "proj_dropout", "label_drop_prob", "ar_residual_dropout", "ar_attn_dropout"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ConfigError(f"{f} must be in [0, 1), got {getattr(self, f)}")
        if self.r_weight <= 0:
            raise ConfigError(f"r_weight must be positive, got {self.r_weight}")
        if self.class_names is not None:
            names = self.class_names
            if len(names) != self.num_classes:
                raise ConfigError(f"class_names has {len(names)} entries, num_classes is {self.num_classes}")
            if any(not name or name != name.strip() or "," in name or len(name) > 200 for name in names):
                raise ConfigError("class names must be non-empty, without commas or surrounding spaces, "
                                  f"at most 200 characters: {list(names)[:8]}")
            if len(set(names)) != len(names):
                raise ConfigError(f"class names must differ from each other: {list(names)[:8]}")

    # ---- derived structure -------------------------------------------------

    @property
    def num_levels(self) -> int:
        """Number of generator levels (the pixel head not counted)."""
        return len(self.img_sizes) - 1

    @property
    def img_size(self) -> int:
        return self.img_sizes[0]

    @property
    def levels(self) -> tuple[LevelConfig, ...]:
        out = []
        for i, kind in enumerate(self.kinds):
            out.append(LevelConfig(
                kind=kind,
                size=self.img_sizes[i],
                patch_size=self.img_sizes[i + 1],
                width=self.widths[i],
                blocks=self.blocks[i],
                heads=self.heads[i],
                cond_width=self.widths[i - 1] if i > 0 else self.widths[0],
                num_conds=1 if kind == "ar" else self.num_conds,
                conds_down=self.num_conds if i + 1 < len(self.kinds) and self.kinds[i + 1] == "mar" else 1,
                guiding_pixel=self.guiding_pixel and kind == "mar" and i > 0,
                channels=self.channels,
                attn_dropout=self.attn_dropout,
                proj_dropout=self.proj_dropout,
                pixel_mean=self.pixel_mean,
                pixel_std=self.pixel_std,
                ar_residual_dropout=self.ar_residual_dropout,
                ar_attn_dropout=self.ar_attn_dropout,
            ))
        return tuple(out)

    @property
    def pixel_head(self) -> PixelHeadConfig:
        return PixelHeadConfig(width=self.widths[-1], blocks=self.blocks[-1], heads=self.heads[-1],
                               cond_width=self.widths[-2], channels=self.channels, red_weight=self.r_weight)

    # ---- deprecated: the sampling presets left the config (SAMPLING_PRESETS, model.recommended) ----------

    def _preset_setting(self, name: str):
        warnings.warn(f"ModelConfig.{name} is deprecated: a model's recommended sampling settings are "
                      f"model.recommended (fractalgen.resolve_settings(model) resolves them), a preset's are "
                      f"SAMPLING_PRESETS[name]", DeprecationWarning, stacklevel=3)
        return SAMPLING_PRESETS.get(self.name, {}).get(name, LEGACY_DEFAULTS[name])

    @property
    def num_iter(self) -> tuple[int, ...] | None:
        return self._preset_setting("num_iter")

    @property
    def cfg(self) -> float:
        return self._preset_setting("cfg")

    @property
    def temperature(self) -> float:
        return self._preset_setting("temperature")

    @property
    def cfg_schedule(self) -> str:
        return self._preset_setting("cfg_schedule")

    @property
    def default_num_iter(self) -> tuple[int, ...]:
        num_iter = self._preset_setting("num_iter")
        return num_iter if num_iter is not None else tuple(lv.seq_len for lv in self.levels)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- (de)serialisation -------------------------------------------------

    def to_dict(self) -> dict:
        """Every field, except the AR dropouts at their defaults (so files read as before)."""
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in [getattr(self, f.name)]
                if not (f.name in WRITTEN_WHEN_CHANGED and v == f.default)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Our own field names, or the official constructor's (see OFFICIAL_FIELDS)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object (field names and values), got {_describe(d)}")
        d, sampling = split_sampling(d)
        _warn_ignored(sampling)
        known = {f.name for f in dataclasses.fields(cls)}
        if any(k in d for k in OFFICIAL_FIELDS if k not in known):  # some official names equal ours
            return cls.from_official(d)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(map(repr, unknown))}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"config is missing {', '.join(missing)}")
        return cls(**d)

    @classmethod
    def from_official(cls, d: dict, **overrides: Any) -> ModelConfig:
        """Build from the official constructor's field names (plus optional `channels`)."""
        d, sampling = split_sampling(d)
        _warn_ignored(sampling)
        unknown = sorted(set(d) - set(OFFICIAL_FIELDS) - set(EXTRA_FIELDS))
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(map(repr, unknown))}")
        missing = [k for k in ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list",
                               "generator_type_list") if k not in d]
        if missing:
            raise ConfigError(f"config is missing {', '.join(missing)}")
        for k in ("img_size_list", "embed_dim_list", "num_blocks_list", "num_heads_list", "generator_type_list"):
            if not isinstance(d[k], list):
                raise ConfigError(f"config field {k!r} must be a list, got {_describe(d[k])}")
        kinds = list(d["generator_type_list"])
        # The official list has an entry for the pixel head too (ignored); accept both lengths.
        if len(kinds) == len(d["img_size_list"]):
            kinds = kinds[:-1]
        kw = dict(
            img_sizes=d["img_size_list"], widths=d["embed_dim_list"], blocks=d["num_blocks_list"],
            heads=d["num_heads_list"], kinds=kinds,
        )
        for official, ours in OFFICIAL_FIELDS.items():
            if ours is not None and official in d:
                kw[ours] = d[official]
        for k in EXTRA_FIELDS:
            if k in d:
                kw[k] = d[k]
        channels = kw.get("channels", 3)
        if channels != 3 and "pixel_mean" not in kw:
            kw["pixel_mean"], kw["pixel_std"] = (0.5,) * channels, (0.5,) * channels
        kw.update(overrides)
        return cls(**kw)

    def to_official(self) -> dict:
        """The official constructor's fields (the form the authors' `args` would carry)."""
        return {
            "img_size_list": list(self.img_sizes), "embed_dim_list": list(self.widths),
            "num_blocks_list": list(self.blocks), "num_heads_list": list(self.heads),
            "generator_type_list": list(self.kinds) + ["ar"], "class_num": self.num_classes,
            "num_conds": self.num_conds, "guiding_pixel": self.guiding_pixel,
            "attn_dropout": self.attn_dropout, "proj_dropout": self.proj_dropout,
            "label_drop_prob": self.label_drop_prob, "r_weight": self.r_weight, "channels": self.channels,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(read_object(path, f"config file {path}", ConfigError))


# Official constructor field -> ours (None: structural, handled explicitly).
OFFICIAL_FIELDS = {
    "img_size_list": None, "embed_dim_list": None, "num_blocks_list": None, "num_heads_list": None,
    "generator_type_list": None, "class_num": "num_classes", "num_conds": "num_conds",
    "guiding_pixel": "guiding_pixel", "attn_dropout": "attn_dropout", "proj_dropout": "proj_dropout",
    "label_drop_prob": "label_drop_prob", "r_weight": "r_weight",
}
# Our additions accepted beside the official fields.
EXTRA_FIELDS = ("channels", "pixel_mean", "pixel_std", "name", "class_names", "ar_residual_dropout",
                "ar_attn_dropout")
WRITTEN_WHEN_CHANGED = ("ar_residual_dropout", "ar_attn_dropout")


# The JSON type of every config field ("?": may be null). Numbers must be finite: NaN and
# infinities (which Python's json accepts) would reach the sampler.
FIELD_TYPES = {
    "img_sizes": "list of integer", "widths": "list of integer", "blocks": "list of integer",
    "heads": "list of integer", "kinds": "list of string", "channels": "integer", "num_classes": "integer",
    "num_conds": "integer", "guiding_pixel": "boolean", "attn_dropout": "number", "proj_dropout": "number",
    "label_drop_prob": "number", "r_weight": "number", "pixel_mean": "list of number",
    "pixel_std": "list of number", "name": "string", "class_names": "list of string?",
    "ar_residual_dropout": "number", "ar_attn_dropout": "number",
}
TYPE_PHRASES = {"integer": "an integer", "number": "a finite number", "boolean": "true or false", "string": "a string"}
MAX_DIMENSION = 1 << 20  # no size, width or count in a real model comes near it; bigger ones are damage


def _has_type(value, kind: str) -> bool:
    if kind == "integer":  # bool is an int subclass in Python, not in JSON
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_DIMENSION
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    raise AssertionError(kind)


def _describe(value) -> str:
    """A short, safe rendering of a bad value for an error line."""
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


# ---- the sampling settings older configs carried -----------------------------------------------------

# A config used to carry its model's recommended sampling settings as these four fields, and files
# written then still do: their readers move them into the model's recommendation (model.recommended).
# The values a config held when a field was absent:
LEGACY_DEFAULTS: dict = {"num_iter": None, **{k: SETTING_DEFAULTS[k] for k in ("cfg", "temperature", "cfg_schedule")}}


def split_sampling(fields: dict) -> tuple[dict, dict]:
    """A config's fields (ours or the official names) without the sampling settings an older config
    carried, and those settings as it held them."""
    return ({k: v for k, v in fields.items() if k not in LEGACY_DEFAULTS},
            {k: fields[k] for k in LEGACY_DEFAULTS if k in fields})


def _warn_ignored(sampling: dict):
    if sampling:
        warnings.warn(f"config field(s) {', '.join(sampling)} are sampling settings, no longer part of a "
                      f"ModelConfig: ignored here (fractalgen.build and the file readers keep them as the "
                      f"model's recommendation, model.recommended)", DeprecationWarning, stacklevel=3)


def presets_in_full(settings: dict) -> dict:
    """The four sampling settings an older config held, for a model recommending `settings` (or for an
    older config holding them): each as given (num_iter as a list), else its default."""
    full = {k: settings.get(k, default) for k, default in LEGACY_DEFAULTS.items()}
    if full["num_iter"] is not None:
        full["num_iter"] = list(full["num_iter"])
    return full


# ---- presets ---------------------------------------------------------------

def _official(name, sizes, widths, blocks, heads, kind, guiding):
    n = len(sizes) - 1
    return ModelConfig(
        img_sizes=sizes, widths=widths, blocks=blocks, heads=heads, kinds=(kind,) * n,
        num_classes=1000, num_conds=1 if kind == "ar" else 5, guiding_pixel=guiding, name=name,
    )


PRESETS: dict[str, ModelConfig] = {
    # The paper's five models.
    "fractalar_in64": _official("fractalar_in64", (64, 4, 1), (1024, 512, 128), (32, 8, 3), (16, 8, 4),
                                "ar", False),
    "fractalmar_in64": _official("fractalmar_in64", (64, 4, 1), (1024, 512, 128), (32, 8, 3), (16, 8, 4),
                                 "mar", False),
    "fractalmar_base_in256": _official("fractalmar_base_in256", (256, 16, 4, 1), (768, 384, 192, 64),
                                       (24, 6, 3, 1), (12, 6, 3, 4), "mar", True),
    "fractalmar_large_in256": _official("fractalmar_large_in256", (256, 16, 4, 1), (1024, 512, 256, 64),
                                        (32, 8, 4, 1), (16, 8, 4, 4), "mar", True),
    "fractalmar_huge_in256": _official("fractalmar_huge_in256", (256, 16, 4, 1), (1280, 640, 320, 64),
                                       (40, 10, 5, 1), (16, 8, 4, 4), "mar", True),
    # Small models for CPU work: 28x28 grayscale digits as a 7x7 grid of 4x4 patches.
    # Sized for CPU training (mnist_ar: 1.60M parameters, mnist_mar: 1.41M): every pixel is a token
    # of the last generator level, so its width sets the cost per image. Each is the shape of the
    # bundled model of the same name.
    "mnist_ar": ModelConfig(
        img_sizes=(28, 4, 1), widths=(160, 64, 32), blocks=(4, 2, 1), heads=(4, 4, 2), kinds=("ar", "ar"),
        channels=1, num_classes=10, num_conds=1, attn_dropout=0.0, proj_dropout=0.0,
        pixel_mean=(0.5,), pixel_std=(0.5,), name="mnist_ar",
    ),
    "mnist_mar": ModelConfig(
        img_sizes=(28, 4, 1), widths=(160, 64, 32), blocks=(4, 2, 1), heads=(4, 4, 2), kinds=("mar", "mar"),
        channels=1, num_classes=10, num_conds=5, attn_dropout=0.0, proj_dropout=0.0,
        pixel_mean=(0.5,), pixel_std=(0.5,), name="mnist_mar",
    ),
    # The speed benchmark's configurations (RGB 32x32, levels 32/4/1, 10 classes).
    "cifar_ar": ModelConfig(
        img_sizes=(32, 4, 1), widths=(256, 128, 64), blocks=(6, 2, 1), heads=(8, 4, 4), kinds=("ar", "ar"),
        num_classes=10, num_conds=1, name="cifar_ar",
    ),
    "cifar_mar": ModelConfig(
        img_sizes=(32, 4, 1), widths=(256, 128, 64), blocks=(6, 2, 1), heads=(8, 4, 4), kinds=("mar", "mar"),
        num_classes=10, num_conds=5, name="cifar_mar",
    ),
    # Tiny RGB models for tests (the shapes of the reference test vectors).
    "tiny_ar": ModelConfig(
        img_sizes=(16, 4, 1), widths=(64, 32, 16), blocks=(2, 1, 1), heads=(4, 2, 2), kinds=("ar", "ar"),
        num_classes=10, num_conds=1, name="tiny_ar",
    ),
    "tiny_mar": ModelConfig(
        img_sizes=(16, 4, 1), widths=(64, 32, 16), blocks=(2, 1, 1), heads=(4, 2, 2), kinds=("mar", "mar"),
        num_classes=10, num_conds=5, name="tiny_mar",
    ),
    "tiny_mar_gp4": ModelConfig(
        img_sizes=(16, 4, 2, 1), widths=(64, 32, 32, 16), blocks=(2, 1, 1, 1), heads=(4, 2, 2, 2),
        kinds=("mar", "mar", "mar"), num_classes=10, num_conds=5, guiding_pixel=True, name="tiny_mar_gp4",
    ),
}

# Each preset's recommended sampling settings (a fresh model of the preset starts with them as
# model.recommended); settings not named take their defaults (settings.resolve_settings).
SAMPLING_PRESETS: dict[str, dict] = {
    # The authors' published settings.
    "fractalar_in64": {"num_iter": (64, 16), "cfg": 11.0, "temperature": 1.03},
    "fractalmar_in64": {"num_iter": (64, 16), "cfg": 6.5, "temperature": 1.02},
    "fractalmar_base_in256": {"num_iter": (64, 16, 16), "cfg": 29.0, "temperature": 1.1},
    "fractalmar_large_in256": {"num_iter": (64, 16, 16), "cfg": 21.0, "temperature": 1.1},
    "fractalmar_huge_in256": {"num_iter": (64, 16, 16), "cfg": 19.0, "temperature": 1.1},
    "mnist_ar": {"cfg": 2.0, "temperature": 1.0},
    "mnist_mar": {"num_iter": (16, 8), "cfg": 2.0, "temperature": 1.0},
    "cifar_ar": {"num_iter": (16, 16), "cfg": 2.0},
    "cifar_mar": {"num_iter": (16, 16), "cfg": 2.0},
    "tiny_ar": {},
    "tiny_mar": {},
    "tiny_mar_gp4": {},
}


# ---- a model for the data at hand (`fractalgen train` with neither --preset nor --config) ------------

DATA_MODEL_MAX_SIZE = 32  # larger images are resized down to this: the default model trains on a CPU


def data_model_size(image_size: int) -> int:
    """The default model's image size for images of side `image_size`: a multiple of 4 (the patch side)."""
    return min(DATA_MODEL_MAX_SIZE, max(8, 4 * math.ceil(image_size / 4)))


def config_for_data(image_size: int, channels: int, num_classes: int) -> ModelConfig:
    """The default model for a folder of images: the tiny AR shape (two levels of 4x4 patches over
    pixels, then the pixel head) at the images' size and colour, one class per class folder."""
    size = data_model_size(image_size)
    return ModelConfig(
        img_sizes=(size, 4, 1), widths=(64, 32, 16), blocks=(2, 1, 1), heads=(4, 2, 2), kinds=("ar", "ar"),
        channels=channels, num_classes=num_classes, num_conds=1, attn_dropout=0.0, proj_dropout=0.0,
        pixel_mean=(0.5,) * channels, pixel_std=(0.5,) * channels, name=f"data_ar{size}",
    )


# What every `config` argument takes (get_config reads it): a preset name, a JSON file's path, a ModelConfig,
# or a dict of its fields (ours or the official names).
ConfigLike: TypeAlias = str | Path | ModelConfig | dict[str, Any]


def get_config(config: ConfigLike) -> ModelConfig:
    """A preset name, a ModelConfig, a dict (ours or official field names) or a JSON file path."""
    config, presets = config_and_presets(config)
    _warn_ignored(presets)
    return config


def config_and_presets(config) -> tuple[ModelConfig, dict]:
    """`get_config`'s config, and the sampling settings a dict or JSON file of an older config carried
    (checked; {} for a preset name or a ModelConfig: a fresh model takes its preset's from SAMPLING_PRESETS)."""
    if isinstance(config, ModelConfig):
        return config, {}
    if isinstance(config, (str, Path)) and not isinstance(config, dict):
        if str(config) in PRESETS:
            return PRESETS[str(config)], {}
        if not str(config).endswith(".json"):
            raise ConfigError(f"unknown preset {str(config)!r} (choose from {', '.join(PRESETS)})")
        config = read_object(config, f"config file {config}", ConfigError)
    if not isinstance(config, dict):
        raise ConfigError(f"cannot make a config from {type(config).__name__}")
    fields, presets = split_sampling(config)
    model_config = ModelConfig.from_dict(fields)
    check_presets(presets, model_config.num_levels)
    return model_config, presets


def check_presets(presets: dict, num_levels: int) -> None:
    """An older config's sampling settings: each checked as every other door of a setting checks it
    (num_iter may be null: the sequence lengths)."""
    try:
        for name, value in presets.items():
            if not (name == "num_iter" and value is None):
                check_setting(name, value, num_levels)
    except SettingsError as e:
        raise ConfigError(f"config field {e.setting!r}: {e}") from None
