"""Float projections ``Linear`` and ``MultiLinear``: PyTorch twin of ``mlx_impl.nn.linear``.

``precision="native"`` reproduces MLX's rounding points (mlx 0.32.4, measured):

- float16 / bfloat16: the product accumulates in float32, the bias (``mx.addmm``'s ``c``)
  is added in float32, and the result is rounded ONCE to the output dtype. The twin widens
  to float32, computes there and rounds once. (Rounding the product first and then adding
  the bias in half precision disagrees with MLX on 10-20% of outputs.)
- float32 / float64: the product is rounded, then the bias is added (two roundings).

Only the summation order inside the dot products differs from MLX (BLAS blocking), so
float32 results agree to within the classic ``gamma_K`` bound and half-precision results
to within one output ulp (tests/test_linear.py states both bounds).

``precision="float64"`` is the oracle: everything widened to float64, float64 out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision, to_working

if TYPE_CHECKING:
    from torch_reference.nn.quantized import QuantizedLinear

FLOAT64_BLOCK_ELEMENTS = 1 << 24
"""Weight elements the float64 oracle widens at once (128 MiB): larger weights go in blocks of
output rows (:meth:`Linear._float64_by_blocks`)."""

# The floating dtypes MLX has; torch's float8 types have no MLX counterpart and are rejected.
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _require_tensor(where: str, name: str, value: object) -> torch.Tensor:
    """Return ``value`` if it is a ``torch.Tensor``; raise ``TypeError`` otherwise."""
    if not isinstance(value, torch.Tensor):
        raise type_error(where, f"{name} must be a torch.Tensor but got {type(value).__name__}.")
    return value


def _require_floating(where: str, name: str, value: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``value`` is float16, bfloat16, float32 or float64."""
    if value.dtype not in FLOATING_DTYPES:
        raise type_error(
            where,
            f"{name} must have a floating dtype but got {value.dtype} (shape {tuple(value.shape)}).",
        )


def _as_parameter(t: torch.Tensor) -> torch.nn.Parameter:
    """Wrap a floating weight as a frozen parameter (inference only: no autograd)."""
    return torch.nn.Parameter(t.detach(), requires_grad=False)


def _matmul_like_mlx(
    x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``x @ weight_t (+ bias)`` with MLX's rounding points for the promoted dtype."""
    out_dtype = torch.promote_types(x.dtype, weight_t.dtype)
    if bias is not None:
        out_dtype = torch.promote_types(out_dtype, bias.dtype)
    if x.shape[-1] == 0:
        # Every dot product is an empty sum (zero): the result is the bias itself broadcast
        # (exactly, -0.0 included, as MLX's addmm gives) or zeros; see mlx_impl's _empty_sum.
        shape = (*x.shape[:-1], weight_t.shape[-1])
        if bias is None:
            return torch.zeros(shape, dtype=out_dtype)
        # A copy, not an expanded view: the caller must not be able to write into the bias.
        return bias.to(out_dtype).expand(shape).clone(memory_format=torch.contiguous_format)
    # Half precision: float32 accumulation and bias add, one rounding at the end (as MLX).
    # Every promotion between these dtypes widens exactly, so casting first loses nothing.
    compute = torch.float32 if out_dtype in _HALF_DTYPES else out_dtype
    y = x.to(compute) @ weight_t.to(compute)
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(out_dtype)


class Linear(torch.nn.Module):
    """Affine projection ``y = x @ weight.T + bias`` (Ollama ``nn.Linear``), reproducing
    MLX's fused ``mx.addmm(bias, x, weight.T, alpha=1, beta=1)``.

    Args:
        weight: ``[out, in]`` floating tensor (stored as a frozen ``Parameter``).
        bias: optional ``[out]`` floating tensor; ``None`` means no bias (``self.bias`` is
            then ``None``).

    Shape:
        ``x: [..., in]`` (rank >= 1) ``-> [..., out]``; a 1-D ``x: [in]`` gives ``[out]``.
        Zero-size dims are supported, as in MLX: an empty batch gives an empty result,
        ``out == 0`` gives ``[..., 0]``, and ``in == 0`` (empty sums) gives ``bias``
        broadcast to ``[..., out]`` (zeros without a bias).

    Dtypes:
        ``precision="native"``: output dtype is the promotion of ``x``, ``weight`` and
        ``bias`` (float16 with bfloat16 gives float32, as in MLX); float16/bfloat16 compute
        in float32 and round once (module docstring). ``precision="float64"``: float64.

    Raises:
        TypeError: a non-tensor or non-floating ``weight``, ``bias`` or ``x``.
        ValueError: ``weight`` not 2-D, ``bias`` not ``[out]``, ``x`` of rank 0 or with a
            last dimension other than ``in``; an unknown ``precision``.

    Example:
        >>> import torch
        >>> layer = Linear(torch.tensor([[1.0, 2, 3], [4, 5, 6]]), torch.tensor([10.0, 20]))
        >>> layer(torch.tensor([1.0, 1, 1]))
        tensor([16., 35.])
    """

    bias: torch.nn.Parameter | None

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        weight = _require_tensor("Linear", "weight", weight)
        if weight.ndim != 2:
            raise value_error(
                "Linear", f"weight must be 2-D [out, in] but got shape {tuple(weight.shape)}."
            )
        _require_floating("Linear", "weight", weight)
        if bias is not None:
            bias = _require_tensor("Linear", "bias", bias)
            if bias.ndim != 1 or bias.shape[0] != weight.shape[0]:
                raise value_error(
                    "Linear",
                    f"bias must have shape ({weight.shape[0]},) to match weight "
                    f"{tuple(weight.shape)} but got {tuple(bias.shape)}.",
                )
            _require_floating("Linear", "bias", bias)
        self.weight = _as_parameter(weight)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = _as_parameter(bias)

    @property
    def output_dim(self) -> int:
        """Size of the output's last axis, ``weight.shape[0]`` (Go: ``OutputDim()``)."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """Size the input's last axis must have, ``weight.shape[1]``."""
        return int(self.weight.shape[1])

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Return ``x @ weight.T (+ bias)``; see the class docstring for shapes and dtypes."""
        check_precision("Linear", precision)
        x = _require_tensor("Linear", "x", x)
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
                f"(x shape {tuple(x.shape)}).",
            )
        if precision == "float64" and self.weight.numel() > FLOAT64_BLOCK_ELEMENTS:
            return self._float64_by_blocks(x)
        x_w = to_working(x, precision)
        weight = to_working(self.weight, precision)
        bias = to_working(self.bias, precision)
        assert x_w is not None and weight is not None  # to_working keeps non-None inputs
        return _matmul_like_mlx(x_w, weight.T, bias)

    def _float64_by_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The float64 oracle widening a block of output rows at a time: a whole widened
        weight would be a transient 8 bytes a weight (2.1 GB for a 128k-vocabulary head of
        width 2048, more than a side's whole budget on a small machine). Every output is
        the same float64 dot product."""
        x64 = x.to(torch.float64)
        rows = max(1, FLOAT64_BLOCK_ELEMENTS // self.in_features)
        out = self.output_dim
        y = torch.empty((*x.shape[:-1], out), dtype=torch.float64, device=x.device)
        for start in range(0, out, rows):
            stop = min(start + rows, out)
            y[..., start:stop] = x64 @ self.weight[start:stop].to(torch.float64).T
        return y if self.bias is None else y + self.bias.to(torch.float64)

    def to_quantized(
        self, group_size: int = 64, bits: int = 4, mode: str = "affine"
    ) -> QuantizedLinear:
        """Quantize the weight now and return a ``QuantizedLinear`` that keeps the bias.

        Equivalent to ``QuantizedLinear.from_float(self.weight, self.bias, group_size, bits,
        mode)``; that constructor validates ``group_size``/``bits``/``mode``.
        """
        # Imported here so that `linear` and `quantized` never form an import cycle.
        from torch_reference.nn.quantized import QuantizedLinear

        bias = None if self.bias is None else self.bias.detach()
        return QuantizedLinear.from_float(self.weight.detach(), bias, group_size, bits, mode)


class MultiLinear(torch.nn.Module):
    """Per-head projection ``y[b, h] = x[b, h] @ weight[h].T`` (Ollama ``nn.MultiLinear``),
    i.e. ``x @ weight.transpose(1, 2)`` broadcast over ``B``.

    Args:
        weight: ``[heads, out, in]`` floating tensor (a frozen ``Parameter``).

    Shape:
        ``x: [B, heads, L, in] -> [B, heads, L, out]``. Any of ``B``, ``heads``, ``L``,
        ``out`` may be 0 (empty result); ``in == 0`` gives zeros (empty sums).

    Dtypes:
        ``precision="native"``: promotion of ``x`` and ``weight``; float16/bfloat16 compute
        in float32 and round once, as MLX's CPU matmul. ``precision="float64"``: float64.

    Raises:
        TypeError: a non-tensor or non-floating ``weight`` or ``x``.
        ValueError: ``weight`` not 3-D; ``x`` not 4-D, or its heads or last axis not
            matching; an unknown ``precision``.

    Example:
        >>> import torch
        >>> MultiLinear(torch.ones(2, 5, 3))(torch.ones(1, 2, 4, 3)).shape
        torch.Size([1, 2, 4, 5])
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        weight = _require_tensor("MultiLinear", "weight", weight)
        if weight.ndim != 3:
            raise value_error(
                "MultiLinear",
                f"weight must be 3-D [heads, out, in] but got shape {tuple(weight.shape)}.",
            )
        _require_floating("MultiLinear", "weight", weight)
        self.weight = _as_parameter(weight)

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

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Return ``x @ weight.transpose(1, 2)``; see the class docstring."""
        check_precision("MultiLinear", precision)
        x = _require_tensor("MultiLinear", "x", x)
        _require_floating("MultiLinear", "x", x)
        if x.ndim != 4:
            raise value_error(
                "MultiLinear", f"x must be 4-D [B, heads, L, in] but got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.num_heads:
            raise value_error(
                "MultiLinear",
                f"x heads (axis 1) must equal {self.num_heads} but got {x.shape[1]} "
                f"(x shape {tuple(x.shape)}).",
            )
        if x.shape[-1] != self.in_features:
            raise value_error(
                "MultiLinear",
                f"input last dim must equal in_features {self.in_features} but got {x.shape[-1]} "
                f"(x shape {tuple(x.shape)}).",
            )
        x_w = to_working(x, precision)
        weight = to_working(self.weight, precision)
        assert x_w is not None and weight is not None
        return _matmul_like_mlx(x_w, weight.transpose(1, 2), None)
