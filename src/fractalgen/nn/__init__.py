"""Transformer pieces shared by every level: attention with a KV cache, the two block styles, rotary embedding."""
from .attention import Attention, KVCache, select_tokens
from .blocks import LlamaBlock, ViTBlock
from .rotary import apply_rotary, rotary_table_2d

__all__ = ["Attention", "KVCache", "LlamaBlock", "ViTBlock", "apply_rotary", "rotary_table_2d", "select_tokens"]
