"""Deprecated: `fractalgen.sample` lives in fractalgen.samples (this name goes in the next release)."""
from __future__ import annotations

import warnings

from .samples import DEFAULT_BATCH_SIZE, count_and_labels, make_generator, sample, step_callback, to_uint8

warnings.warn("fractalgen.generation is deprecated: import from fractalgen.samples "
              "(or use fractalgen.sample)", DeprecationWarning, stacklevel=2)

__all__ = ["DEFAULT_BATCH_SIZE", "count_and_labels", "make_generator", "sample", "step_callback", "to_uint8"]
