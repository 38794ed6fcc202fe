"""Read a Hugging Face-layout checkpoint directory into ``torch_reference.nn`` layers.

The twin of ``mlx_impl.models.checkpoint``: ``config.json`` plus every ``*.safetensors``
read with :func:`torch_reference.loading.load_safetensors`. A weight with a ``.scales``
sibling is MLX-quantized; the twin keeps the same packed codes and dequantizes them (in
float64 for the oracle). Every tensor must be used by the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from torch_reference import nn
from torch_reference.loading import load_safetensors
from torch_reference.nn.linear import FLOAT64_BLOCK_ELEMENTS
from torch_reference.quantization import dequantize, quantized_matmul

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config, {name: tensor})`` of a checkpoint directory.

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




class QuantizedProjection(torch.nn.Module):
    """A quantized linear layer: ``nn.QuantizedLinear`` natively; for ``precision="float64"``
    the exact float64 value of the same codes (``dequantize(..., precision="float64")``)
    times x in float64 (``QuantizedLinear`` itself takes no float64 input). A layer of
    more than ``FLOAT64_BLOCK_ELEMENTS`` weights is computed a block of output rows at a
    time, in either precision.

    Shape: ``x: [..., in] -> [..., out]``.
    """

    def __init__(self, layer: nn.QuantizedLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        q = self.layer
        rows = max(1, FLOAT64_BLOCK_ELEMENTS // max(1, x.shape[-1]))
        out = q.weight.shape[0]
        if precision != "float64" and out <= rows:
            return q(x, precision=precision)
        # Dequantized per call and per block of output rows, never whole. Kept, every
        # quantized layer of the oracle would hold 8 bytes a weight (10 GB for a 1.24B
        # model); one dequantization of a 128k-row tied head with its intermediates (the
        # unpacked codes, their decoded values, the dequantized copy) took ~7 GB at once in
        # float64 and 5.5 GiB in bfloat16. Each output is the same dot product, rounded once.
        x64 = x.to(torch.float64) if precision == "float64" else x
        blocks = []
        for start in range(0, out, rows):
            part = slice(start, min(start + rows, out))
            biases = None if q.biases is None else q.biases[part]
            if precision == "float64":
                w64 = dequantize(q.weight[part], q.scales[part], biases, q.group_size, q.bits, q.mode,
                                 precision="float64")
                blocks.append(x64 @ w64.T)
            else:
                blocks.append(quantized_matmul(x, q.weight[part], q.scales[part], biases, transpose=True,
                                               group_size=q.group_size, bits=q.bits, mode=q.mode,
                                               precision=precision))
        y = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)
        if q.bias is None:
            return y
        return y + (q.bias.to(torch.float64) if precision == "float64" else q.bias)


class QuantizedEmbedding(torch.nn.Module):
    """Row lookup in an MLX-quantized table: take the packed rows, then dequantize them.

    Shape: ``indices: [...] -> [..., D]``.
    """

    def __init__(self, weight: torch.Tensor, scales: torch.Tensor, biases: torch.Tensor | None,
                 quantization: tuple[int, int, str], dtype: torch.dtype) -> None:
        super().__init__()
        self.weight, self.scales, self.biases = weight, scales, biases
        self.group_size, self.bits, self.mode = quantization
        # The model's float dtype: fp modes would otherwise dequantize to bfloat16 (MLX's
        # default) and the residual stream would start in bfloat16.
        self.dtype = dtype

    def forward(self, indices: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        biases = None if self.biases is None else self.biases[indices]
        # PyTorch's CUDA indexing has no uint32 kernel ("index_cuda" not implemented for
        # 'UInt32'): take the packed rows as int32 words, the same bits.
        rows = self.weight.view(torch.int32)[indices].view(torch.uint32)
        return dequantize(rows, self.scales[indices], biases, self.group_size,
                          self.bits, self.mode, self.dtype, precision=precision)

    def as_linear(self) -> QuantizedProjection:
        """The tied head: the same codes as a quantized ``[vocab, D]`` projection."""
        return QuantizedProjection(nn.QuantizedLinear(
            self.weight, self.scales, self.biases, None, self.group_size, self.bits, self.mode))


class Weights:
    """The checkpoint's tensors, handed out once each, cast to ``dtype`` when floating."""

    def __init__(self, arrays: dict[str, torch.Tensor], dtype: torch.dtype | None,
                 quantization: tuple[int, int, str] | None, device: str | torch.device) -> None:
        self.arrays = arrays
        self.dtype = dtype
        self.quantization = quantization
        self.device = torch.device(device)
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        """Whether the checkpoint has ``key`` (used or not)."""
        return key in self.arrays

    def take(self, key: str, quantized: bool = False) -> torch.Tensor:
        """The tensor ``key``, marked used and cast as :meth:`_casts` says; a missing key
        raises ``ValueError`` naming it. ``quantized``: the bias of a quantized layer."""
        if key not in self.arrays:
            raise ValueError(f"[models.load] the checkpoint lacks {key!r}.")
        self.used.add(key)
        t = self.arrays[key]
        if self._casts(key, quantized) and t.dtype in _FLOATS:
            t = t.to(self.dtype)
        return t.to(self.device)

    def _casts(self, key: str, quantized: bool) -> bool:
        """Cast to ``dtype``? Quantization scales and biases (and a quantized layer's bias) only to a dtype quantized
        layers take (float32/float16/bfloat16); for float64 they stay as stored (the
        float64 path dequantizes the codes exactly from the stored scales)."""
        if self.dtype is None:
            return False
        if quantized or key.endswith((".scales", ".biases")):
            return self.dtype in _FLOATS[:3]
        return True

    def float_dtype(self) -> torch.dtype:
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

    def linear(self, prefix: str) -> torch.nn.Module:
        """``prefix.weight`` (+ ``.bias``) as ``nn.Linear``, or a :class:`QuantizedProjection`."""
        quantized = self.has(f"{prefix}.scales")
        bias = self.take(f"{prefix}.bias", quantized) if self.has(f"{prefix}.bias") else None
        if quantized:
            g, b, mode = self._quant(prefix)
            biases = self.take(f"{prefix}.biases") if self.has(f"{prefix}.biases") else None
            return QuantizedProjection(nn.QuantizedLinear(
                self.take(f"{prefix}.weight"), self.take(f"{prefix}.scales"), biases, bias,
                g, b, mode))
        return nn.Linear(self.take(f"{prefix}.weight"), bias)

    def embedding(self, prefix: str) -> torch.nn.Module:
        """``prefix.weight [V, D]`` as an Embedding, or a :class:`QuantizedEmbedding`."""
        if self.has(f"{prefix}.scales"):
            biases = self.take(f"{prefix}.biases") if self.has(f"{prefix}.biases") else None
            return QuantizedEmbedding(self.take(f"{prefix}.weight"),
                                      self.take(f"{prefix}.scales"), biases, self._quant(prefix),
                                      self.float_dtype())
        return nn.Embedding(self.take(f"{prefix}.weight"))

    def check_all_used(self) -> None:
        """Raise ``ValueError`` listing the tensors no layer took (a misspelt or extra key)."""
        left = sorted(set(self.arrays) - self.used)
        if left:
            raise ValueError(
                f"[models.load] {len(left)} checkpoint tensor(s) no layer uses: {left[:8]}"
            )
