"""The layer set's normalisations (Ollama ``x/imagegen/nn``): ``RMSNorm`` and ``LayerNorm``.

``RMSNorm`` is ``mx.fast.rms_norm`` with a stored eps (a call-time eps of 0 means "use the
stored one"). ``LayerNorm`` is COMPOSED of plain ops, not fused, exactly as Ollama's Go code
writes it, and so computes in x's dtype (measured on mlx 0.32.4, CPU back end):

* ``mean = R(R(sum(x)) * R(1/D))``: ``mx.mean`` of float16/bfloat16 accumulates the sum in
  float32 (sequentially along the axis), rounds it to x's dtype, then multiplies by ``1/D``
  rounded to x's dtype;
* ``centered = x - mean``, ``var = mean(centered * centered)``, each op rounded in x's dtype;
* ``rsqrt(var + eps)`` with ``eps`` cast to x's dtype (Go: a float32 scalar cast to x's
  dtype), ``rsqrt = R(1 / R(sqrt(.)))`` -- two roundings;
* ``normalized * weight (+ bias)`` with MLX's promotion.

The sums are written out (:func:`_composed_layer_norm`: float32 sum, rounded, times ``1/D``
rounded) so that every back end computes the CPU's ``mx.mean``: MLX's CUDA float16 sum accumulates in
float16 and overflows. ``torch_reference.nn.norms`` replays the same sequence with
PyTorch's own float32 sums.
"""

from __future__ import annotations

import functools
import math

import mlx.core as mx

from mlx_impl._dtypes import FLOATING_DTYPES
from mlx_impl._errors import value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, PLAN, CheckedItem, FastPathModule, item_of
from mlx_impl.fast.norms import (
    check_eps,
    check_vector,
    check_x,
    empty_norm_result,
    module_array,
)

_INF = math.inf

DEFAULT_LAYER_NORM_EPS = 1e-5
"""What ``nn.LayerNorm``'s ``eps=0`` means (Ollama: ``if eps == 0 { eps = 1e-5 }``)."""


_LAYER_NORM_CONSTANTS: dict[tuple[int, float, mx.Dtype], tuple[mx.array, mx.array]] = {}
"""``(D, stored eps, dtype)`` -> LayerNorm's ``(1/D, eps)`` in that dtype (:func:`_layer_norm_constants`),
shared by every layer; made only on the checked path, after ``check_x`` accepted x."""


def _layer_norm_constants(key: tuple[int, float, mx.Dtype]) -> tuple[mx.array, mx.array]:
    """``(1/D, eps)`` for ``key = (D, stored eps, dtype)``, each a float32 scalar cast to
    ``dtype`` (eps ``0`` meaning :data:`DEFAULT_LAYER_NORM_EPS`), evaluated once and kept:
    built per call they cost ~3 us at decode (two array creations and two casts in every
    graph), more than the layer's 5 % budget."""
    constants = _LAYER_NORM_CONSTANTS.get(key)
    if constants is not None:
        return constants
    d, eps, dtype = key
    if len(_LAYER_NORM_CONSTANTS) >= 256:  # a model has a handful of (D, eps, dtype)
        _LAYER_NORM_CONSTANTS.clear()
    constants = (mx.array(1.0 / d, dtype=mx.float32).astype(dtype),
                 mx.array(eps if eps != 0.0 else DEFAULT_LAYER_NORM_EPS, dtype=mx.float32).astype(dtype))
    mx.eval(*constants)
    _LAYER_NORM_CONSTANTS[key] = constants
    return constants


class RMSNorm(FastPathModule):
    """RMS normalisation with a stored eps (Ollama ``nn.RMSNorm``): ``layer(x, eps=0.0)``.

    ``y = R(x * rsqrt(mean(x^2, axis=-1) + eps)) * weight`` via ``mx.fast.rms_norm``
    (statistics in float32, ``R`` the rounding to the output dtype before the weight
    multiply). A call-time ``eps`` of ``0`` uses the stored ``eps``.

    Args:
        weight: ``[D]`` floating array (required).
        eps: stored eps, finite and ``>= 0`` (default ``1e-5``).

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        Output dtype is the promotion of x and weight.

    Raises:
        TypeError: non-array or non-floating weight/x; non-real eps.
        ValueError: weight not 1-D or of a length other than x's last dim; scalar x; a
            negative or non-finite eps (stored or given).

    Example:
        >>> import mlx.core as mx
        >>> RMSNorm(mx.full((4,), 2.0), eps=0.0)(mx.full((1, 4), 2.0))
        array([[2, 2, 2, 2]], dtype=float32)
    """

    eps = CheckedItem(functools.partial(check_eps, "RMSNorm"))
    """The stored eps (finite, ``>= 0``), a private item of the module's dict (see
    mlx_impl._fast_path): read per call without the module's attribute hook (~1 % at decode
    on the CPU)."""

    def __init__(self, weight: mx.array, eps: float = 1e-5) -> None:
        super().__init__()
        w = check_vector("RMSNorm", "weight", weight, required=True)
        assert w is not None  # required=True raised otherwise
        self.weight = w
        self.eps = eps

    def _extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

    def __call__(self, x: mx.array, eps: float = 0.0) -> mx.array:
        """Normalise ``x: [..., D]``; ``eps == 0`` means the stored eps."""
        try:  # the fast path: see mlx_impl._fast_path
            # (A None weight is not an item: KeyError, the checked path.)
            if type(eps) is float and 0.0 <= eps < _INF and x.dtype in FLOATING_DTYPES and x.size:
                return mx.fast.rms_norm(x, self["weight"], eps or self["_eps"])
        except FAST_PATH_ERRORS:
            pass
        given = check_eps("RMSNorm", eps)
        w = module_array(self, "weight")
        x = check_x("RMSNorm", x, ("weight", w))
        if x.size == 0:  # see empty_norm_result: SIGFPE / CUDA graph error / CPU hang
            return empty_norm_result(x, w)
        return mx.fast.rms_norm(x, w, given if given != 0.0 else self.eps)


class LayerNorm(FastPathModule):
    """Composed layer normalisation (Ollama ``nn.LayerNorm``): ``layer(x)``.

    ``mean = mean(x)``, ``centered = x - mean``, ``var = mean(centered^2)`` (biased),
    ``y = centered * rsqrt(var + eps) * weight (+ bias)``, all over the last axis and all
    plain MLX ops in x's dtype (not ``mx.fast.layer_norm``: no float32 statistics for half
    inputs). ``eps == 0`` means ``1e-5``.

    Args:
        weight: ``[D]`` floating array (required, as in the original).
        bias: ``[D]`` floating array or ``None``.
        eps: finite ``>= 0``; ``0`` (the default) means ``1e-5``.

    Shape:
        ``x: [..., D] -> [..., D]``.

    Dtypes:
        The statistics and the normalised value are in x's dtype (eps is cast to it); the
        output dtype is the promotion of x, weight and bias.

    Raises:
        TypeError: non-array or non-floating weight/bias/x; non-real eps.
        ValueError: weight/bias not 1-D, of different lengths, or of a length other than
            x's last dim; scalar x; a negative or non-finite eps.

    Example:
        >>> import mlx.core as mx
        >>> LayerNorm(mx.ones((3,)))(mx.array([[1.0, 2.0, 3.0]])).shape
        (1, 3)
    """

    eps = CheckedItem(functools.partial(check_eps, "LayerNorm"))
    """The stored eps (finite, ``>= 0``; ``0`` means ``1e-5``), a private item of the
    module's dict (see mlx_impl._fast_path); setting it drops the plan made from the old one."""

    def __init__(self, weight: mx.array, bias: mx.array | None = None, eps: float = 0.0) -> None:
        super().__init__()
        w = check_vector("LayerNorm", "weight", weight, required=True)
        b = check_vector("LayerNorm", "bias", bias)
        assert w is not None  # required=True raised otherwise
        if b is not None and b.shape != w.shape:
            raise value_error(
                "LayerNorm",
                f"weight and bias must have the same shape but got {tuple(w.shape)} and {tuple(b.shape)}.",
            )
        self.weight = w
        self.bias = b
        self.eps = eps

    def _extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"

    def __call__(self, x: mx.array) -> mx.array:
        """Normalise ``x: [..., D]`` with plain ops in x's dtype."""
        try:  # the fast path: see mlx_impl._fast_path
            # The plan of the last checked call (below): its weight and bias (identity is
            # the test: a replaced one is not an item of the plan), x's last dim and dtype
            # (a floating one: check_x accepted it), and the constants. A hit needs one
            # dtype compare and no width or key reads (~1 % each at decode on the CPU).
            plan = self[PLAN]  # KeyError before the first call: the checked path
            if (self["weight"] is plan[0] and item_of(self, "bias") is plan[1] and x.shape[-1] == plan[2]
                    and x.dtype == plan[3] and x.size):
                return _composed_layer_norm(x, plan[0], plan[1], plan[3], plan[4])
        except FAST_PATH_ERRORS:
            pass
        w, b = module_array(self, "weight"), module_array(self, "bias")
        x = check_x("LayerNorm", x, ("weight", w), ("bias", b))
        if x.size == 0:  # MLX's CPU sum over an empty last axis can spin forever
            return empty_norm_result(x, w, b)
        key = (x.shape[-1], self.eps, x.dtype)
        constants = _layer_norm_constants(key)
        self[PLAN] = (w, b, key[0], key[2], constants)  # weight, bias, x's last dim and dtype, (1/D, eps)
        return _composed_layer_norm(x, w, b, key[2], constants)


def _composed_layer_norm(x: mx.array, w: mx.array, b: mx.array | None, dtype: mx.Dtype,
                         constants: tuple[mx.array, mx.array]) -> mx.array:
    """The composed layer norm of a checked ``x: [..., D]`` of the floating ``dtype``, with
    the ``[D]`` weight and (``None``: no) bias, and ``constants = (1/D, eps)`` in ``dtype``
    (:func:`_layer_norm_constants`).

    Both means are ``mx.mean(., axis=-1, keepdims=True)`` as MLX's CPU back end computes it
    for every dtype, written out: the sum accumulated in float32, rounded to x's dtype,
    times ``1/D`` rounded to x's dtype. MLX 0.32.4's CUDA sum of float16 accumulates in
    float16 and overflows to inf / NaN where the float32 sum (and the float64 oracle) is
    finite (measured on an H200: x [2, 3, 3] float16 of magnitude ~5e4 gave a NaN LayerNorm
    where the oracle is finite; reports/conformance/cuda-h200-triage/TRIAGE.md). Same bits
    as ``mx.mean`` on the CPU (tests/test_backends.py)."""
    inv_d, eps = constants
    f32 = mx.float32
    mean = mx.sum(x.astype(f32), axis=-1, keepdims=True).astype(dtype) * inv_d
    centered = x - mean
    squares = centered * centered
    variance = mx.sum(squares.astype(f32), axis=-1, keepdims=True).astype(dtype) * inv_d
    out = centered * mx.rsqrt(variance + eps) * w
    return out if b is None else out + b
