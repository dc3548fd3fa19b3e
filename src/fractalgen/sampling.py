"""Sampling as small pure functions: temperature -> guidance -> probabilities -> draw; schedules by name."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import shutil
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

try:  # private in torch; were it to move, `compiled` would lose only its guard against dispatch modes
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode
except ImportError:  # pragma: no cover
    def is_in_torch_dispatch_mode(include_infra_modes: bool = True) -> bool:
        return False

from .errors import UserError

# ---- logits -> token --------------------------------------------------------

def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    # Official quirk the published settings assume: temperature MULTIPLIES the logits (1.1 sharpens).
    return logits * temperature


def guide(logits: torch.Tensor, cfg: torch.Tensor, filter_threshold: float) -> torch.Tensor:
    """Classifier-free guidance over a doubled batch: rows [:B] conditional, [B:] unconditional.

    logits (2B, V), cfg (B,) -> (B, V) = u + cfg * (c - u), where first every unconditional
    logit whose conditional probability is below the threshold is raised to
    max(u, c - max(c) + max(u)), so guidance cannot resurrect very unlikely values.
    """
    cond, uncond = logits.chunk(2)
    if filter_threshold > 0:
        suppressed = torch.softmax(cond, dim=-1) < filter_threshold
        floor = cond - cond.amax(-1, keepdim=True) + uncond.amax(-1, keepdim=True)
        uncond = torch.where(suppressed, torch.maximum(uncond, floor), uncond)
    return uncond + cfg[:, None] * (cond - uncond)


def draw(logits: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one id per row of (B, V) logits by the inverse of its distribution function, given one
    uniform in [0, 1) per row (B,); returns ids (B,) and their log-probabilities (B,).

    Value i is drawn when the row's uniform, scaled to the total mass, falls in [cdf(i-1), cdf(i)):
    an interval of width p(i), so i is drawn with probability p(i), and a value of probability 0 never
    is. One uniform per draw instead of one random number per value: the uniforms of a whole pixel are
    drawn ahead of it in one call. No validity checks: they would read the probabilities back to the
    host and stop a GPU at every draw, and the logits are finite here (guidance, temperature and the
    fp32 logits of a trained head).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    cdf = logp.exp().cumsum_(-1)  # (B, V); cdf[:, -1] is 1 up to rounding, so scale u by it
    ids = torch.searchsorted(cdf, uniforms.to(cdf.dtype)[:, None] * cdf[:, -1:], right=True)
    ids = ids.clamp_(max=logits.shape[-1] - 1)  # u * total rounding up to the total itself
    return ids[:, 0], logp.gather(1, ids)[:, 0]


# ---- schedules -----------------------------------------------------------------

def cosine_masked_after(step: int, num_iter: int, total):
    """MAR: how many of `total` tokens stay masked after step `step`: floor(total * cos(pi/2 * (step+1) / num_iter)).

    In float64, as the authors' code computes it (numpy): in float32 the product can land just
    above the float64 value's integer part (64 tokens in 39 steps, step 25: 32 stay masked instead of 31).
    total: a tensor (B,) -> int64 (B,); or an int -> an int, the same float64 product on the host.
    """
    fraction = math.cos(math.pi / 2.0 * (step + 1) / num_iter)
    if isinstance(total, int):
        return math.floor(total * fraction)
    return torch.floor(total.double() * fraction).long()


def linear_cfg(cfg: float, progress: torch.Tensor) -> torch.Tensor:
    """Guidance ramps from 1 to cfg as generation progresses (progress in [0, 1])."""
    return 1.0 + (cfg - 1.0) * progress


def constant_cfg(cfg: float, progress: torch.Tensor) -> torch.Tensor:
    return torch.full_like(progress, cfg)


def falling_cfg(cfg: float, progress: torch.Tensor) -> torch.Tensor:
    """Guidance falls from cfg to 1: strongest while the layout is drawn, none for the last details.
    (For class edits with a MAR model, benchmarks/edit_accuracy.py measures it against the others.)"""
    return 1.0 + (cfg - 1.0) * (1.0 - progress)


CFG_SCHEDULES: dict[str, Callable[[float, torch.Tensor], torch.Tensor]] = {
    "linear": linear_cfg,
    "constant": constant_cfg,
    "falling": falling_cfg,
}


@functools.cache
def _coding_order(seq_len: int) -> tuple[int, ...]:
    return tuple(sorted(range(seq_len), key=lambda i: hashlib.sha256(f"fractalgen order {i}".encode()).digest()))


def coding_order(seq_len: int, device=None) -> torch.Tensor:
    """A fixed permutation of seq_len positions (seq_len,) int64, the same on every machine and torch
    version: positions sorted by a hash of their index. MAR levels generate in it when coding."""
    return torch.tensor(_coding_order(seq_len), dtype=torch.long, device=device)


# ---- compiled decode steps ---------------------------------------------------------------

_COMPILED: dict = {}


RECOMPILE_LIMIT = 64  # graphs kept per compiled method (`compiled`)

# Inductor's vector width (bits) for torch's CPU capability (ATEN_CPU_CAPABILITY; 1: no vectors).
SIMD_BITS = {"DEFAULT": 1, "AVX2": 256, "AVX512": 512}


def cpu_options() -> dict:
    """Inductor's options for a CPU step: its C++ wrapper, and the vector width of the CPU kernels torch
    runs in this process, named outright. Inductor's cache on disk does not tell code built for one
    width from another: a process under ATEN_CPU_CAPABILITY=avx2 reused kernels built for AVX-512 and
    drew wrong values, and one under =default failed to compile them. A width in the options is part
    of the cache key. Capabilities of other architectures leave the width to inductor."""
    options: dict = {"cpp_wrapper": True}
    bits = SIMD_BITS.get(torch.backends.cpu.get_cpu_capability())
    if bits is not None:
        options["cpp.simdlen"] = bits
    return options


class CompilerMissing(UserError, RuntimeError):
    """compile=True on a CPU where torch.compile finds no C++ compiler."""


def check_cpu_compiler() -> None:
    """Raise CompilerMissing unless the C++ compiler inductor runs on a CPU is there: the CXX environment
    variable's, else g++ (clang++ on macOS, cl on Windows). Without one, compile=True would fail inside
    torch at its first step, with a long traceback."""
    default = {"win32": "cl", "darwin": "clang++"}.get(sys.platform, "g++")
    cxx = os.environ.get("CXX", default)
    if not cxx.strip() or shutil.which(cxx.split()[0]) is None:
        raise CompilerMissing(f"compile=True (--compile) on a CPU needs the C++ compiler torch.compile runs "
                              f"({cxx!r}: CXX, else {default}), and it is not there; install one, name it in CXX, "
                              "or sample without compile")


def compiled(method: Any, static: bool = False) -> Callable:
    """`method` (a bound method of a module) through torch.compile, compiled once per process and module.

    On a CPU, inductor's C++ wrapper (calls without Python between kernels), at the SIMD width of the
    CPU kernels torch runs now (`cpu_options`); on CUDA, mode "reduce-overhead" (the step replayed as
    a CUDA graph). The first call compiles for its shapes (seconds to a minute); a call with other
    shapes (a MAR level's number of rows, or of revealed patches, changes from step to step) compiles
    once more, for any number, unless `static`: then once per shape (an AR level's step keeps its
    shapes for a whole generation, and torch 2.13 fails to compile its cache writes for any number of
    rows). Later calls, and later processes through inductor's cache on disk, reuse them. Under a
    dispatch mode (torch's FLOP counter, say) the method runs as it is: torch.compile would skip its
    frames then and ever after, running it eagerly at more than eager's cost.
    """
    if is_in_torch_dispatch_mode():
        return method
    module = method.__self__
    key = (id(module), method.__func__, static)
    if key not in _COMPILED or _COMPILED[key][0]() is not module:  # (a module since freed had the same id)
        # Every level's (and every pixel head's) graphs are kept under its method's code, which torch
        # caps at 8 by default: a model with several MAR levels needs more, or its last ones run eagerly.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        device = next(module.parameters()).device.type
        if device == "cpu":
            check_cpu_compiler()
        options = {"mode": "reduce-overhead"} if device == "cuda" else {"options": cpu_options()}
        _COMPILED[key] = (weakref.ref(module), torch.compile(method, dynamic=False if static else None, **options))
    return _COMPILED[key][1]


# ---- what every level's sampler shares ----------------------------------------------

@dataclass
class SampleContext:
    """The settings handed down the recursion, and the depth they are read at (0: the outermost level)."""

    guided: bool  # conditions carry a conditional and an unconditional half (2B rows)
    temperature: float
    filter_threshold: float
    num_iter: tuple[int, ...]
    generator: torch.Generator | None
    guidance_scale: float = 1.0  # the settings' cfg; schedules turn it into per-row guidance at level 0
    cfg_schedule: str = "linear"  # applies at level 0 only; deeper levels use the guidance handed down
    on_step: Callable | None = None  # level-0 progress callback (canvas, filled) for animations
    # Lossless coding (codec.py): values are not drawn but taken from the image (encoder) or read from
    # the stream (decoder); every value is visited, known or not. See ValueCoder.
    coder: ValueCoder | None = None
    depth: int = 0  # the level sampling with this context; deeper levels get `deeper()`
    # Decode steps of this generation (weights laid out for one-token steps, caches), shared by every depth.
    decoders: dict = dataclasses.field(default_factory=dict)
    compiled: bool = False  # decode steps and MAR passes through torch.compile (`compiled`)

    # ---- the settings at this depth ----

    @property
    def steps(self) -> int:
        """Steps at this level (MAR levels; an AR level takes one per patch)."""
        return self.num_iter[self.depth]

    @property
    def schedule(self) -> Callable[[float, torch.Tensor], torch.Tensor] | None:
        """Level 0's guidance schedule by progress; deeper levels use the guidance handed down (None)."""
        return CFG_SCHEDULES[self.cfg_schedule] if self.depth == 0 else None

    @property
    def level_on_step(self) -> Callable | None:
        """The progress callback, which follows level 0 only."""
        return self.on_step if self.depth == 0 else None

    def decode_steps(self, blocks, rows: int, max_len: int, build: Callable) -> list:
        """`build(block, rows, max_len)` for each block, made once per generation and reused by every
        call with as many rows: a pixel head decodes thousands of pixels with the same steps."""
        key = (id(blocks), rows)
        if key not in self.decoders:
            self.decoders[key] = [build(block, rows, max_len) for block in blocks]
        return self.decoders[key]

    def deeper(self) -> SampleContext:
        """The same settings for the next level down."""
        return dataclasses.replace(self, depth=self.depth + 1)

    # Guided batches: every tensor of the B rows being generated goes through the transformers
    # twice, once with the conditions (rows :B) and once with the unconditional ones (rows B:).

    def doubled(self, t: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (2B, ...) when guided (the same rows for both halves), else unchanged."""
        return torch.cat([t, t]) if self.guided else t

    def doubled_rows(self, rows: torch.Tensor, batch: int) -> torch.Tensor:
        """Row indices into a batch of `batch` rows -> the same rows in both halves when guided."""
        return torch.cat([rows, rows + batch]) if self.guided else rows


@dataclass
class Known:
    """Known content of a batch of squares: raw values 0..255 and a per-value mask (True = given)."""

    values: torch.Tensor  # (B, C, S, S) float
    mask: torch.Tensor  # (B, C, S, S) bool


class ValueCoder:
    """Chooses each value in place of `draw`: `code(logits (B, V), given (B,) or None) -> ids, logp`.

    The sampler hands it the distribution of every value in generation order, so an arithmetic
    coder that encodes `given` and one that decodes ids see the same logits. With `fixed_order`,
    MAR levels generate in `coding_order` instead of a random order drawn from the generator.
    """

    fixed_order = True

    def code(self, logits: torch.Tensor, given: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
