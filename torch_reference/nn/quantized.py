"""``QuantizedLinear``: PyTorch twin of ``mlx_impl.nn.quantized``.

Holds MLX's packed format (``torch_reference.quantization`` reproduces it bit for
bit): the packed ``weight`` (uint32 buffer), ``scales`` (buffer), the affine
zero-point ``biases`` (buffer, ``None`` for the fp modes) and the optional layer
``bias`` (a frozen ``Parameter``).
"""

from __future__ import annotations

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision
from torch_reference.quantization import check_quantized, quantize, quantized_matmul

_WHERE = "QuantizedLinear"
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class QuantizedLinear(torch.nn.Module):
    """Quantized projection ``y = x @ dequantize(W).T + bias`` (Ollama ``nn.QuantizedLinear``).

    The forward pass is ``torch_reference.quantization.quantized_matmul(x, weight,
    scales, biases, transpose=True, group_size, bits, mode, precision=...)`` followed by
    ``+ bias`` when a layer bias is present.

    Args:
        weight: packed uint32 ``[out, in * bits / 32]``.
        scales: ``[out, in / group_size]``; float32 / float16 / bfloat16 for affine,
            uint8 codes for nvfp4, mxfp4, mxfp8.
        biases: affine zero-point biases, shape and dtype of ``scales``; must be
            ``None`` for the fp modes.
        bias: optional layer bias ``[out]`` (float32, float16 or bfloat16).
        group_size, bits, mode: see ``torch_reference.quantization.SUPPORTED_QUANTIZATION``.

    Shape:
        ``x: [..., in] -> [..., out]``.

    Dtypes:
        ``precision="native"``: the promotion of ``x`` and the scales (affine) or ``x``'s
        dtype (fp modes), then promoted with ``bias``'s dtype; ``W`` is dequantized with
        MLX's rounding points in that dtype (float32 accumulation for half precision).
        ``precision="float64"``: everything exact in float64, float64 out.

    Raises:
        TypeError: wrong dtypes (packed weight not uint32, fp scales not uint8, x or
            bias not float32 / float16 / bfloat16).
        ValueError: an unsupported (group_size, bits, mode); a weight not 2-D; scales
            or biases of the wrong shape; biases given for an fp mode or missing for
            affine; a bias not ``[out]``; ``x`` whose last dim is not ``in``; an
            unknown ``precision``.

    Example:
        >>> import torch
        >>> layer = QuantizedLinear.from_float(torch.ones(8, 64), group_size=64, bits=4)
        >>> layer(torch.ones(2, 64)).shape
        torch.Size([2, 8])
    """

    weight: torch.Tensor
    scales: torch.Tensor
    biases: torch.Tensor | None
    bias: torch.nn.Parameter | None

    def __init__(
        self,
        weight: torch.Tensor,
        scales: torch.Tensor,
        biases: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        group_size: int = 64,
        bits: int = 4,
        mode: str = "affine",
    ) -> None:
        super().__init__()
        if isinstance(weight, torch.Tensor) and weight.ndim != 2:
            raise value_error(
                _WHERE,
                f"weight must be 2-D [out, in * bits / 32] but got shape {tuple(weight.shape)}.",
            )
        check_quantized(_WHERE, weight, scales, biases, group_size, bits, mode)
        if bias is not None:
            if not isinstance(bias, torch.Tensor):
                raise type_error(
                    _WHERE, f"bias must be a torch.Tensor but got {type(bias).__name__}."
                )
            if bias.dtype not in _FLOAT_DTYPES:
                raise type_error(
                    _WHERE, f"bias must be float32, float16 or bfloat16 but got {bias.dtype}."
                )
            if tuple(bias.shape) != (weight.shape[0],):
                raise value_error(
                    _WHERE,
                    f"bias must have shape ({weight.shape[0]},) (one per output) but got {tuple(bias.shape)}.",
                )
        self.group_size = group_size
        self.bits = bits
        self.mode = mode
        self.register_buffer("weight", weight.detach())
        self.register_buffer("scales", scales.detach())
        self.register_buffer("biases", None if biases is None else biases.detach())
        if bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)

    @classmethod
    def from_float(
        cls,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        group_size: int = 64,
        bits: int = 4,
        mode: str = "affine",
    ) -> QuantizedLinear:
        """Quantize a float ``weight [out, in]`` now (bit-exact with ``mx.quantize``) and
        build the layer.

        Raises:
            ValueError: from ``torch_reference.quantization.quantize`` (``[quantize] ...``)
                for an unsupported format or shape, a non-finite weight element, or an
                mxfp4 / mxfp8 group so tiny that MLX's E8M0 scale code would wrap.
        """
        if isinstance(weight, torch.Tensor) and weight.ndim != 2:
            raise value_error(
                _WHERE, f"weight must be 2-D [out, in] but got shape {tuple(weight.shape)}."
            )
        wq, scales, biases = quantize(weight, group_size, bits, mode)
        return cls(wq, scales, biases, bias, group_size, bits, mode)

    @property
    def output_dim(self) -> int:
        """Size of the output's last axis, ``weight.shape[0]`` (Go: ``OutputDim()``)."""
        return int(self.weight.shape[0])

    @property
    def in_features(self) -> int:
        """Size the input's last axis must have, ``weight.shape[1] * 32 / bits``."""
        return int(self.weight.shape[1] * 32 // self.bits)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, output_dim={self.output_dim}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, bits={self.bits}, "
            f"mode={self.mode!r}"
        )

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Return ``x @ dequantize(weight).T (+ bias)``; see the class docstring."""
        check_precision(_WHERE, precision)
        if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
            raise type_error(
                _WHERE,
                f"x must be a float32, float16 or bfloat16 tensor but got {getattr(x, 'dtype', type(x).__name__)}.",
            )
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise value_error(
                _WHERE,
                f"input last dim must equal in_features {self.in_features} but got shape {tuple(x.shape)}.",
            )
        y = quantized_matmul(
            x,
            self.weight,
            self.scales,
            self.biases,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            precision=precision,
        )
        if self.bias is not None:
            y = y + (self.bias.to(torch.float64) if precision == "float64" else self.bias)
        return y
