"""The layer set's normalisations: PyTorch twin of ``mlx_impl.nn.norms``.

``RMSNorm`` delegates to ``torch_reference.fast.rms_norm`` (MLX's fused kernel's rounding
points, PyTorch's float32 sums). ``LayerNorm`` replays MLX's COMPOSED op sequence in x's dtype
(``precision="native"``), each op rounded where MLX rounds it:

* ``mean = R(R(sum32(x)) * R(1/D))``: float32 sum (``torch.sum``'s order) rounded to x's dtype, times
  ``1/D`` rounded to x's dtype (that is what ``mx.mean`` of float16/bfloat16 does on the CPU;
  float32 is the same with no-op roundings);
* ``centered = x - mean``, ``var = mean(centered * centered)``, ``var + R(eps)``;
* ``rsqrt = R(1 / R(sqrt))``, then ``centered * rsqrt``, ``* weight``, ``+ bias``.

It replays no back end's summation order, so it agrees with ``mlx_impl.nn.LayerNorm`` up to
the order of the float32 sums (bit-identical wherever those sums agree; the conformance
bound is derived in ``conformance.records.norms``). ``precision="float64"`` computes the same
formula in float64 with eps exact.
"""

from __future__ import annotations

import torch

from torch_reference._errors import value_error
from torch_reference._precision import check_precision
from torch_reference.fast.norms import check_eps, check_vector, check_x, mean_last, rms_norm, rsqrt

DEFAULT_LAYER_NORM_EPS = 1e-5
"""What ``nn.LayerNorm``'s ``eps=0`` means (Ollama: ``if eps == 0 { eps = 1e-5 }``)."""


class RMSNorm(torch.nn.Module):
    """RMS normalisation with a stored eps, twin of ``mlx_impl.nn.RMSNorm``.

    ``layer(x, eps=0.0, *, precision="native")``: ``y = R(x * rsqrt(mean(x^2) + eps)) *
    weight`` with float32 statistics (see ``torch_reference.fast.rms_norm``); a call-time
    ``eps`` of ``0`` uses the stored one.

    Args:
        weight: ``[D]`` floating tensor (required; stored as a frozen ``Parameter``).
        eps: stored eps, finite and ``>= 0`` (default ``1e-5``).

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Output dtype is the promotion of x and weight (native) or float64.

    Raises:
        TypeError / ValueError: exactly what ``mlx_impl.nn.RMSNorm`` rejects, plus an
            unknown ``precision``.

    Example:
        >>> import torch
        >>> RMSNorm(torch.full((4,), 2.0), eps=0.0)(torch.full((1, 4), 2.0))
        tensor([[2., 2., 2., 2.]])
    """

    weight: torch.nn.Parameter

    def __init__(self, weight: torch.Tensor, eps: float = 1e-5) -> None:
        super().__init__()
        w = check_vector("RMSNorm", "weight", weight, required=True)
        assert w is not None  # required=True raised otherwise
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.eps = check_eps("RMSNorm", eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

    def forward(
        self, x: torch.Tensor, eps: float = 0.0, *, precision: str = "native"
    ) -> torch.Tensor:
        """Normalise ``x: [..., D]``; ``eps == 0`` means the stored eps."""
        check_precision("RMSNorm", precision)
        given = check_eps("RMSNorm", eps)
        x = check_x("RMSNorm", x, ("weight", self.weight))
        return rms_norm(x, self.weight, given if given != 0.0 else self.eps, precision=precision)


class LayerNorm(torch.nn.Module):
    """Composed layer normalisation, twin of ``mlx_impl.nn.LayerNorm``: ``layer(x)``.

    ``y = (x - mean) * rsqrt(var + eps) * weight (+ bias)`` over the last axis with the
    biased variance, replaying MLX's plain-op sequence in x's dtype (native). ``eps == 0``
    means ``1e-5``.

    Args:
        weight: ``[D]`` floating tensor (required).
        bias: ``[D]`` floating tensor or ``None``.
        eps: finite ``>= 0``; ``0`` (the default) means ``1e-5``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Statistics and the normalised value in x's dtype (native; eps rounded to it); the
        output dtype is the promotion of x, weight and bias. ``"float64"``: all float64.

    Raises:
        TypeError / ValueError: exactly what ``mlx_impl.nn.LayerNorm`` rejects, plus an
            unknown ``precision``.

    Example:
        >>> import torch
        >>> LayerNorm(torch.ones(3))(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[-1.2247,  0.0000,  1.2247]])
    """

    weight: torch.nn.Parameter
    bias: torch.nn.Parameter | None

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, eps: float = 0.0
    ) -> None:
        super().__init__()
        w = check_vector("LayerNorm", "weight", weight, required=True)
        b = check_vector("LayerNorm", "bias", bias)
        assert w is not None  # required=True raised otherwise
        if b is not None and b.shape != w.shape:
            raise value_error(
                "LayerNorm",
                f"weight and bias must have the same shape but got {tuple(w.shape)} and {tuple(b.shape)}.",
            )
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.bias = None if b is None else torch.nn.Parameter(b, requires_grad=False)
        self.eps = check_eps("LayerNorm", eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Normalise ``x: [..., D]``: MLX's plain-op sequence in x's dtype (native)."""
        check_precision("LayerNorm", precision)
        x = check_x("LayerNorm", x, ("weight", self.weight), ("bias", self.bias))
        eps = self.eps if self.eps != 0.0 else DEFAULT_LAYER_NORM_EPS
        weight: torch.Tensor = self.weight
        bias: torch.Tensor | None = self.bias
        if precision == "float64":
            x = x.double()
            weight = weight.double()
            bias = None if bias is None else bias.double()
            eps_t = torch.tensor(eps, dtype=torch.float64, device=x.device)
        else:
            # Go's AddScalar: a float32 scalar cast to the operand's dtype.
            eps_t = torch.tensor(eps, dtype=torch.float32, device=x.device).to(x.dtype)
        mean = mean_last(x, precision)
        centered = x - mean
        variance = mean_last(centered * centered, precision)
        normalized = centered * rsqrt(variance + eps_t, precision)
        out = normalized * weight
        return out + bias if bias is not None else out
