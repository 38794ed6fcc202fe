"""Fused normalisations over ``mx.fast``: ``rms_norm``, ``layer_norm`` and their layers.

Behaviour measured on mlx 0.32.4, CPU back end (``torch_reference.fast.norms`` keeps these
rounding points with PyTorch's own float32 sums, so it agrees up to the summation order):

* RMS norm: ``y = R(x32 * rsqrt(mean(x32^2) + eps)) * w``; layer norm:
  ``y = R((x32 - mean) * rsqrt(var + eps)) * w + b`` with the biased variance
  ``mean((x32 - mean)^2)``. ``x32`` is x in float32; the statistics are float32; ``R``
  rounds the normalised value to the output dtype BEFORE the weight multiply and the bias
  add, which are then done (and rounded) in the output dtype. (PyTorch's ``F.rms_norm`` /
  ``F.layer_norm`` round once at the end instead: about one output ulp apart in half
  precision.)
* The float32 sums run sequentially along the last axis on the CPU (in parallel on GPUs);
  ``mean = sum * float32(1/D)``;
  ``rsqrt(v) = 1 / sqrt(v)`` with both steps rounded to float32.
* Output dtype (measured over every x/weight/bias dtype combination): RMS norm, the
  promotion of x and weight (x's dtype without a weight); layer norm WITH a weight, the
  promotion of x, weight and bias; layer norm WITHOUT a weight, x's dtype whatever the
  bias dtype (``mx.fast.layer_norm`` then casts the bias to x's dtype and adds in it: a
  bfloat16 x with a float32 bias gives bfloat16). weight/bias are cast to the output
  dtype first.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import mlx.core as mx
import mlx.nn

from mlx_impl._dtypes import FLOATING_DTYPES
from mlx_impl._errors import type_error, value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, item_of

_INF = math.inf


def module_array(module: mlx.nn.Module, name: str) -> Any:
    """``getattr(module, name)`` for a layer's weight/bias, without ``mlx.nn.Module.__getattr__``.

    An ``mx.array`` attribute lives in the module's dict, so plain attribute lookup misses
    and falls back to ``Module.__getattr__`` (about 0.5 us, several times per call: 5-10 %
    of a decode-size norm on the CPU). This resolves it in the same order as Python's
    lookup: the instance ``__dict__`` first (a ``None`` bias is stored there), then the
    module's items. Typed ``Any`` as ``getattr`` is: the caller knows what it stored."""
    own = vars(module)
    if name in own:
        return own[name]
    return module[name] if name in module else getattr(module, name)


def check_eps(where: str, eps: object) -> float:
    """Return ``eps`` as a float if it is a finite real ``>= 0``; raise otherwise."""
    if type(eps) is float and 0.0 <= eps < math.inf:
        return eps  # the common case, without the numbers.Real ABC check (NaN fails 0 <= eps)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise type_error(where, f"eps must be a real number but got {type(eps).__name__}.")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise value_error(where, f"eps must be finite and >= 0 but got {value}.")
    return value


def check_vector(where: str, name: str, t: object, required: bool = False) -> mx.array | None:
    """Validate an optional 1-D floating ``weight``/``bias`` array (length checked per call)."""
    if t is None:
        if required:
            raise type_error(where, f"{name} must be an mx.array but got None.")
        return None
    if not isinstance(t, mx.array):
        raise type_error(where, f"{name} must be an mx.array or None but got {type(t).__name__}.")
    if t.ndim != 1:
        raise value_error(where, f"{name} must be 1-D [D] but got shape {tuple(t.shape)}.")
    if not mx.issubdtype(t.dtype, mx.floating):
        raise type_error(where, f"{name} must have a floating dtype but got {t.dtype}.")
    return t


def check_x(where: str, x: object, *vectors: tuple[str, mx.array | None]) -> mx.array:
    """Validate ``x: [..., D]`` (floating, rank >= 1) against the ``[D]`` weight/bias."""
    if not isinstance(x, mx.array):
        raise type_error(where, f"x must be an mx.array but got {type(x).__name__}.")
    if not mx.issubdtype(x.dtype, mx.floating):
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


def empty_norm_result(x: mx.array, weight: mx.array | None, bias: mx.array | None = None) -> mx.array:
    """The (empty) result of a normalisation of an empty ``x: [..., D]`` (a zero row count
    or ``D == 0``), in MLX's output dtype (x's without a weight; else the promotion of x,
    weight and bias), built without the kernel: on MLX 0.32.4 ``mx.fast.rms_norm`` /
    ``layer_norm`` die with SIGFPE on CUDA for D = 0, the CUDA graph refuses a zero-row
    launch ("cudaGraphAddKernelNode ... invalid argument"), and MLX's CPU sum over an empty
    last axis can spin forever."""
    dtype = x.dtype
    if weight is not None:
        dtype = mx.result_type(x, weight) if bias is None else mx.result_type(x, weight, bias)
    return mx.zeros(x.shape, dtype=dtype)


def rms_norm(x: mx.array, weight: mx.array | None, eps: float) -> mx.array:
    """RMS normalisation over the last axis (``mx.fast.rms_norm``).

    ``y = R(x * rsqrt(mean(x^2, axis=-1) + eps)) * weight``, statistics in float32, ``R``
    the rounding to the output dtype.

    Args:
        x: floating array ``[..., D]``.
        weight: ``[D]`` floating array, or ``None`` for no scaling.
        eps: finite ``>= 0`` added to the mean square.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Output dtype is the promotion of x and weight.

    Raises:
        TypeError: non-array or non-floating x/weight; non-real eps.
        ValueError: scalar x; weight not 1-D or of a length other than D; eps negative or
            not finite.

    Example:
        >>> import mlx.core as mx
        >>> rms_norm(mx.full((1, 4), 2.0), mx.full((4,), 2.0), 0.0)
        array([[2, 2, 2, 2]], dtype=float32)
    """
    eps_value = check_eps("rms_norm", eps)
    w = check_vector("rms_norm", "weight", weight)
    x = check_x("rms_norm", x, ("weight", w))
    if x.size == 0:
        return empty_norm_result(x, w)
    return mx.fast.rms_norm(x, w, eps_value)


def layer_norm(x: mx.array, weight: mx.array | None, bias: mx.array | None, eps: float) -> mx.array:
    """Layer normalisation over the last axis (``mx.fast.layer_norm``, fused).

    ``y = R((x - mean) * rsqrt(var + eps)) * weight + bias`` with the biased variance,
    statistics in float32, ``R`` the rounding to the output dtype.

    Args:
        x: floating array ``[..., D]``.
        weight: ``[D]`` floating array or ``None`` (no scaling).
        bias: ``[D]`` floating array or ``None`` (no shift).
        eps: finite ``>= 0`` added to the variance.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        With a weight: the promotion of x, weight and bias. Without a weight: x's dtype,
        whatever the bias dtype (the bias is cast to it before it is added).

    Raises:
        TypeError: non-array or non-floating x/weight/bias; non-real eps.
        ValueError: scalar x; weight/bias not 1-D or of a length other than D; eps negative
            or not finite.

    Example:
        >>> import mlx.core as mx
        >>> layer_norm(mx.array([[1.0, 2.0, 3.0]]), None, None, 0.0)
        array([[-1.22474, 0, 1.22474]], dtype=float32)
    """
    eps_value = check_eps("layer_norm", eps)
    w = check_vector("layer_norm", "weight", weight)
    b = check_vector("layer_norm", "bias", bias)
    x = check_x("layer_norm", x, ("weight", w), ("bias", b))
    if x.size == 0:
        return empty_norm_result(x, w, b)
    return mx.fast.layer_norm(x, w, b, eps_value)


class RMSNorm(mlx.nn.Module):
    """RMS normalisation layer over ``mx.fast.rms_norm`` (Ollama ``fast.RMSNorm``).

    ``layer(x, eps)``: see :func:`rms_norm` for the formula, dtypes and errors.

    Args:
        weight: ``[D]`` floating array, or ``None`` for no scaling.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Example:
        >>> import mlx.core as mx
        >>> RMSNorm(mx.ones((4,)))(mx.full((1, 4), 2.0), 1e-5).shape
        (1, 4)
    """

    def __init__(self, weight: mx.array | None) -> None:
        super().__init__()
        self.weight = check_vector("RMSNorm", "weight", weight)

    def __call__(self, x: mx.array, eps: float) -> mx.array:
        """Normalise ``x: [..., D]`` with ``eps`` (finite, ``>= 0``)."""
        try:  # the fast path: see mlx_impl._fast_path
            if type(eps) is float and 0.0 <= eps < _INF and x.dtype in FLOATING_DTYPES and x.size:
                w = item_of(self, "weight")
                if w is not None:
                    return mx.fast.rms_norm(x, w, eps)
        except FAST_PATH_ERRORS:
            pass
        eps_value = check_eps("RMSNorm", eps)
        w = module_array(self, "weight")
        x = check_x("RMSNorm", x, ("weight", w))
        if x.size == 0:
            return empty_norm_result(x, w)
        return mx.fast.rms_norm(x, w, eps_value)


class LayerNorm(mlx.nn.Module):
    """Fused layer normalisation over ``mx.fast.layer_norm`` (Ollama ``fast.LayerNorm``).

    ``layer(x, eps)``: see :func:`layer_norm` for the formula, dtypes and errors.

    Args:
        weight: ``[D]`` floating array or ``None``.
        bias: ``[D]`` floating array or ``None``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Example:
        >>> import mlx.core as mx
        >>> LayerNorm(None, None)(mx.array([[1.0, 2.0, 3.0]]), 0.0).shape
        (1, 3)
    """

    def __init__(self, weight: mx.array | None, bias: mx.array | None) -> None:
        super().__init__()
        w = check_vector("LayerNorm", "weight", weight)
        b = check_vector("LayerNorm", "bias", bias)
        if w is not None and b is not None and w.shape != b.shape:
            raise value_error(
                "LayerNorm",
                f"weight and bias must have the same shape but got {tuple(w.shape)} and {tuple(b.shape)}.",
            )
        self.weight = w
        self.bias = b

    def __call__(self, x: mx.array, eps: float) -> mx.array:
        """Normalise ``x: [..., D]`` with ``eps`` (finite, ``>= 0``)."""
        try:  # the fast path (weight and bias both arrays): see mlx_impl._fast_path
            if type(eps) is float and 0.0 <= eps < _INF and x.dtype in FLOATING_DTYPES and x.size:
                w, b = item_of(self, "weight"), item_of(self, "bias")
                if w is not None and b is not None:
                    return mx.fast.layer_norm(x, w, b, eps)
        except FAST_PATH_ERRORS:
            pass
        eps_value = check_eps("LayerNorm", eps)
        w, b = module_array(self, "weight"), module_array(self, "bias")
        x = check_x("LayerNorm", x, ("weight", w), ("bias", b))
        if x.size == 0:
            return empty_norm_result(x, w, b)
        return mx.fast.layer_norm(x, w, b, eps_value)
