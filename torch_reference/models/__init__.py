"""Whole decoder-only LLMs built from ``torch_reference``'s layers: the twin of
``mlx_impl.models`` (same names, torch tensors, a ``precision`` for every op).

>>> model = load("path/to/checkpoint", dtype=torch.float64, precision="float64")  # doctest: +SKIP
>>> cache = make_cache(model)                                                      # doctest: +SKIP
>>> logits = model(torch.tensor([[1, 2, 3]]), cache=cache)                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import torch

from torch_reference._precision import check_precision
from torch_reference.models.cache import KVCache, SlidingWindowCache, make_cache
from torch_reference.models.checkpoint import Weights, read_checkpoint
from torch_reference.models.config import SUPPORTED_MODEL_TYPES, ModelArgs, RopeSpec
from torch_reference.models.decoder import Model

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


def load(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    precision: str = "native",
    device: str | torch.device = "cpu",
) -> Model:
    """Build the model of a Hugging Face-layout checkpoint directory.

    Args:
        path: directory with ``config.json`` and ``*.safetensors`` (dense or MLX-quantized).
        dtype: cast every floating tensor to it; ``None`` keeps the stored dtypes.
        precision: ``"native"`` (MLX's rounding points in the weights' dtype) or
            ``"float64"`` (every op in float64: with ``dtype=torch.float64`` the oracle;
            quantized layers use the exact float64 value of their codes).
        device: where the tensors live.

    Returns:
        A :class:`Model`: ``model(tokens [B, L], cache=..., hidden_states=...) -> [B, L, V]``.

    Raises:
        ValueError: an unknown ``precision``, an unsupported ``model_type`` or rope type, a
            missing config key or tensor, a tensor no layer uses, a quantized layer
            without a quantization.
    """
    check_precision("models.load", precision)
    config, arrays = read_checkpoint(path)
    args = ModelArgs.from_config(config)
    return Model(args, Weights(arrays, dtype, args.quantization, device), precision)
