"""The PyTorch reference of :class:`user_layers.mlx_layers.DyT`, written independently.

``precision="native"`` computes in the input dtype, one rounding per op as MLX does (the
peer); ``precision="float64"`` computes in float64 (the oracle). It imports torch only.
"""

from __future__ import annotations

import torch


class DyT:
    """``y = weight * tanh(alpha * x) + bias``; see the MLX layer for the contract."""

    def __init__(self, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> None:
        for name, value in (("alpha", alpha), ("weight", weight), ("bias", bias)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise TypeError(f"[DyT] {name} must be a floating tensor but got {_kind(value)}.")
        if tuple(alpha.shape) != (1,):
            raise ValueError(f"[DyT] alpha must have shape (1,) but has {tuple(alpha.shape)}.")
        if weight.dim() != 1:
            raise ValueError(f"[DyT] weight must be 1-D but has shape {tuple(weight.shape)}.")
        if bias.shape != weight.shape:
            raise ValueError(
                f"[DyT] bias must have the weight's shape {tuple(weight.shape)} but has {tuple(bias.shape)}."
            )
        self.alpha, self.weight, self.bias = alpha, weight, bias

    def __call__(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"[DyT] input must be a floating tensor but got {_kind(x)}.")
        d = self.weight.shape[0]
        if x.dim() == 0 or x.shape[-1] != d:
            raise ValueError(
                f"[DyT] input last dim must equal the weight's length {d} but got shape {tuple(x.shape)}."
            )
        if precision not in ("native", "float64"):
            raise ValueError(f"[DyT] precision must be 'native' or 'float64' but got {precision!r}.")
        alpha, weight, bias = self.alpha, self.weight, self.bias
        if precision == "float64":
            x, alpha, weight, bias = (t.to(torch.float64) for t in (x, alpha, weight, bias))
        return weight * torch.tanh(alpha * x) + bias


def _kind(value: object) -> str:
    dtype = getattr(value, "dtype", None)
    return f"{type(value).__name__} of {dtype}" if dtype is not None else type(value).__name__
