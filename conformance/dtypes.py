"""The test dtypes, their conversions between MLX, PyTorch and NumPy, and their ulps.

The harness moves data between the libraries through NumPy float32 (every float16 and
bfloat16 value is exactly representable in float32), so MLX, the PyTorch peer and the
float64 oracle all start from the same already-rounded inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
import torch


@dataclass(frozen=True)
class FloatFormat:
    """A floating dtype as the tolerance policy sees it.

    ``mantissa_bits`` excludes the implicit bit; ``min_exponent`` is that of the smallest
    normal number, so the spacing of subnormals is ``2**(min_exponent - mantissa_bits)``.
    """

    name: str
    mantissa_bits: int
    min_exponent: int
    max_finite: float
    mx_dtype: mx.Dtype
    torch_dtype: torch.dtype

    @property
    def unit_roundoff(self) -> float:
        """Half the distance from 1 to the next number: the worst relative rounding error."""
        return 2.0 ** -(self.mantissa_bits + 1)

    def ulp(self, magnitude: np.ndarray) -> np.ndarray:
        """Spacing of this format at ``|magnitude|`` (elementwise, float64)."""
        mag = np.abs(np.asarray(magnitude, dtype=np.float64))
        with np.errstate(divide="ignore"):
            exponent = np.floor(np.log2(np.where(mag > 0, mag, 1.0)))
        exponent = np.maximum(np.where(mag > 0, exponent, self.min_exponent), self.min_exponent)
        return np.ldexp(1.0, (exponent - self.mantissa_bits).astype(np.int64))


FLOAT32 = FloatFormat("float32", 23, -126, float(np.finfo(np.float32).max), mx.float32, torch.float32)
FLOAT16 = FloatFormat("float16", 10, -14, 65504.0, mx.float16, torch.float16)
BFLOAT16 = FloatFormat("bfloat16", 7, -126, 3.3895313892515355e38, mx.bfloat16, torch.bfloat16)

FLOAT64 = FloatFormat("float64", 52, -1022, float(np.finfo(np.float64).max), mx.float64, torch.float64)

FORMATS: dict[str, FloatFormat] = {f.name: f for f in (FLOAT32, FLOAT16, BFLOAT16)}
TEST_DTYPES: tuple[str, ...] = tuple(FORMATS)
"""The op suite's test dtypes (the float64 oracle is the reference, not a test dtype)."""

MODEL_FORMATS: dict[str, FloatFormat] = {**FORMATS, FLOAT64.name: FLOAT64}
"""The model suite's test dtypes: the op suite's and float64 (MLX's CPU back end only).
:func:`round_to`, :func:`to_mlx` and :func:`to_torch` take any of them."""

_MX_TO_NAME = {f.mx_dtype: f.name for f in FORMATS.values()}
_TORCH_TO_NAME = {f.torch_dtype: f.name for f in FORMATS.values()}


def dtype_name(array: mx.array | torch.Tensor) -> str:
    """A library-neutral dtype name (``"float16"``, ``"uint32"``, ...) for either library's array."""
    if isinstance(array, mx.array):
        return _MX_TO_NAME.get(array.dtype, str(array.dtype).removeprefix("mlx.core."))
    return _TORCH_TO_NAME.get(array.dtype, str(array.dtype).removeprefix("torch."))


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round float values to ``dtype`` (through MLX) and return them as exact float32;
    ``float64``: the values in float64 (exact for anything narrower)."""
    if dtype == FLOAT64.name:
        return np.asarray(values, dtype=np.float64)
    rounded = mx.array(np.asarray(values, dtype=np.float32)).astype(FORMATS[dtype].mx_dtype)
    return mlx_to_numpy(rounded)


def mlx_to_numpy(array: mx.array) -> np.ndarray:
    """Exact NumPy copy: float16/bfloat16 widened to float32 (bfloat16 has no NumPy dtype),
    float32/float64 and ints kept (as :func:`torch_to_numpy`)."""
    if array.dtype in (mx.float16, mx.bfloat16):
        return np.array(array.astype(mx.float32))
    return np.array(array)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Exact NumPy copy: float16/bfloat16 widened to float32, float64 kept, ints kept."""
    t = tensor.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    return t.numpy().copy()


def to_mlx(values: np.ndarray, dtype: str | None) -> mx.array:
    """NumPy -> MLX; float arrays are cast to ``dtype`` (None keeps them), ints keep theirs."""
    if dtype is not None and np.issubdtype(values.dtype, np.floating):
        fmt = MODEL_FORMATS[dtype]
        if fmt is FLOAT64:  # mx.array of float64 values would make float32 ones
            return mx.array(np.asarray(values, dtype=np.float64), dtype=mx.float64)
        return mx.array(values).astype(fmt.mx_dtype)
    return mx.array(values)


def to_torch(values: np.ndarray, dtype: str | None) -> torch.Tensor:
    """NumPy -> PyTorch with the same casting rule as :func:`to_mlx`."""
    t = torch.from_numpy(np.array(values, order="C"))  # ascontiguousarray would make 0-D arrays 1-D
    if dtype is not None and np.issubdtype(values.dtype, np.floating):
        t = t.to(MODEL_FORMATS[dtype].torch_dtype)
    return t
