"""The layer set of Ollama's ``x/imagegen/nn/nn.go`` (SPEC.md part A)."""

from mlx_impl.nn.attention_masks import apply_causal_mask, apply_causal_mask_with_offset, repeat_kv
from mlx_impl.nn.embedding import Embedding
from mlx_impl.nn.linear import Linear, MultiLinear
from mlx_impl.nn.norms import LayerNorm, RMSNorm
from mlx_impl.nn.protocols import Layer, LinearLayer
from mlx_impl.nn.quantized import QuantizedLinear

__all__ = [
    "Embedding",
    "Layer",
    "LayerNorm",
    "Linear",
    "LinearLayer",
    "MultiLinear",
    "QuantizedLinear",
    "RMSNorm",
    "apply_causal_mask",
    "apply_causal_mask_with_offset",
    "repeat_kv",
]
