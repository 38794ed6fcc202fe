"""DyT, "Dynamic Tanh" (Zhu et al., 2025, "Transformers without Normalization"), in MLX.

A drop-in replacement for LayerNorm: ``y = weight * tanh(alpha * x) + bias`` with one
learned scalar ``alpha``. This is the user's own layer; it imports ``mlx.core`` only.
"""

from __future__ import annotations

import mlx.core as mx


class DyT:
    """``y = weight * tanh(alpha * x) + bias`` over the last axis.

    Args:
        alpha: ``[1]``, the learned scale inside the tanh.
        weight: ``[D]``.
        bias: ``[D]``.

    Shape:
        ``x: [..., D]`` -> ``[..., D]``, in the promoted dtype of ``x`` and the parameters.

    Raises:
        TypeError: a non-array or integer input or parameter.
        ValueError: ``alpha`` not ``[1]``, ``weight`` not 1-D, ``bias`` not ``weight``'s
            shape, or an input whose last dim is not ``D``.
    """

    def __init__(self, alpha: mx.array, weight: mx.array, bias: mx.array) -> None:
        for name, value in (("alpha", alpha), ("weight", weight), ("bias", bias)):
            if not isinstance(value, mx.array) or not mx.issubdtype(value.dtype, mx.floating):
                raise TypeError(f"[DyT] {name} must be a floating mx.array but got {_kind(value)}.")
        if alpha.shape != (1,):
            raise ValueError(f"[DyT] alpha must have shape (1,) but has {alpha.shape}.")
        if weight.ndim != 1:
            raise ValueError(f"[DyT] weight must be 1-D but has shape {weight.shape}.")
        if bias.shape != weight.shape:
            raise ValueError(f"[DyT] bias must have the weight's shape {weight.shape} but has {bias.shape}.")
        self.alpha, self.weight, self.bias = alpha, weight, bias

    def __call__(self, x: mx.array) -> mx.array:
        if not isinstance(x, mx.array) or not mx.issubdtype(x.dtype, mx.floating):
            raise TypeError(f"[DyT] input must be a floating mx.array but got {_kind(x)}.")
        d = self.weight.shape[0]
        if x.ndim == 0 or x.shape[-1] != d:
            raise ValueError(f"[DyT] input last dim must equal the weight's length {d} but got shape {x.shape}.")
        return self.weight * mx.tanh(self.alpha * x) + self.bias


def _kind(value: object) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__
