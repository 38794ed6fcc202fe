"""Read a Hugging Face-layout checkpoint directory into layers of ``mlx_impl.nn``.

``config.json`` plus every ``*.safetensors`` file in the directory, read with the
project's own ``mlx_impl.load_safetensors``. A linear weight with a ``.scales`` sibling
is an MLX-quantized layer (``.weight`` packed uint32, ``.scales``, ``.biases`` for affine),
quantized as ``config.json``'s ``"quantization"`` says. Every tensor must be used by the
model: a leftover key (a misspelt norm, an unsupported extra) is an error, not silence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from mlx_impl import nn
from mlx_impl.loading import load_safetensors
from mlx_impl.quantization import dequantize

_FLOATS = (mx.float16, mx.bfloat16, mx.float32, mx.float64)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """``(config, {name: array})`` of a checkpoint directory.

    Raises:
        ValueError: no ``config.json`` or no ``*.safetensors`` in ``path``.
    """
    root = Path(path)
    cfg = root / "config.json"
    if not cfg.is_file():
        raise ValueError(f"[models.load] {root} has no config.json.")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ValueError(f"[models.load] {root} has no *.safetensors file.")
    with open(cfg, encoding="utf-8") as f:
        config = json.load(f)
    return config, load_safetensors(files)


class QuantizedEmbedding:
    """Row lookup in an MLX-quantized table: take the packed rows, then dequantize them.

    Shape: ``indices: [...] -> [..., D]``; rows have the scales' dtype (affine).
    """

    def __init__(self, weight: mx.array, scales: mx.array, biases: mx.array | None,
                 quantization: tuple[int, int, str], dtype: mx.Dtype) -> None:
        self.weight, self.scales, self.biases = weight, scales, biases
        self.group_size, self.bits, self.mode = quantization
        # The model's float dtype: fp modes would otherwise dequantize to bfloat16 (MLX's
        # default) and the residual stream would start in bfloat16.
        self.dtype = dtype

    def __call__(self, indices: mx.array) -> mx.array:
        biases = None if self.biases is None else self.biases[indices]
        return dequantize(self.weight[indices], self.scales[indices], biases,
                          self.group_size, self.bits, self.mode, self.dtype)

    def as_linear(self) -> nn.QuantizedLinear:
        """The tied head: the same codes as a ``QuantizedLinear`` ``[vocab, D]``."""
        return nn.QuantizedLinear(self.weight, self.scales, self.biases, None,
                                  self.group_size, self.bits, self.mode)


class Weights:
    """The checkpoint's tensors, handed out once each, cast to ``dtype`` when floating."""

    def __init__(self, arrays: dict[str, mx.array], dtype: mx.Dtype | None,
                 quantization: tuple[int, int, str] | None) -> None:
        self.arrays = arrays
        self.dtype = dtype
        self.quantization = quantization
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        """Whether the checkpoint has ``key`` (used or not)."""
        return key in self.arrays

    def take(self, key: str, quantized: bool = False) -> mx.array:
        """The tensor ``key``, marked used and cast as :meth:`_casts` says; a missing key
        raises ``ValueError`` naming it. ``quantized``: the bias of a quantized layer."""
        if key not in self.arrays:
            raise ValueError(f"[models.load] the checkpoint lacks {key!r}.")
        self.used.add(key)
        a = self.arrays[key]
        if (
            self.dtype is not None
            and self._casts(key, quantized)
            and a.dtype in _FLOATS
            and a.dtype != self.dtype
        ):
            a = a.astype(self.dtype)
        return a

    def _casts(self, key: str, quantized: bool) -> bool:
        """Cast to ``dtype``? Quantization scales and biases (and a quantized layer's bias) only to a dtype quantized
        layers take (float32/float16/bfloat16); for float64 they stay as stored (the
        float64 path dequantizes the codes exactly from the stored scales)."""
        if self.dtype is None:
            return False
        if quantized or key.endswith((".scales", ".biases")):
            return self.dtype in _FLOATS[:3]
        return True

    def float_dtype(self) -> mx.Dtype:
        """The dtype of the model's float tensors: ``dtype`` when casting (float64 maps to
        float32 for quantized layers, which take no float64), else the final norm's."""
        if self.dtype is not None:
            return self.dtype if self.dtype in _FLOATS[:3] else _FLOATS[2]
        stored = self.arrays["model.norm.weight"].dtype
        return stored if stored in _FLOATS[:3] else _FLOATS[2]

    def _quant(self, prefix: str) -> tuple[int, int, str]:
        if self.quantization is None:
            raise ValueError(
                f"[models.load] {prefix!r} is quantized (it has .scales) but config.json "
                "has no quantization."
            )
        return self.quantization

    def linear(self, prefix: str) -> nn.Linear | nn.QuantizedLinear:
        """``prefix.weight`` (+ ``prefix.bias``) as a Linear, or a QuantizedLinear."""
        quantized = self.has(f"{prefix}.scales")
        bias = self.take(f"{prefix}.bias", quantized) if self.has(f"{prefix}.bias") else None
        if quantized:
            g, b, mode = self._quant(prefix)
            biases = self.take(f"{prefix}.biases") if self.has(f"{prefix}.biases") else None
            return nn.QuantizedLinear(self.take(f"{prefix}.weight"), self.take(f"{prefix}.scales"),
                                      biases, bias, g, b, mode)
        return nn.Linear(self.take(f"{prefix}.weight"), bias)

    def embedding(self, prefix: str) -> nn.Embedding | QuantizedEmbedding:
        """``prefix.weight [V, D]`` as an Embedding, or a :class:`QuantizedEmbedding`."""
        if self.has(f"{prefix}.scales"):
            biases = self.take(f"{prefix}.biases") if self.has(f"{prefix}.biases") else None
            return QuantizedEmbedding(self.take(f"{prefix}.weight"), self.take(f"{prefix}.scales"),
                                      biases, self._quant(prefix), self.float_dtype())
        return nn.Embedding(self.take(f"{prefix}.weight"))

    def check_all_used(self) -> None:
        """Raise ``ValueError`` listing the tensors no layer took (a misspelt or extra key)."""
        left = sorted(set(self.arrays) - self.used)
        if left:
            raise ValueError(
                f"[models.load] {len(left)} checkpoint tensor(s) no layer uses: {left[:8]}"
            )
