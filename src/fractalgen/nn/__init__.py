"""Transformer pieces shared by every level: attention, one-token decode steps with a KV cache, the two block
styles, rotary embedding, the pixel heads' fused cross-entropy, the precision policy and its fp32 islands."""
from .attention import Attention, select_tokens
from .blocks import LlamaBlock, ViTBlock
from .cross_entropy import tied_cross_entropy
from .decode import KVCache, LlamaStep, Projection, ViTStep, rotary_turns
from .precision import (
    PRECISIONS,
    fp32_island,
    fp32_or_wider,
    precision_context,
    precision_in_effect,
    resolve_precision,
)
from .rotary import apply_rotary, rotary_table_2d

__all__ = ["PRECISIONS", "Attention", "KVCache", "LlamaBlock", "LlamaStep", "Projection", "ViTBlock", "ViTStep",
           "apply_rotary", "fp32_island", "fp32_or_wider", "precision_context", "precision_in_effect",
           "resolve_precision", "rotary_table_2d", "rotary_turns", "select_tokens", "tied_cross_entropy"]
