"""Fused normalisations: PyTorch twin of ``mlx_impl.fast.norms``.

``precision="native"`` keeps MLX's conventions and rounding points but uses PyTorch's own
arithmetic, on the tensors' device (it replays no back end's summation order; the
conformance bound for the reductions is derived, gamma_D-style, in ``conformance.records.norms``):

* ``x32 = float32(x)``; the sums over the last axis are ``torch.sum`` in float32 (float64
  for float64 input), in whatever order PyTorch uses on that device.
* ``mean = sum * float32(1/D)``; ``rsqrt(v) = float32(1 / float32(sqrt(v)))``;
* RMS: ``y = R(x32 * rsqrt(mean(x32^2) + eps)) * w``; layer norm:
  ``y = R((x32 - mu) * rsqrt(mean((x32 - mu)^2) + eps)) * w + b``, with ``R`` the rounding
  to the output dtype before the weight multiply and the bias add (each rounded).
* Output dtype (MLX's rule, measured over every x/weight/bias dtype combination): RMS norm,
  the promotion of x and weight (x's dtype without a weight); layer norm WITH a weight,
  the promotion of x, weight and bias; layer norm WITHOUT a weight, x's dtype whatever the
  bias dtype -- the bias is then cast to x's dtype and added in it.

``precision="float64"`` is the oracle: x, weight, bias widened exactly, eps used exactly,
everything in float64, no intermediate rounding.
"""

from __future__ import annotations

import math
import numbers

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision

_HALF = (torch.float16, torch.bfloat16)


def check_eps(where: str, eps: object) -> float:
    """Return ``eps`` as a float if it is a finite real ``>= 0``; raise otherwise."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise type_error(where, f"eps must be a real number but got {type(eps).__name__}.")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise value_error(where, f"eps must be finite and >= 0 but got {value}.")
    return value


def check_vector(where: str, name: str, t: object, required: bool = False) -> torch.Tensor | None:
    """Validate an optional 1-D floating ``weight``/``bias`` tensor (length checked per call)."""
    if t is None:
        if required:
            raise type_error(where, f"{name} must be a torch.Tensor but got None.")
        return None
    if not isinstance(t, torch.Tensor):
        raise type_error(
            where, f"{name} must be a torch.Tensor or None but got {type(t).__name__}."
        )
    if t.ndim != 1:
        raise value_error(where, f"{name} must be 1-D [D] but got shape {tuple(t.shape)}.")
    if not t.is_floating_point():
        raise type_error(where, f"{name} must have a floating dtype but got {t.dtype}.")
    return t


def check_x(where: str, x: object, *vectors: tuple[str, torch.Tensor | None]) -> torch.Tensor:
    """Validate ``x: [..., D]`` (floating, rank >= 1) against the ``[D]`` weight/bias."""
    if not isinstance(x, torch.Tensor):
        raise type_error(where, f"x must be a torch.Tensor but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise type_error(where, f"x must have a floating dtype but got {x.dtype}.")
    if x.ndim == 0:
        raise value_error(where, "x must have at least 1 dimension [..., D] but got a scalar.")
    for name, t in vectors:
        if t is not None and t.shape[0] != x.shape[-1]:
            raise value_error(
                where,
                f"{name} length {t.shape[0]} must equal the last dimension of x "
                f"{x.shape[-1]} (x shape {tuple(x.shape)}).",
            )
    return x


def mean_last(t: torch.Tensor, precision: str) -> torch.Tensor:
    """Mean over the last axis (kept): MLX's ``sum * (1/D)`` in ``t``'s dtype natively.

    Native: the sum accumulates in float32 (float64 for float64 input) in PyTorch's order and
    is rounded to ``t``'s dtype, then multiplied by ``1/D`` rounded to ``t``'s dtype."""
    n = t.shape[-1]
    if precision == "float64":
        return t.mean(dim=-1, keepdim=True)
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    total = t.to(acc).sum(dim=-1, keepdim=True).to(t.dtype)
    inv_n = 1.0 / n if n else math.inf
    return total * torch.tensor(inv_n, dtype=t.dtype, device=t.device)


def rsqrt(v: torch.Tensor, precision: str) -> torch.Tensor:
    """``1 / sqrt(v)`` as MLX computes it: sqrt rounded to v's dtype, then the reciprocal
    rounded (through float32 for half dtypes, as MLX's half arithmetic goes).

    Done through float64, whose correctly rounded sqrt and division round to float32
    exactly as float32 arithmetic would (``torch.sqrt`` on float32/float16 CPU tensors is
    not always correctly rounded)."""
    if precision == "float64":
        return torch.rsqrt(v)
    s = torch.sqrt(v.double()).to(v.dtype)
    r = 1.0 / s.double()
    if v.dtype in _HALF:
        r = r.float()  # MLX's half division is a float32 division, rounded to half
    return r.to(v.dtype)


def _out_dtype(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None = None
) -> torch.dtype:
    """MLX's output dtype: x's dtype without a weight (a bias alone does not promote it),
    otherwise the promotion of x, weight and bias."""
    if weight is None:
        return x.dtype
    dtype = torch.promote_types(x.dtype, weight.dtype)
    return dtype if bias is None else torch.promote_types(dtype, bias.dtype)


def _rms(x: torch.Tensor, weight: torch.Tensor | None, eps: float, precision: str) -> torch.Tensor:
    if precision == "float64":
        x64 = x.double()
        y = x64 * torch.rsqrt((x64 * x64).mean(dim=-1, keepdim=True) + eps)
        return y * weight.double() if weight is not None else y
    out = _out_dtype(x, weight)
    x32 = x.to(torch.float32)
    eps32 = torch.tensor(eps, dtype=torch.float32, device=x.device)
    y = (x32 * rsqrt(mean_last(x32 * x32, precision) + eps32, precision)).to(out)
    return y * weight.to(out) if weight is not None else y


def _layer(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    precision: str,
) -> torch.Tensor:
    if precision == "float64":
        x64 = x.double()
        mu = x64.mean(dim=-1, keepdim=True)
        xc = x64 - mu
        y = xc * torch.rsqrt((xc * xc).mean(dim=-1, keepdim=True) + eps)
        if weight is not None:
            y = y * weight.double()
        return y + bias.double() if bias is not None else y
    out = _out_dtype(x, weight, bias)
    x32 = x.to(torch.float32)
    eps32 = torch.tensor(eps, dtype=torch.float32, device=x.device)
    xc = x32 - mean_last(x32, precision)
    y = (xc * rsqrt(mean_last(xc * xc, precision) + eps32, precision)).to(out)
    if weight is not None:
        y = y * weight.to(out)
    return y + bias.to(out) if bias is not None else y


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, *, precision: str = "native"
) -> torch.Tensor:
    """RMS normalisation over the last axis with MLX's rounding points.

    ``y = R(x * rsqrt(mean(x^2, axis=-1) + eps)) * weight``, statistics in float32, ``R``
    the rounding to the output dtype (native); everything in float64 (oracle).

    Args:
        x: floating tensor ``[..., D]``.
        weight: ``[D]`` floating tensor, or ``None`` for no scaling.
        eps: finite ``>= 0`` added to the mean square.
        precision: ``"native"`` or ``"float64"``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Output dtype is the promotion of x and weight (native) or float64.

    Raises:
        TypeError / ValueError: exactly the inputs ``mlx_impl.fast.rms_norm`` rejects,
            plus an unknown ``precision``.

    Example:
        >>> import torch
        >>> rms_norm(torch.full((1, 4), 2.0), torch.full((4,), 2.0), 0.0)
        tensor([[2., 2., 2., 2.]])
    """
    check_precision("rms_norm", precision)
    eps_value = check_eps("rms_norm", eps)
    w = check_vector("rms_norm", "weight", weight)
    x = check_x("rms_norm", x, ("weight", w))
    return _rms(x, w, eps_value, precision)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    *,
    precision: str = "native",
) -> torch.Tensor:
    """Fused layer normalisation over the last axis with MLX's rounding points.

    ``y = R((x - mean) * rsqrt(var + eps)) * weight + bias`` with the biased variance,
    statistics in float32, ``R`` the rounding to the output dtype (native).

    Args:
        x: floating tensor ``[..., D]``.
        weight: ``[D]`` floating tensor or ``None``.
        bias: ``[D]`` floating tensor or ``None``.
        eps: finite ``>= 0`` added to the variance.
        precision: ``"native"`` or ``"float64"``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Native: with a weight, the promotion of x, weight and bias; without one, x's dtype
        whatever the bias dtype (the bias is cast to it), as MLX does. float64: float64.

    Raises:
        TypeError / ValueError: exactly the inputs ``mlx_impl.fast.layer_norm`` rejects,
            plus an unknown ``precision``.

    Example:
        >>> import torch
        >>> layer_norm(torch.tensor([[1.0, 2.0, 3.0]]), None, None, 0.0)
        tensor([[-1.2247,  0.0000,  1.2247]])
    """
    check_precision("layer_norm", precision)
    eps_value = check_eps("layer_norm", eps)
    w = check_vector("layer_norm", "weight", weight)
    b = check_vector("layer_norm", "bias", bias)
    x = check_x("layer_norm", x, ("weight", w), ("bias", b))
    return _layer(x, w, b, eps_value, precision)


class RMSNorm(torch.nn.Module):
    """RMS normalisation layer, twin of ``mlx_impl.fast.RMSNorm``: ``layer(x, eps)``.

    See :func:`rms_norm` for the formula, dtypes and errors.

    Args:
        weight: ``[D]`` floating tensor (stored as a frozen ``Parameter``), or ``None``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Example:
        >>> import torch
        >>> RMSNorm(torch.ones(4))(torch.full((1, 4), 2.0), 1e-5).shape
        torch.Size([1, 4])
    """

    weight: torch.nn.Parameter | None

    def __init__(self, weight: torch.Tensor | None) -> None:
        super().__init__()
        w = check_vector("RMSNorm", "weight", weight)
        self.weight = None if w is None else torch.nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor, eps: float, *, precision: str = "native") -> torch.Tensor:
        """Normalise ``x: [..., D]`` with ``eps`` (finite, ``>= 0``)."""
        check_precision("RMSNorm", precision)
        eps_value = check_eps("RMSNorm", eps)
        x = check_x("RMSNorm", x, ("weight", self.weight))
        return _rms(x, self.weight, eps_value, precision)


class LayerNorm(torch.nn.Module):
    """Fused layer normalisation, twin of ``mlx_impl.fast.LayerNorm``: ``layer(x, eps)``.

    See :func:`layer_norm` for the formula, dtypes and errors.

    Args:
        weight: ``[D]`` floating tensor or ``None``.
        bias: ``[D]`` floating tensor or ``None``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Example:
        >>> import torch
        >>> LayerNorm(None, None)(torch.tensor([[1.0, 2.0, 3.0]]), 0.0).shape
        torch.Size([1, 3])
    """

    weight: torch.nn.Parameter | None
    bias: torch.nn.Parameter | None

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = check_vector("LayerNorm", "weight", weight)
        b = check_vector("LayerNorm", "bias", bias)
        if w is not None and b is not None and w.shape != b.shape:
            raise value_error(
                "LayerNorm",
                f"weight and bias must have the same shape but got {tuple(w.shape)} and {tuple(b.shape)}.",
            )
        self.weight = None if w is None else torch.nn.Parameter(w, requires_grad=False)
        self.bias = None if b is None else torch.nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor, eps: float, *, precision: str = "native") -> torch.Tensor:
        """Normalise ``x: [..., D]`` with ``eps`` (finite, ``>= 0``)."""
        check_precision("LayerNorm", precision)
        eps_value = check_eps("LayerNorm", eps)
        x = check_x("LayerNorm", x, ("weight", self.weight), ("bias", self.bias))
        return _layer(x, self.weight, self.bias, eps_value, precision)
