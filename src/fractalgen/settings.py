"""How to sample: one frozen `SamplingSettings`, resolved in exactly one place.

Precedence, per setting: an explicit argument (or command-line flag) > the checkpoint's
recommendation (`model.recommended`, read from the checkpoint's metadata by `load`) > the
config's preset values (`ModelConfig.cfg`, `.temperature`, `.cfg_schedule`, `.num_iter`).
The guidance filter threshold has no preset value: its default is DEFAULT_FILTER_THRESHOLD.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .config import CFG_SCHEDULES
from .errors import UserError

SETTING_MAX = 1e4  # |cfg| and temperature: the published values are <= 29; 3e38 overflows the logits
DEFAULT_FILTER_THRESHOLD = 1e-4  # the authors' value: conditional probabilities below it are not boosted


class SettingsError(UserError, ValueError):
    """A sampling setting out of range (a ValueError for library callers, one error line in the CLI)."""


@dataclass(frozen=True)
class SamplingSettings:
    cfg: float  # guidance scale; 1.0 = no guidance
    cfg_schedule: str  # "linear" (ramps 1 -> cfg as generation progresses), "constant" or "falling" (cfg -> 1)
    temperature: float  # multiplies the logits (the authors' convention: 1.1 sharpens)
    filter_threshold: float  # guidance leaves values whose conditional probability is below it alone
    num_iter: tuple[int, ...]  # steps per level (MAR levels; AR levels always take one step per patch)

    def describe(self) -> str:
        """One line for people: cfg 10.0 (linear), temperature 1.0, filter 0.0001, num_iter 49,16."""
        return (f"cfg {self.cfg:g} ({self.cfg_schedule}), temperature {self.temperature:g}, "
                f"filter {self.filter_threshold:g}, num_iter {','.join(map(str, self.num_iter))}")

    def to_dict(self) -> dict:
        """Plain JSON-able values (num_iter as a list)."""
        return {**dataclasses.asdict(self), "num_iter": list(self.num_iter)}


SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SamplingSettings))


def resolve_settings(model, cfg=None, cfg_schedule=None, temperature=None, filter_threshold=None,
                     num_iter=None) -> SamplingSettings:
    """The settings to sample `model` with: each argument that is not None, else the checkpoint's
    recommendation (`model.recommended`), else the config's preset value."""
    config = model.config
    recommended = getattr(model, "recommended", None) or {}
    presets = {"cfg": config.cfg, "cfg_schedule": config.cfg_schedule, "temperature": config.temperature,
               "filter_threshold": DEFAULT_FILTER_THRESHOLD, "num_iter": config.default_num_iter}
    explicit = {"cfg": cfg, "cfg_schedule": cfg_schedule, "temperature": temperature,
                "filter_threshold": filter_threshold, "num_iter": num_iter}

    def pick(name):
        for source in (explicit, recommended, presets):
            if source.get(name) is not None:
                return source[name]

    settings = SamplingSettings(cfg=float(pick("cfg")), cfg_schedule=str(pick("cfg_schedule")),
                                temperature=float(pick("temperature")),
                                filter_threshold=float(pick("filter_threshold")),
                                num_iter=as_num_iter(pick("num_iter")))
    check(settings, config.num_levels)
    return settings


def as_num_iter(value) -> tuple[int, ...]:
    """A sequence of step counts, or one count for a one-level model."""
    if isinstance(value, int):
        return (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SettingsError(f"num_iter (--num-iter) is one number per level, got {value!r}")
    return tuple(int(v) for v in value)


def check(settings: SamplingSettings, num_levels: int) -> None:
    # NaN or infinite settings would not fail: they would draw noise. Refuse them here, for every caller.
    if not all(math.isfinite(v) for v in (settings.cfg, settings.temperature, settings.filter_threshold)):
        raise SettingsError(f"sampling settings must be finite, got cfg {settings.cfg}, temperature "
                            f"{settings.temperature}, filter_threshold {settings.filter_threshold}")
    if abs(settings.cfg) > SETTING_MAX or settings.temperature > SETTING_MAX:
        raise SettingsError(f"cfg and temperature must be at most {SETTING_MAX:g} in size, got cfg {settings.cfg:g}, "
                            f"temperature {settings.temperature:g}")
    if settings.cfg_schedule not in CFG_SCHEDULES:
        raise SettingsError(f"unknown cfg schedule {settings.cfg_schedule!r} "
                            f"(choose from {', '.join(CFG_SCHEDULES)})")
    if not settings.temperature > 0:
        raise SettingsError(f"temperature (--temperature) must be positive, got {settings.temperature}")
    if not settings.filter_threshold >= 0:
        raise SettingsError(f"filter threshold (--filter-threshold) must be >= 0, got {settings.filter_threshold}")
    if len(settings.num_iter) != num_levels or min(settings.num_iter) < 1:
        raise SettingsError(f"num_iter (--num-iter) needs {num_levels} positive numbers (one per level), "
                            f"got {list(settings.num_iter)}")
