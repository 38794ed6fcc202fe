"""Whole decoder-only LLMs built from ``mlx_impl``'s layers and fast ops (mlx-lm's conventions).

>>> model = load("path/to/checkpoint")            # doctest: +SKIP
>>> cache = make_cache(model)                      # doctest: +SKIP
>>> logits = model(mx.array([[1, 2, 3]]), cache=cache)  # [1, 3, vocab]; then one token a step

Architectures by ``config.json``'s ``model_type``: ``llama``, ``qwen3``, ``gemma3_text``,
``glm4`` (see :mod:`mlx_impl.models.decoder`).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx

from mlx_impl.models.cache import KVCache, SlidingWindowCache, make_cache
from mlx_impl.models.checkpoint import Weights, read_checkpoint
from mlx_impl.models.config import SUPPORTED_MODEL_TYPES, ModelArgs, RopeSpec
from mlx_impl.models.decoder import Model

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "KVCache",
    "Model",
    "ModelArgs",
    "RopeSpec",
    "SlidingWindowCache",
    "load",
    "make_cache",
]


def load(path: str | Path, *, dtype: mx.Dtype | None = None) -> Model:
    """Build the model of a Hugging Face-layout checkpoint directory.

    Args:
        path: directory with ``config.json`` and ``*.safetensors`` (dense, or MLX-quantized
            with ``"quantization": {"group_size", "bits", "mode"}`` in ``config.json``).
        dtype: cast every floating tensor (weights, norms, biases, quantization scales)
            to it; ``None`` keeps the stored dtypes.

    Returns:
        A :class:`Model`: ``model(tokens [B, L], cache=..., hidden_states=...) -> [B, L, V]``.

    Raises:
        ValueError: an unsupported ``model_type`` or rope type, a missing config key or
            tensor, a tensor no layer uses, a quantized layer without a quantization.
    """
    config, arrays = read_checkpoint(path)
    args = ModelArgs.from_config(config)
    return Model(args, Weights(arrays, dtype, args.quantization))
