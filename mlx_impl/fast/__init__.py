"""The fast ops of Ollama's ``x/mlxrunner/mlx/fast.go`` (SPEC.md part B)."""

from mlx_impl.fast.attention import scaled_dot_product_attention
from mlx_impl.fast.norms import LayerNorm, RMSNorm, layer_norm, rms_norm
from mlx_impl.fast.rope import RoPE, rope

__all__ = ["LayerNorm", "RMSNorm", "RoPE", "layer_norm", "rms_norm", "rope", "scaled_dot_product_attention"]
