"""Rotary position embedding over ``mx.fast.rope``: the ``RoPE`` layer and ``rope`` function.

Behaviour measured on mlx 0.32.4 (CPU back end; ``torch_reference.fast.rope`` reproduces it):

* Input ``[B, *, T, D]`` with rank >= 3; positions run along axis -2:
  ``pos_t = (offset + t) * scale``; angle ``theta_{t,i} = pos_t * base^(-2i/dims)`` for
  ``i < dims/2``.
* ``traditional=False`` rotates the pairs ``(x[i], x[i + dims/2])`` (rotate-half, GPT-NeoX /
  Hugging Face Llama); ``traditional=True`` rotates ``(x[2i], x[2i+1])`` (interleaved).
  ``y1 = x1 cos - x2 sin``, ``y2 = x1 sin + x2 cos``. Features from ``dims`` on pass
  through bit-exactly.
* ``offset`` is a Python int or an integer array: a scalar, or a vector with one offset
  per batch row ``x.shape[0]`` (for 3-D, 4-D and higher inputs alike). MLX casts array
  offsets that are not 32-bit to int32.
* Angles, cos and sin are computed in float32, cos/sin cast to the input dtype, and the
  rotation is done in the input dtype with every multiply and add rounded.
* ``base`` is used as ``float32(base)``: one that rounds to 0 (``<= 2**-150``) or to inf
  (``>= 2**128 - 2**103``) gives an infinite log and NaN angles even at position 0, so
  both packages refuse it (``base <= 0`` too). Tiny or huge bases that do round to a
  finite float32 are accepted and computed as MLX computes them.
* An empty batch (``B = 0``) with ``(0,)`` per-row offsets is passed to MLX as offset 0:
  MLX itself would broadcast the ``(0,)`` offsets against the ``T`` positions and raise.
"""

from __future__ import annotations

import math
import numbers
import struct

import mlx.core as mx

from mlx_impl._errors import type_error, value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, PLAN, FastPathModule

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


def _check_input(where: str, x: object, dims: int) -> mx.array:
    if not isinstance(x, mx.array):
        raise type_error(where, f"x must be an mx.array but got {type(x).__name__}.")
    if not mx.issubdtype(x.dtype, mx.floating):
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


def _check_offset(where: str, offset: object, batch: int) -> int | mx.array:
    """Validate ``offset``: an int in [0, 2**31) or an integer array (scalar or ``[B]``).

    Array VALUES are not checked (that would force an evaluation): negative or wrapped
    values compute whatever MLX computes, identically in the reference."""
    if type(offset) is int and 0 <= offset <= _INT32_MAX:
        return offset  # the decode hot path, without the numbers.Integral ABC check
    if isinstance(offset, bool):
        raise type_error(where, "offset must be an int or an integer mx.array but got bool.")
    if isinstance(offset, numbers.Integral):
        value = int(offset)
        if value < 0 or value > _INT32_MAX:
            raise value_error(where, f"offset must be in [0, 2**31 - 1] but got {value}.")
        return value
    if not isinstance(offset, mx.array):
        raise type_error(
            where, f"offset must be an int or an integer mx.array but got {type(offset).__name__}."
        )
    if offset.dtype == mx.bool_ or not mx.issubdtype(offset.dtype, mx.integer):
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


def rope(
    x: mx.array,
    dims: int,
    *,
    traditional: bool = False,
    base: float = 10000.0,
    scale: float = 1.0,
    offset: int | mx.array = 0,
) -> mx.array:
    """Rotary position embedding of the first ``dims`` features of ``x`` (``mx.fast.rope``).

    ``pos_t = (offset + t) * scale``, ``theta_{t,i} = pos_t * base^(-2i/dims)``;
    each pair ``(x1, x2)`` becomes ``(x1 cos - x2 sin, x1 sin + x2 cos)``.

    Args:
        x: floating array ``[B, *, T, D]`` (rank >= 3).
        dims: number of leading features rotated; positive, even, ``<= D``. The rest pass
            through unchanged.
        traditional: ``False`` pairs ``(i, i + dims/2)`` (rotate-half); ``True`` pairs
            ``(2i, 2i+1)`` (interleaved).
        base: frequency base (a model's ``rope_theta``): ``> 0`` and rounding to a
            finite nonzero float32 (about ``7e-46 < base < 3.4e38``).
        scale: finite multiplier of the positions.
        offset: position of the first row: an int in ``[0, 2**31)``, or an integer
            ``mx.array`` that is a scalar or ``[B]`` (one offset per batch row; its values
            are not checked).

    Shape:
        ``x: [B, *, T, D] -> [B, *, T, D]``.

    Dtypes:
        Output has x's dtype. Angles, cos and sin are float32; cos/sin are cast to x's
        dtype and the rotation rounds every op in that dtype.

    Raises:
        TypeError: non-array/non-floating ``x``; non-int ``dims``; non-bool
            ``traditional``; non-real ``base``/``scale``; a float/bool offset or an offset
            array of a non-integer dtype.
        ValueError: rank < 3; ``dims`` odd, non-positive or ``> D``; ``base <= 0`` or a
            base whose float32 rounding is 0 or inf (its log is infinite: NaN angles);
            non-finite ``base``/``scale``; a negative (or >= 2**31) int offset; an offset
            array that is neither a scalar nor ``[B]``.

    Example:
        >>> import mlx.core as mx
        >>> x = mx.arange(8, dtype=mx.float32).reshape(1, 1, 8)
        >>> bool(mx.array_equal(rope(x, 8), x))  # position 0: the identity
        True
    """
    _check_config("rope", dims, traditional, base, scale)
    x = _check_input("rope", x, dims)
    checked = _check_offset("rope", offset, x.shape[0])
    if x.size == 0:  # mx.fast.rope on CUDA: "cudaGraphAddKernelNode ... invalid argument"
        return mx.zeros(x.shape, dtype=x.dtype)
    return mx.fast.rope(
        x, dims, traditional=traditional, base=float(base), scale=float(scale), offset=checked
    )


class RoPE(FastPathModule):
    """Rotary position embedding layer (Ollama ``fast.RoPE``): ``layer(x, offset=0)``.

    See :func:`rope` for the formula, shapes, dtypes and errors.

    Args:
        dims: number of leading features rotated; positive and even.
        traditional: ``False`` rotate-half pairing, ``True`` interleaved pairing.
        base: ``> 0`` frequency base that rounds to a finite nonzero float32.
        scale: finite position multiplier.

    Shape:
        ``x: [B, *, T, D] -> [B, *, T, D]``.

    Example:
        >>> import mlx.core as mx
        >>> layer = RoPE(4)
        >>> layer(mx.ones((1, 2, 4)), offset=3).shape
        (1, 2, 4)
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

    def _extra_repr(self) -> str:
        return f"dims={self.dims}, traditional={self.traditional}, base={self.base}, scale={self.scale}"

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        """Rotate ``x: [B, *, T, D]`` with positions starting at ``offset``."""
        # Fast path (decode): an int offset in range and a non-empty x go straight to MLX,
        # whose graph construction checks the dtype (floating), the rank and dims <= D
        # itself (mlx 0.32.4) and raises ValueError; that, and every other input, takes the
        # checked path below, which raises in this layer's words (see mlx_impl._fast_path:
        # the configuration is read as the layer's plan, one dict subscript, not through the
        # module's attribute hook; MLX's own dtype test saves ours, ~2 % at decode).
        try:
            if type(offset) is int and 0 <= offset <= _INT32_MAX and x.size:
                plan = self[PLAN]  # the configuration, made by the checked path (below)
                return mx.fast.rope(x, plan[0], traditional=plan[1], base=plan[2], scale=plan[3], offset=offset)
        except FAST_PATH_ERRORS:
            pass
        x = _check_input("RoPE", x, self.dims)
        checked = _check_offset("RoPE", offset, x.shape[0])
        if x.size == 0:  # mx.fast.rope on CUDA: "cudaGraphAddKernelNode ... invalid argument"
            return mx.zeros(x.shape, dtype=x.dtype)
        plan = self[PLAN] = (self.dims, self.traditional, self.base, self.scale)
        return mx.fast.rope(x, plan[0], traditional=plan[1], base=plan[2], scale=plan[3], offset=checked)
