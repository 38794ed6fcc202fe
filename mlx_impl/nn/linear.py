"""Float projections: ``Linear`` (``y = x @ W.T + b``) and ``MultiLinear`` (one weight per head).

Weights are stored as PyTorch and MLX store them, ``[out, in]``, so the layers multiply by
the transpose. Numerics measured on mlx 0.32.4 (CPU back end): a float16/bfloat16 matmul
accumulates in float32 and rounds once to the output dtype, and ``mx.addmm`` with a bias
adds the bias in float32 BEFORE that single rounding (it does not round the product first).
``torch_reference.nn.linear`` reproduces exactly these rounding points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlx.core as mx
import mlx.nn

from mlx_impl._dtypes import FLOATING_DTYPES
from mlx_impl._errors import type_error, value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, PLAN, FastPathModule, item_of

if TYPE_CHECKING:
    from mlx_impl.nn.quantized import QuantizedLinear


def _require_array(where: str, name: str, value: object) -> mx.array:
    """Return ``value`` if it is an ``mx.array``; raise ``TypeError`` otherwise."""
    if not isinstance(value, mx.array):
        raise type_error(where, f"{name} must be an mx.array but got {type(value).__name__}.")
    return value


def _require_floating(where: str, name: str, value: mx.array) -> None:
    """Raise ``TypeError`` unless ``value`` has a real floating dtype (f16, bf16, f32, f64)."""
    if not mx.issubdtype(value.dtype, mx.floating):
        raise type_error(
            where, f"{name} must have a floating dtype but got {value.dtype} (shape {value.shape})."
        )


def _empty_sum(x: mx.array, weight: mx.array, bias: mx.array | None) -> mx.array:
    """``x @ weight.T (+ bias)`` when ``in_features == 0``: every dot product is empty.

    An empty sum is zero, so the result is ``bias`` broadcast to ``[..., out]`` (exactly,
    ``-0.0`` included, as ``mx.addmm`` gives for a 2-D ``x``), or zeros without a bias, in
    the promoted dtype. Built here because ``mx.addmm`` (mlx 0.32.4) reshapes an ``x`` of
    rank >= 3 to ``[-1, 0]`` and fails with "[reshape] Cannot infer the shape of an empty
    array".
    """
    out_dtype = mx.result_type(x, weight)
    shape = (*x.shape[:-1], weight.shape[0])
    if bias is None:
        return mx.zeros(shape, dtype=out_dtype)
    out_dtype = mx.result_type(out_dtype, bias)
    # Every promotion between floating dtypes widens exactly, so the cast keeps the values.
    return mx.broadcast_to(bias.astype(out_dtype), shape)


class Linear(mlx.nn.Module):
    """Affine projection ``y = x @ weight.T + bias`` (Ollama ``nn.Linear``).

    With a bias the layer is ONE fused ``mx.addmm(bias, x, weight.T, alpha=1, beta=1)``,
    as in the original; without a bias it is a plain ``x @ weight.T``.

    Args:
        weight: ``[out, in]`` floating array.
        bias: optional ``[out]`` floating array; ``None`` means no bias (``self.bias`` is
            then ``None``).

    Shape:
        ``x: [..., in]`` (rank >= 1) ``-> [..., out]``; a 1-D ``x: [in]`` gives ``[out]``.
        Zero-size dims are supported: an empty batch gives an empty ``[..., out]`` result,
        ``out == 0`` gives ``[..., 0]``, and ``in == 0`` (every dot product an empty sum)
        gives ``bias`` broadcast to ``[..., out]`` (zeros without a bias).

    Dtypes:
        The output dtype is MLX's promotion of ``x``, ``weight`` and ``bias`` (for example
        float16 with bfloat16 gives float32; every such promotion widens exactly). On the CPU
        back end float16/bfloat16 products accumulate in float32, the bias is added in
        float32, and the result is rounded ONCE to the output dtype. float32 rounds the
        product, then the sum with the bias. float64 works on the CPU back end only
        (MLX's GPU back ends have no float64).

    Raises:
        TypeError: a non-array or non-floating ``weight``, ``bias`` or ``x``.
        ValueError: ``weight`` not 2-D, ``bias`` not ``[out]``, ``x`` of rank 0 or with a
            last dimension other than ``in``.

    Example:
        >>> import mlx.core as mx
        >>> layer = Linear(mx.array([[1.0, 2, 3], [4, 5, 6]]), mx.array([10.0, 20]))
        >>> layer(mx.array([1.0, 1, 1]))
        array([16, 35], dtype=float32)
    """

    def __init__(self, weight: mx.array, bias: mx.array | None = None) -> None:
        super().__init__()
        weight = _require_array("Linear", "weight", weight)
        if weight.ndim != 2:
            raise value_error(
                "Linear", f"weight must be 2-D [out, in] but got shape {weight.shape}."
            )
        _require_floating("Linear", "weight", weight)
        if bias is not None:
            bias = _require_array("Linear", "bias", bias)
            if bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
                raise value_error(
                    "Linear",
                    f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape} "
                    f"but got {bias.shape}.",
                )
            _require_floating("Linear", "bias", bias)
        self.weight = weight
        self.bias = bias

    @property
    def output_dim(self) -> int:
        """Size of the output's last axis, ``weight.shape[0]`` (Go: ``OutputDim()``)."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """Size the input's last axis must have, ``weight.shape[1]``."""
        return int(self.weight.shape[1])

    def __call__(self, x: mx.array) -> mx.array:
        """Return ``x @ weight.T (+ bias)``; see the class docstring for shapes and dtypes."""
        # The happy path first (see mlx_impl._fast_path): a floating, non-empty x whose last
        # dim matches the weight's goes straight to MLX; anything else takes _checked_call,
        # whose checks and errors are the original ones.
        if isinstance(x, mx.array):
            weight = item_of(self, "weight")
            shape = x.shape
            if (weight is not None and shape and x.dtype in FLOATING_DTYPES and shape[-1] == weight.shape[1]
                    and x.size != 0):
                bias = item_of(self, "bias")  # None: no bias (it lives in the instance dict)
                if bias is None:
                    return x @ weight.T
                return mx.addmm(bias, x, weight.T, alpha=1.0, beta=1.0)
        return self._checked_call(x)

    def _checked_call(self, x: object) -> mx.array:
        """Every check written out, in order (the first failing one raises its error)."""
        x = _require_array("Linear", "x", x)
        _require_floating("Linear", "x", x)
        if x.ndim == 0:
            raise value_error(
                "Linear",
                f"x must have at least 1 dimension [..., {self.in_features}] but got a scalar.",
            )
        if x.shape[-1] != self.in_features:
            raise value_error(
                "Linear",
                f"input last dim must equal in_features {self.in_features} but got {x.shape[-1]} "
                f"(x shape {x.shape}).",
            )
        if self.in_features == 0:
            return _empty_sum(x, self.weight, self.bias)
        if x.size == 0:
            # An empty batch: mx.addmm (mlx 0.32.4) dies with SIGFPE on CUDA, even in float32
            # (the process exits 136), so the empty [..., out] result is built without it.
            out_dtype = mx.result_type(x, self.weight)
            if self.bias is not None:
                out_dtype = mx.result_type(out_dtype, self.bias)
            return mx.zeros((*x.shape[:-1], self.weight.shape[0]), dtype=out_dtype)
        if self.bias is None:
            return x @ self.weight.T
        # mx.addmm broadcasts a batched `x` itself: verified on mlx 0.32.4 for x of rank 1
        # ([in] -> [out]), 2, 3 and 4, so no reshape to 2-D is needed (torch.addmm, by
        # contrast, takes 2-D only).
        return mx.addmm(self.bias, x, self.weight.T, alpha=1.0, beta=1.0)

    def to_quantized(
        self, group_size: int = 64, bits: int = 4, mode: str = "affine"
    ) -> QuantizedLinear:
        """Quantize the weight now and return a ``QuantizedLinear`` that keeps the bias.

        Equivalent to ``QuantizedLinear.from_float(self.weight, self.bias, group_size, bits,
        mode)``; that constructor validates ``group_size``/``bits``/``mode``.
        """
        # Imported here, not at module top, so that `linear` and `quantized` can import each
        # other's module without a cycle at package import time.
        from mlx_impl.nn.quantized import QuantizedLinear

        return QuantizedLinear.from_float(self.weight, self.bias, group_size, bits, mode)


class MultiLinear(FastPathModule):
    """Per-head projection ``y[b, h] = x[b, h] @ weight[h].T`` (Ollama ``nn.MultiLinear``).

    Computed as ``x @ weight.transpose(0, 2, 1)``, a batched matmul broadcasting over ``B``.

    Args:
        weight: ``[heads, out, in]`` floating array.

    Shape:
        ``x: [B, heads, L, in] -> [B, heads, L, out]``. Any of ``B``, ``heads``, ``L``,
        ``out`` may be 0 (empty result); ``in == 0`` gives zeros (empty sums).

    Dtypes:
        Output dtype is the promotion of ``x`` and ``weight``; float16/bfloat16 accumulate in
        float32 and round once (CPU back end, mlx 0.32.4).

    Raises:
        TypeError: a non-array or non-floating ``weight`` or ``x``.
        ValueError: ``weight`` not 3-D; ``x`` not 4-D, or its heads or last axis not matching.

    Example:
        >>> import mlx.core as mx
        >>> MultiLinear(mx.ones((2, 5, 3)))(mx.ones((1, 2, 4, 3))).shape
        (1, 2, 4, 5)
    """

    def __init__(self, weight: mx.array) -> None:
        super().__init__()
        weight = _require_array("MultiLinear", "weight", weight)
        if weight.ndim != 3:
            raise value_error(
                "MultiLinear", f"weight must be 3-D [heads, out, in] but got shape {weight.shape}."
            )
        _require_floating("MultiLinear", "weight", weight)
        self.weight = weight

    @property
    def num_heads(self) -> int:
        """Number of heads, ``weight.shape[0]``."""
        return int(self.weight.shape[0])

    @property
    def out_features(self) -> int:
        """Per-head output size, ``weight.shape[1]``."""
        return int(self.weight.shape[1])

    @property
    def in_features(self) -> int:
        """Per-head input size, ``weight.shape[2]``."""
        return int(self.weight.shape[2])

    def __call__(self, x: mx.array) -> mx.array:
        """Return ``x @ weight.transpose(0, 2, 1)``; see the class docstring."""
        # Fast path (see mlx_impl._fast_path): the plan of the last checked call holds while
        # the weight is the layer's and x has the same shape (4-D, its heads and last dim
        # checked: matmul would broadcast a single head silently) and floating dtype.
        try:
            plan = self[PLAN]
            if self["weight"] is plan[0] and x.shape == plan[1] and x.dtype == plan[2]:
                return x @ plan[0].transpose(0, 2, 1)
        except FAST_PATH_ERRORS:
            pass
        x = _require_array("MultiLinear", "x", x)
        _require_floating("MultiLinear", "x", x)
        if x.ndim != 4:
            raise value_error(
                "MultiLinear", f"x must be 4-D [B, heads, L, in] but got shape {x.shape}."
            )
        if x.shape[1] != self.num_heads:
            raise value_error(
                "MultiLinear",
                f"x heads (axis 1) must equal {self.num_heads} but got {x.shape[1]} (x shape {x.shape}).",
            )
        if x.shape[-1] != self.in_features:
            raise value_error(
                "MultiLinear",
                f"input last dim must equal in_features {self.in_features} but got {x.shape[-1]} "
                f"(x shape {x.shape}).",
            )
        weight = self.weight
        self[PLAN] = (weight, x.shape, x.dtype)  # weight, x's shape and (floating) dtype
        return x @ weight.transpose(0, 2, 1)
