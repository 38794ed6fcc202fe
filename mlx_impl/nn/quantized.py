"""``QuantizedLinear`` (Ollama ``nn.QuantizedLinear``): a projection whose weight is
stored packed by ``mx.quantize`` and multiplied by ``mx.quantized_matmul``.

The layer holds the packed ``weight`` (uint32), its ``scales``, the affine
zero-point ``biases`` (``None`` for the fp modes) and the optional layer ``bias``.
"""

from __future__ import annotations

import mlx.core as mx

from mlx_impl._errors import type_error, value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, PLAN, FastPathModule, item_of
from mlx_impl.quantization import (
    _empty_matmul,
    _quantized_matmul,
    check_quantized,
    guard_free,
    quantize,
)

_WHERE = "QuantizedLinear"
_FLOAT_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


class QuantizedLinear(FastPathModule):
    """Quantized projection ``y = quantized_matmul(x, W) + bias`` = ``x @ W.T + bias``.

    ``W`` is the dequantized weight ``[out, in]``; the call is
    ``mx.quantized_matmul(x, weight, scales, biases, transpose=True, group_size, bits,
    mode)`` followed by ``+ bias`` when a layer bias is present.

    Args:
        weight: packed uint32 ``[out, in * bits / 32]``.
        scales: ``[out, in / group_size]``; float32 / float16 / bfloat16 for affine,
            uint8 codes for nvfp4, mxfp4, mxfp8.
        biases: affine zero-point biases, shape and dtype of ``scales``; must be
            ``None`` for the fp modes.
        bias: optional layer bias ``[out]`` (float32, float16 or bfloat16).
        group_size, bits, mode: see ``mlx_impl.quantization.SUPPORTED_QUANTIZATION``.

    Shape:
        ``x: [..., in] -> [..., out]``. An empty ``x`` (a zero leading dim) gives the empty
        ``[..., out]`` result without calling ``mx.quantized_matmul``, whose 0.32.4 CPU
        kernel dies with SIGFPE on it.

    Dtypes:
        ``quantized_matmul`` gives the promotion of ``x`` and the scales (affine) or
        ``x``'s dtype (fp modes); adding ``bias`` promotes with its dtype. On the x86
        CPU back end float16 / bfloat16 accumulate in the input dtype.

    Raises:
        TypeError: wrong dtypes (packed weight not uint32, fp scales not uint8, x or
            bias not float32 / float16 / bfloat16).
        ValueError: an unsupported (group_size, bits, mode); a weight not 2-D; scales
            or biases of the wrong shape; biases given for an fp mode or missing for
            affine; a bias not ``[out]``; ``x`` whose last dim is not ``in``.

    Example:
        >>> import mlx.core as mx
        >>> layer = QuantizedLinear.from_float(mx.ones((8, 64)), group_size=64, bits=4)
        >>> layer(mx.ones((2, 64))).shape
        (2, 8)
    """

    def __init__(
        self,
        weight: mx.array,
        scales: mx.array,
        biases: mx.array | None = None,
        bias: mx.array | None = None,
        group_size: int = 64,
        bits: int = 4,
        mode: str = "affine",
    ) -> None:
        super().__init__()
        if isinstance(weight, mx.array) and weight.ndim != 2:
            raise value_error(
                _WHERE, f"weight must be 2-D [out, in * bits / 32] but got shape {weight.shape}."
            )
        check_quantized(_WHERE, weight, scales, biases, group_size, bits, mode)
        if bias is not None:
            if not isinstance(bias, mx.array):
                raise type_error(_WHERE, f"bias must be an mx.array but got {type(bias).__name__}.")
            if bias.dtype not in _FLOAT_DTYPES:
                raise type_error(
                    _WHERE, f"bias must be float32, float16 or bfloat16 but got {bias.dtype}."
                )
            if bias.shape != (weight.shape[0],):
                raise value_error(
                    _WHERE,
                    f"bias must have shape ({weight.shape[0]},) (one per output) but got {bias.shape}.",
                )
        self.group_size = group_size
        self.bits = bits
        self.mode = mode
        self.weight = weight
        self.scales = scales
        self.biases = biases
        self.bias = bias
        # Quantized parameters are not trainable (as in mlx.nn.QuantizedLinear).
        self.freeze()

    @classmethod
    def from_float(
        cls,
        weight: mx.array,
        bias: mx.array | None = None,
        group_size: int = 64,
        bits: int = 4,
        mode: str = "affine",
    ) -> QuantizedLinear:
        """Quantize a float ``weight [out, in]`` now and build the layer.

        The packed arrays are evaluated at once (``mx.eval``), so the float weight can be
        freed as soon as the caller drops it.

        Raises:
            ValueError: from ``mlx_impl.quantization.quantize`` (``[quantize] ...``) for
                an unsupported format or shape, a non-finite weight element, or an mxfp4 /
                mxfp8 group so tiny that MLX's E8M0 scale code would wrap; that check
                evaluates a reduction over the weight (offline, once per weight).
        """
        if isinstance(weight, mx.array) and weight.ndim != 2:
            raise value_error(_WHERE, f"weight must be 2-D [out, in] but got shape {weight.shape}.")
        wq, scales, biases = quantize(weight, group_size, bits, mode)
        mx.eval(wq, scales, *(() if biases is None else (biases,)))
        return cls(wq, scales, biases, bias, group_size, bits, mode)

    @property
    def output_dim(self) -> int:
        """Size of the output's last axis, ``weight.shape[0]`` (Go: ``OutputDim()``)."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """Size the input's last axis must have, ``weight.shape[1] * 32 / bits``."""
        return int(self.weight.shape[1] * 32 // self.bits)

    def _extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, output_dim={self.output_dim}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, bits={self.bits}, "
            f"mode={self.mode!r}"
        )

    def __call__(self, x: mx.array) -> mx.array:
        """Return ``quantized_matmul(x, weight) (+ bias)``; see the class docstring."""
        # The fast path (see mlx_impl._fast_path): the plan of the last checked call, made
        # only for an x that quantization.guard_free passes, holds while the four arrays are
        # the layer's and x has the same shape and dtype; anything else takes _checked_call.
        try:
            plan = self[PLAN]
            if (self["weight"] is plan[0] and self["scales"] is plan[1] and item_of(self, "biases") is plan[2]
                    and item_of(self, "bias") is plan[3] and x.shape == plan[4] and x.dtype == plan[5]):
                y = mx.quantized_matmul(x, plan[0], plan[1], plan[2], True, plan[6], plan[7], plan[8])
                return y if plan[3] is None else y + plan[3]
        except FAST_PATH_ERRORS:
            pass
        return self._checked_call(x)

    def _checked_call(self, x: object) -> mx.array:
        """Every check written out, in order (the first failing one raises its error)."""
        if not isinstance(x, mx.array) or x.dtype not in _FLOAT_DTYPES:
            raise type_error(
                _WHERE,
                f"x must be a float32, float16 or bfloat16 array but got {getattr(x, 'dtype', type(x).__name__)}.",
            )
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise value_error(
                _WHERE,
                f"input last dim must equal in_features {self.in_features} but got shape {x.shape}.",
            )
        if x.size == 0:
            # mx.quantized_matmul 0.32.4 (CPU) dies with SIGFPE on an empty batch (any zero
            # leading dim, every mode): return the empty [..., out] result without it.
            y = _empty_matmul(
                x, self.weight, self.scales, True, self.bits, self.mode, tuple(x.shape[:-2])
            )
            return y if self.bias is None else y + self.bias
        # float16 on CUDA goes through float32 (see quantization._quantized_matmul).
        weight, scales, biases, bias = self.weight, self.scales, self.biases, self.bias
        group_size, bits, mode = self.group_size, self.bits, self.mode
        y = _quantized_matmul(x, weight, scales, biases, True, group_size, bits, mode)
        if guard_free(x.shape, x.dtype, group_size):
            # The four arrays (identity-tested), x's shape and dtype, the configuration.
            self[PLAN] = (weight, scales, biases, bias, x.shape, x.dtype, group_size, bits, mode)
        return y if bias is None else y + bias
