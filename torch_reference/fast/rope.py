"""Rotary position embedding: PyTorch twin of ``mlx_impl.fast.rope``.

Conventions reproduced (mlx 0.32.4, measured): positions ``(offset + t) * scale`` along axis
-2; inverse frequencies ``base^(-2i/dims)``; rotate-half pairing ``(i, i + dims/2)`` unless
``traditional`` (interleaved ``(2i, 2i+1)``); features from ``dims`` on copied bit-exactly;
per-row offsets index ``x.shape[0]``; array offsets that are not 32-bit are cast to int32.

``precision="native"`` rounding points (MLX's recipe, in ordinary PyTorch float32 ops):
positions ``(float32(t) + float32(offset)) * float32(scale)``;
``inv_freq = exp(-i * c)`` with ``c = log(float32(base)) / (dims/2)``, all in float32
(``torch.log``/``torch.exp``); ``theta = pos * inv_freq`` in float32; cos and sin in
float32, cast to x's dtype; ``x1*cos - x2*sin`` and ``x1*sin + x2*cos`` with every op
rounded in x's dtype.

How close native gets: MLX's CPU ``exp``, ``sin`` and ``cos`` are polynomial
approximations (its ``exp`` rounds ``x * log2(e)`` to float32 first: up to ~17 float32 ulp
at ``|x| ~ 20``, measured), PyTorch's are within about 1 ulp, so ``inv_freq`` differs by a
few float32 ulps and the angle by ``pos`` times that. Both stay within the derived bound
against the float64 oracle (``tests/test_rope.py``, ``conformance/records/rope.py``).
float16/bfloat16 outputs are usually bit-identical to MLX's at small positions, but not by
construction: a float32 cos/sin a few ulps apart can straddle a half rounding boundary.
``precision="float64"``: angles, cos, sin and the rotation all in float64.

Contract shared with ``mlx_impl``: a ``base`` whose float32 rounding is 0 or inf is refused
(MLX's log of it is infinite: NaN angles even at position 0); an empty batch with ``(0,)``
per-row offsets is computed with offset 0 (MLX itself would raise on it).
"""

from __future__ import annotations

import math
import numbers
import struct

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision

_INT32_MAX = 2**31 - 1


def _is_positive_finite_float32(value: float) -> bool:
    """True when ``value`` rounds (to nearest, ties to even) to a float32 that is > 0 and
    finite: ``2**-150 < value < 2**128 - 2**103``."""
    try:
        rounded = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # struct refuses finite values that round to inf
        return False
    return bool(0.0 < rounded < math.inf)


def _check_config(
    where: str, dims: object, traditional: object, base: object, scale: object
) -> None:
    """Validate the layer's constants (cheap Python checks)."""
    if isinstance(dims, bool) or not isinstance(dims, numbers.Integral):
        raise type_error(where, f"dims must be an int but got {type(dims).__name__}.")
    if dims <= 0 or dims % 2 != 0:
        raise value_error(where, f"dims must be a positive even number but got {dims}.")
    if not isinstance(traditional, bool):
        raise type_error(where, f"traditional must be a bool but got {type(traditional).__name__}.")
    for name, val in (("base", base), ("scale", scale)):
        if isinstance(val, bool) or not isinstance(val, numbers.Real):
            raise type_error(where, f"{name} must be a real number but got {type(val).__name__}.")
        if not math.isfinite(float(val)):
            raise value_error(where, f"{name} must be finite but got {val}.")
    assert isinstance(base, numbers.Real)
    if float(base) <= 0:
        raise value_error(where, f"base must be > 0 but got {base}.")
    if not _is_positive_finite_float32(float(base)):
        # MLX computes the frequencies from float32(base): a base that rounds to 0 or to inf
        # has an infinite log and every angle (position 0 included) is NaN.
        raise value_error(
            where,
            f"base must round to a positive finite float32 (2**-150 < base < 2**128 - 2**103, "
            f"about 7e-46 ... 3.4e38) "
            f"but got {base}.",
        )


def _check_input(where: str, x: object, dims: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise type_error(where, f"x must be a torch.Tensor but got {type(x).__name__}.")
    if not x.is_floating_point():
        raise type_error(where, f"x must have a floating dtype but got {x.dtype}.")
    if x.ndim < 3:
        raise value_error(
            where, f"x must have at least 3 dimensions [B, *, T, D] but got shape {tuple(x.shape)}."
        )
    if dims > x.shape[-1]:
        raise value_error(
            where, f"dims ({dims}) must not exceed the last dimension of x ({x.shape[-1]})."
        )
    return x


def _check_offset(where: str, offset: object, batch: int) -> int | torch.Tensor:
    """Validate ``offset``: an int in [0, 2**31) or an integer tensor (scalar or ``[B]``).

    Tensor VALUES are not checked, exactly as on the MLX side (where checking them would
    force an evaluation)."""
    if isinstance(offset, bool):
        raise type_error(where, "offset must be an int or an integer torch.Tensor but got bool.")
    if isinstance(offset, numbers.Integral):
        value = int(offset)
        if value < 0 or value > _INT32_MAX:
            raise value_error(where, f"offset must be in [0, 2**31 - 1] but got {value}.")
        return value
    if not isinstance(offset, torch.Tensor):
        raise type_error(
            where,
            f"offset must be an int or an integer torch.Tensor but got {type(offset).__name__}.",
        )
    if offset.dtype == torch.bool or offset.is_floating_point() or offset.is_complex():
        raise type_error(
            where, f"an offset array must have an integer dtype but got {offset.dtype}."
        )
    if offset.ndim > 1 or (offset.ndim == 1 and offset.shape[0] not in (1, batch)):
        raise value_error(
            where,
            f"an offset array must be a scalar or have one offset per batch row ({batch},) "
            f"but got shape {tuple(offset.shape)}.",
        )
    if offset.ndim == 1 and offset.shape[0] == 0:
        # An empty batch (B = 0) with its (0,) per-row offsets: there is no row to offset.
        # MLX would broadcast the (0,) offsets against the T positions and raise.
        return 0
    return offset


def _positions(
    offset: int | torch.Tensor, t: int, work: torch.dtype, scale: float, device: torch.device
) -> torch.Tensor:
    """``(t + offset) * scale``: ``[T]`` for a scalar offset, ``[B, T]`` for per-row offsets."""
    if isinstance(offset, int):
        off = torch.tensor(offset, dtype=torch.int32).to(device=device, dtype=work)
    else:
        off = offset.to(device)
        # MLX casts offsets that are not 32-bit integers to int32 (wrapping), then promotes.
        if off.element_size() != 4:
            off = off.to(torch.int32)
        off = off.to(work)
        off = off.reshape(-1, 1) if off.numel() > 1 else off.reshape(())
    steps = torch.arange(t, dtype=work, device=device)
    return (steps + off) * torch.tensor(scale, dtype=work, device=device)


def _inv_freq(base: float, half: int, precision: str, device: torch.device) -> torch.Tensor:
    """``base^(-2i/dims)`` for ``i < dims/2``: MLX's float32 recipe natively, exact in float64."""
    if precision == "float64":
        i = torch.arange(half, dtype=torch.float64, device=device)
        return torch.exp(-i * (math.log(base) / half))
    # MLX's recipe: c = log(float32(base)) / half in float32, then exp(arange(0, -half, -1) * c)
    # in float32 (the base was checked to round to a positive finite float32).
    c = torch.log(torch.tensor(base, dtype=torch.float32, device=device)) / half
    return torch.exp(torch.arange(0, -half, -1, dtype=torch.float32, device=device) * c)


def rope(
    x: torch.Tensor,
    dims: int,
    *,
    traditional: bool = False,
    base: float = 10000.0,
    scale: float = 1.0,
    offset: int | torch.Tensor = 0,
    precision: str = "native",
) -> torch.Tensor:
    """Rotary position embedding of the first ``dims`` features of ``x`` (MLX conventions).

    ``pos_t = (offset + t) * scale``, ``theta_{t,i} = pos_t * base^(-2i/dims)``;
    each pair ``(x1, x2)`` becomes ``(x1 cos - x2 sin, x1 sin + x2 cos)``.

    Args:
        x: floating tensor ``[B, *, T, D]`` (rank >= 3).
        dims: number of leading features rotated; positive, even, ``<= D``.
        traditional: ``False`` pairs ``(i, i + dims/2)`` (rotate-half, GPT-NeoX / HF Llama);
            ``True`` pairs ``(2i, 2i+1)`` (interleaved).
        base: ``> 0`` frequency base that rounds to a finite nonzero float32.
        scale: finite multiplier of the positions.
        offset: an int in ``[0, 2**31)``, or an integer tensor that is a scalar or ``[B]``.
        precision: ``"native"`` (MLX's float32 angles, rotation rounded in x's dtype) or
            ``"float64"`` (everything in float64; returns float64).

    Shape:
        ``x: [B, *, T, D] -> [B, *, T, D]``.

    Dtypes:
        Output has x's dtype (native) or float64.

    Raises:
        TypeError / ValueError: exactly the inputs ``mlx_impl.fast.rope`` rejects, plus an
            unknown ``precision`` (ValueError).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
        >>> rope(x, 4, offset=1)  # rotate-half pairs (x0, x2): angle 1 rad
        tensor([[[0.5403, 0.0000, 0.8415, 0.0000]]])
    """
    check_precision("rope", precision)
    _check_config("rope", dims, traditional, base, scale)
    x = _check_input("rope", x, dims)
    checked = _check_offset("rope", offset, x.shape[0])
    return _apply(x, int(dims), traditional, float(base), float(scale), checked, precision)


def _apply(
    x: torch.Tensor,
    dims: int,
    traditional: bool,
    base: float,
    scale: float,
    offset: int | torch.Tensor,
    precision: str,
) -> torch.Tensor:
    angle_dtype = torch.float64 if precision == "float64" else torch.float32
    if precision == "float64":
        x = x.to(torch.float64)
    half = dims // 2
    t = x.shape[-2]
    pos = _positions(offset, t, angle_dtype, scale, x.device)
    # theta: [T, half] for a scalar offset, [B, T, half] for per-row offsets.
    theta = pos.unsqueeze(-1) * _inv_freq(base, half, precision, x.device)
    if theta.ndim == 3:
        theta = theta.reshape(x.shape[0], *([1] * (x.ndim - 3)), t, half)
    cos = torch.cos(theta).to(x.dtype)
    sin = torch.sin(theta).to(x.dtype)

    if traditional:
        x1, x2 = x[..., 0:dims:2], x[..., 1:dims:2]
    else:
        x1, x2 = x[..., :half], x[..., half:dims]
    # Separate multiplies and adds, each rounded in x's dtype (no fused multiply-add).
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    rotated = (
        torch.stack([y1, y2], dim=-1).flatten(-2) if traditional else torch.cat([y1, y2], dim=-1)
    )
    if dims < x.shape[-1]:
        rotated = torch.cat([rotated, x[..., dims:]], dim=-1)
    return rotated


class RoPE(torch.nn.Module):
    """Rotary position embedding layer: ``layer(x, offset=0, *, precision="native")``.

    PyTorch twin of ``mlx_impl.fast.RoPE``; see :func:`rope` for the formula and errors.

    Args:
        dims: number of leading features rotated; positive and even.
        traditional: ``False`` rotate-half pairing, ``True`` interleaved pairing.
        base: ``> 0`` frequency base that rounds to a finite nonzero float32.
        scale: finite position multiplier.

    Shape:
        ``x: [B, *, T, D] -> [B, *, T, D]``.

    Example:
        >>> import torch
        >>> RoPE(4)(torch.ones(1, 2, 4), offset=3).shape
        torch.Size([1, 2, 4])
    """

    def __init__(
        self, dims: int, traditional: bool = False, base: float = 10000.0, scale: float = 1.0
    ) -> None:
        super().__init__()
        _check_config("RoPE", dims, traditional, base, scale)
        self.dims = int(dims)
        self.traditional = traditional
        self.base = float(base)
        self.scale = float(scale)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, traditional={self.traditional}, base={self.base}, scale={self.scale}"

    def forward(
        self, x: torch.Tensor, offset: int | torch.Tensor = 0, *, precision: str = "native"
    ) -> torch.Tensor:
        """Rotate ``x: [B, *, T, D]`` with positions starting at ``offset``."""
        check_precision("RoPE", precision)
        x = _check_input("RoPE", x, self.dims)
        checked = _check_offset("RoPE", offset, x.shape[0])
        return _apply(x, self.dims, self.traditional, self.base, self.scale, checked, precision)
