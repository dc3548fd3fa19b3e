"""How to sample: one frozen `SamplingSettings`, checked by one validator, resolved in one place.

Precedence, per setting: an explicit argument (or command-line flag) > the model's recommendation
(`model.recommended`: read from its file by `load`, or its preset's, config.SAMPLING_PRESETS) > the
defaults (SETTING_DEFAULTS; num_iter: one step per token, the levels' sequence lengths).

Every door a setting comes through (command-line flags, config files, checkpoint metadata, model
folders, library arguments) checks it with `check_setting`, so the same value is accepted or
refused alike everywhere, with the same words.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import UserError
from .sampling import CFG_SCHEDULES

SETTING_MAX = 1e4  # |cfg| and temperature: the published values are far below; 3e38 overflows the logits
MAX_STEPS = 1 << 20  # steps per level: no model has a sequence near it; bigger values are damage
DEFAULT_FILTER_THRESHOLD = 1e-4  # the authors' value: conditional probabilities below it are not boosted
SCHEDULE_NAMES: tuple[str, ...] = tuple(CFG_SCHEDULES)  # the one list of cfg schedule names
# Each setting's value where neither an argument nor the recommendation gives one (num_iter: the model's).
SETTING_DEFAULTS = {"cfg": 1.0, "cfg_schedule": "linear", "temperature": 1.0,
                    "filter_threshold": DEFAULT_FILTER_THRESHOLD}
SEED_MAX = 2**31 - 1  # numpy's legacy seeding takes 32 bits; every rank adds its rank to the seed


class SettingsError(UserError, ValueError):
    """A sampling setting out of range (a ValueError for library callers, one error line in the CLI).

    `setting` names it, `wanted` says what it must be ("> 0", "finite", ...) and `got` shows the value,
    so each door can word the line its own way (argparse names the flag, a file names its field).
    """

    def __init__(self, setting: str, wanted: str, got: Any, numeric: bool = False, why: str = ""):
        self.setting, self.wanted, self.got = setting, wanted, got
        self.phrase = f"a number {wanted}" if numeric and wanted[:1] in "<>" else wanted
        super().__init__(f"{setting} must be {self.phrase}, got {shown(got)}" + (f" ({why})" if why else ""))


def shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text[:60] + "..." if len(text) > 60 else text


# ---- the one validator ------------------------------------------------------------------------

def is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integral(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_setting(name: str, value, num_levels: int | None = None):
    """`value` as the setting `name` holds it (float, str, or a tuple of ints for num_iter), or a
    SettingsError. num_iter needs one entry per generator level when `num_levels` is given."""
    if name in ("cfg", "temperature", "filter_threshold"):
        if not is_number(value):
            raise SettingsError(name, "a finite number", value)
        value = float(value)
        if not math.isfinite(value):
            raise SettingsError(name, "finite", value)
        low, low_strict, high = {"cfg": (-SETTING_MAX, False, SETTING_MAX), "temperature": (0.0, True, SETTING_MAX),
                                 "filter_threshold": (0.0, False, 1.0)}[name]
        why = f"cfg and temperature are at most {SETTING_MAX:g} in size: larger ones overflow the sampler"
        if name == "cfg" and value < -SETTING_MAX:
            raise SettingsError(name, f"a number between {-SETTING_MAX:g} and {SETTING_MAX:g}", value, why=why)
        if value < low or (low_strict and value == low):
            raise SettingsError(name, f"{'>' if low_strict else '>='} {low:g}", value, numeric=True,
                                why=why if value < -SETTING_MAX else "")
        if value > high:
            raise SettingsError(name, f"<= {high:g}", value, numeric=True, why=why if high == SETTING_MAX else "")
        return value
    if name == "cfg_schedule":
        if value not in SCHEDULE_NAMES:
            raise SettingsError(name, f"one of the cfg schedules {', '.join(SCHEDULE_NAMES)}", value)
        return str(value)
    if name == "num_iter":
        steps = (value,) if integral(value) else value
        count = "" if num_levels is None else f"{num_levels} "
        wanted = f"{count}positive integers" + ("" if num_levels is None else " (one per generator level)")
        if (not isinstance(steps, Sequence) or isinstance(steps, str)
                or not all(integral(k) and 1 <= k <= MAX_STEPS for k in steps)
                or (num_levels is not None and len(steps) != num_levels) or not steps):
            raise SettingsError(name, wanted, value)
        return tuple(int(k) for k in steps)
    raise SettingsError(name, f"one of the settings {', '.join(SETTING_NAMES)}", name)


def check_seed(seed) -> int | None:
    """A random seed as every entry point takes it: None (torch's global random stream) or an integer in
    0..SEED_MAX, as the command line's --seed; anything else is a SettingsError naming the seed."""
    if seed is None:
        return None
    if not integral(seed) or not 0 <= seed <= SEED_MAX:
        raise SettingsError("seed", f"an integer in 0..{SEED_MAX} (or None)", seed)
    return int(seed)


# ---- the value --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplingSettings:
    cfg: float  # guidance scale; 1.0 = no guidance
    cfg_schedule: str  # "linear" (ramps 1 -> cfg as generation progresses), "constant" or "falling" (cfg -> 1)
    temperature: float  # multiplies the logits (the authors' convention: 1.1 sharpens)
    filter_threshold: float  # guidance leaves values whose conditional probability is below it alone
    num_iter: tuple[int, ...]  # steps per level (MAR levels; AR levels always take one step per patch)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # every setting checked once, when the value is made
            object.__setattr__(self, f.name, check_setting(f.name, getattr(self, f.name)))

    def describe(self) -> str:
        """One line for people: cfg 10.0 (linear), temperature 1.0, filter 0.0001, num_iter 49,16."""
        return (f"cfg {self.cfg:g} ({self.cfg_schedule}), temperature {self.temperature:g}, "
                f"filter {self.filter_threshold:g}, num_iter {','.join(map(str, self.num_iter))}")

    def to_dict(self) -> dict:
        """Plain JSON-able values (num_iter as a list)."""
        return {**dataclasses.asdict(self), "num_iter": list(self.num_iter)}

    def replace(self, **changes: Any) -> SamplingSettings:
        """These settings with some changed (None leaves a setting as it is)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def check(settings: SamplingSettings, num_levels: int) -> None:
    """Settings fit a model of `num_levels` generator levels (the rest was checked when they were made)."""
    check_setting("num_iter", settings.num_iter, num_levels)


# ---- resolution ---------------------------------------------------------------------------------

class LevelShape(Protocol):
    @property
    def seq_len(self) -> int: ...


class LevelsShape(Protocol):
    """What resolve_settings reads of a model's config (a ModelConfig): its generator levels (their sequence
    lengths: the default num_iter) and their count."""

    @property
    def levels(self) -> Sequence[LevelShape]: ...
    @property
    def num_levels(self) -> int: ...


class Configured(Protocol):
    """A model as resolve_settings sees it (a FractalModel; this module sits below model.py and config.py)."""

    @property
    def config(self) -> LevelsShape: ...


def resolve_settings(model: Configured, *legacy: Any, settings: SamplingSettings | None = None,
                     cfg: float | None = None, cfg_schedule: str | None = None, temperature: float | None = None,
                     filter_threshold: float | None = None,
                     num_iter: Sequence[int] | int | None = None) -> SamplingSettings:
    """The settings to sample `model` with: each keyword that is not None, else `settings` (a whole
    SamplingSettings), else the model's recommendation (`model.recommended`), else the default
    (SETTING_DEFAULTS; num_iter: the levels' sequence lengths). Checked against the model (num_iter: one
    entry per generator level)."""
    overrides = legacy_overrides(legacy, "resolve_settings", SETTING_NAMES, cfg=cfg, cfg_schedule=cfg_schedule,
                                 temperature=temperature, filter_threshold=filter_threshold, num_iter=num_iter)
    config = model.config
    if settings is not None:
        if not isinstance(settings, SamplingSettings):
            raise TypeError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
        base = settings.to_dict()
    else:
        recommended = getattr(model, "recommended", None) or {}
        defaults = {**SETTING_DEFAULTS, "num_iter": tuple(level.seq_len for level in config.levels)}
        base = {name: next(source[name] for source in (recommended, defaults) if source.get(name) is not None)
                for name in SETTING_NAMES}
    values = {name: overrides[name] if overrides.get(name) is not None else base[name] for name in SETTING_NAMES}
    resolved = SamplingSettings(**values)
    check(resolved, config.num_levels)
    return resolved


def legacy_overrides(legacy: tuple, where: str, order: Sequence[str] = SETTING_NAMES, stacklevel: int = 3,
                     **overrides) -> dict:
    """The keyword arguments, with those given by position in an old signature (`order`: the names of
    the old positional parameters past the ones still positional) moved in, with a DeprecationWarning."""
    if not legacy:
        return overrides
    if len(legacy) > len(order):
        raise TypeError(f"{where}() takes at most {len(order)} more positional arguments (deprecated), "
                        f"got {len(legacy)}")
    warnings.warn(f"{where}(): {', '.join(order[:len(legacy)])} by position is deprecated; pass them by "
                  f"keyword (sampling settings also as settings=SamplingSettings(...))", DeprecationWarning,
                  stacklevel=stacklevel)
    for name, value in zip(order, legacy, strict=False):
        if overrides.get(name) is not None:
            raise TypeError(f"{where}() got {name} both by position and by keyword")
        overrides[name] = value
    return overrides


def as_num_iter(value) -> tuple[int, ...]:
    """A sequence of step counts, or one count for a one-level model."""
    return check_setting("num_iter", value)
