"""What a model costs in memory, counted from its config alone, and the check that this machine has it.

Counting builds nothing, not even on the meta device (whose Python objects alone grow with the block
count), so a config of a trillion parameters is refused at once, before any allocation. The count
follows the modules' constructors tensor by tensor (tests/core/test_footprint.py holds it equal to
the built models'). What a use keeps, per parameter:

    weights   4 bytes: fp32 weights, what building, loading and sampling hold
    training  16 bytes: fp32 weights, gradients and AdamW's two moments (train.py keeps no EMA copy)

Activations come on top of both: the check refuses what cannot fit, it does not promise the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ConfigError, LevelConfig, ModelConfig, PixelHeadConfig
from .levels.pixel import NUM_VALUES
from .memory import device_room, gib, host_room
from .nn.blocks import swiglu_hidden

WEIGHT_BYTES = 4
TRAINING_BYTES = 16
TENSOR_OVERHEAD = 4096  # the Python objects around one parameter tensor, its module's share included


@dataclass(frozen=True)
class Size:
    """Parameters (numbers) and parameter tensors of a model or a piece of one."""

    parameters: int = 0
    tensors: int = 0

    def __add__(self, other: Size) -> Size:
        return Size(self.parameters + other.parameters, self.tensors + other.tensors)

    def __mul__(self, times: int) -> Size:
        return Size(self.parameters * times, self.tensors * times)

    def bytes(self, per_parameter: int, shards: int = 1) -> int:
        return math.ceil(self.parameters * per_parameter / shards) + self.tensors * TENSOR_OVERHEAD


def tensors(*numels: int) -> Size:
    return Size(sum(numels), len(numels))


# ---- the modules, as their constructors make them --------------------------------------------------

def linear(n_in: int, n_out: int, bias: bool = True) -> Size:
    return tensors(n_in * n_out, n_out) if bias else tensors(n_in * n_out)


def layer_norm(width: int) -> Size:
    return tensors(width, width)


def vit_block(width: int) -> Size:
    """nn/blocks.py ViTBlock: two LayerNorms, attention with biases, a 4x MLP."""
    return (layer_norm(width) + linear(width, 3 * width) + linear(width, width) + layer_norm(width)
            + linear(width, 4 * width) + linear(4 * width, width))


def llama_block(width: int) -> Size:
    """nn/blocks.py LlamaBlock: two RMSNorms, attention without biases, SwiGLU."""
    hidden = swiglu_hidden(width)
    return (tensors(width) + linear(width, 3 * width, bias=False) + linear(width, width, bias=False)
            + tensors(width) + linear(width, hidden, bias=False) * 2 + linear(hidden, width, bias=False))


def pixel_head(head: PixelHeadConfig) -> Size:
    """levels/pixel.py PixelHead: a codebook and a logit bias per channel around ViT blocks."""
    width = head.width
    return (linear(head.cond_width, width) + tensors(NUM_VALUES * width) * head.channels + layer_norm(width)
            + vit_block(width) * head.blocks + layer_norm(width) + tensors(NUM_VALUES) * head.channels)


def level(config: LevelConfig) -> Size:
    """levels/ar.py ARLevel or levels/mar.py MARLevel."""
    width, p = config.width, config.patch_size
    size = linear(config.channels * p * p, width) + linear(config.cond_width, width) + layer_norm(width) * 2
    if config.kind == "ar":
        return size + tensors((config.seq_len + 1) * width) + llama_block(width) * config.blocks
    prefix = config.num_conds + int(config.guiding_pixel)
    size += tensors(width, (prefix + config.seq_len) * width) + vit_block(width) * config.blocks
    if config.guiding_pixel:
        size += linear(config.channels, width) + pixel_head(config.guide_head)
    return size


def model_size(config: ModelConfig) -> Size:
    """model.py FractalModel: the class embedding and the null class, every level, the pixel head."""
    width = config.widths[0]
    size = tensors(config.num_classes * width) if config.num_classes > 0 else Size()
    size += tensors(width)
    for each in config.levels:
        size += level(each)
    return size + pixel_head(config.pixel_head)


# ---- the check -------------------------------------------------------------------------------------

def check_fits(config: ModelConfig, device="cpu", training: bool = False, shards: int = 1,
               error: type[Exception] = ConfigError, where: str = ""):
    """Refuse, with one line naming the model's size and the memory there is, a model whose weights
    (or, `training`, whose training state split over `shards`) cannot fit on `device`. Training on
    a GPU also needs the weights on the CPU: the model is built there first. Skipped where the
    memory cannot be read (memory.py)."""
    size = model_size(config)
    what = f"{where}model {config.name!r} ({count(size.parameters)} parameters)"
    need = size.bytes(TRAINING_BYTES if training else WEIGHT_BYTES, shards)
    purpose = ("to train (fp32 weights, gradients and AdamW's two moments"
               + (f", over {shards} shards)" if shards > 1 else ")") if training else "for its fp32 weights")
    checks = [(need, purpose, device_room(device))]
    if training and torch.device(device).type != "cpu":
        checks.insert(0, (size.bytes(WEIGHT_BYTES), "to build its fp32 weights on the CPU", host_room()))
    for need, purpose, room in checks:
        if room is not None and need > room.bytes:
            raise error(f"{what} needs {gib(need)} {purpose}, more than the {gib(room.bytes)} {room.source}")


def count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)

