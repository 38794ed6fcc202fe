"""The layer set of Ollama's ``x/imagegen/nn/nn.go`` (SPEC.md part A)."""

from torch_reference.nn.attention_masks import (
    apply_causal_mask,
    apply_causal_mask_with_offset,
    repeat_kv,
)
from torch_reference.nn.embedding import Embedding
from torch_reference.nn.linear import Linear, MultiLinear
from torch_reference.nn.norms import LayerNorm, RMSNorm
from torch_reference.nn.protocols import Layer, LinearLayer
from torch_reference.nn.quantized import QuantizedLinear

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
