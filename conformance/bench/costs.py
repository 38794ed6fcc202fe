"""A simple work model per benchmarked op: the FLOPs it must do and the bytes it must move.

The model is the op's irreducible work, not what a particular kernel does: bytes are
each input read once and each output written once (an ideal fused kernel), FLOPs count a
multiply-add as 2. The roofline (:mod:`conformance.bench.machine`) turns them into a
lower bound on the time, ``max(flops / peak_flops, bytes / peak_bandwidth)``; an op's
*roofline share* is that bound over its measured median (1.0 = as fast as this machine's
measured peaks allow).

Floating inputs count at the benchmarked dtype's width (4 bytes for float32, 2 for
bfloat16); integer and packed arrays at their own width; outputs at their real size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from conformance.dtypes import FORMATS

_WIDTH = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one call, and the formula they came from (shown in reports)."""

    flops: float
    bytes: float
    model: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"flops": self.flops, "bytes": self.bytes, "model": self.model}


def array_bytes(array: np.ndarray, dtype: str) -> int:
    """Bytes ``array`` occupies in the benchmarked library at ``dtype`` (floats are cast to it)."""
    if np.issubdtype(array.dtype, np.floating) and dtype in FORMATS:
        return int(array.size) * _WIDTH[dtype]
    return int(array.nbytes)


def _io_bytes(arrays: Mapping[str, np.ndarray], dtype: str, out_bytes: int, skip: tuple[str, ...] = ()) -> int:
    return sum(array_bytes(v, dtype) for k, v in arrays.items() if k not in skip) + out_bytes


def _rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if len(shape) > 1 else 1


def _linear(a, p, dtype, out_bytes):
    x, w = a["x"], a["weight"]
    m, k, n = _rows(x.shape), x.shape[-1], w.shape[0]
    flops = 2 * m * n * k + (m * n if "bias" in a else 0)
    return Cost(flops, _io_bytes(a, dtype, out_bytes), "2MNK (+MN bias); read x, W, b, write y")


def _multi_linear(a, p, dtype, out_bytes):
    x, w = a["x"], a["weight"]
    m, k, n = _rows(x.shape), x.shape[-1], w.shape[1]
    return Cost(2 * m * n * k, _io_bytes(a, dtype, out_bytes), "2 * rows * out * in; read x, W, write y")


def _quantized_matmul(a, p, dtype, out_bytes):
    # The float "weight" is only the source the packed arrays were made from; the call
    # reads the packed codes, scales and zero points.
    x, wq = a["x"], a["wq"]
    m, k, n = _rows(x.shape), x.shape[-1], wq.shape[0]
    flops = 2 * m * n * k + (m * n if "bias" in a else 0)
    return Cost(flops, _io_bytes(a, dtype, out_bytes, skip=("weight",)),
                "2MNK; read x, packed codes, scales (+ zero points), write y")


def _quantize(a, p, dtype, out_bytes):
    return Cost(0.0, _io_bytes(a, dtype, out_bytes), "memory only: read W, write codes + scales (+ biases)")


def _per_element(flops_per_element: float, model: str):
    def cost(a, p, dtype, out_bytes):
        key = "x" if "x" in a else next(iter(a))
        return Cost(flops_per_element * a[key].size, _io_bytes(a, dtype, out_bytes), model)
    return cost


def _embedding(a, p, dtype, out_bytes):
    # Only the looked-up rows are read, not the whole table.
    idx = a["indices"]
    return Cost(0.0, int(idx.nbytes) + 2 * out_bytes, "memory only: read indices and the picked rows, write y")


def _attention_pairs(lq: int, lk: int, causal: bool) -> int:
    """(query, key) pairs scored: all of them, or MLX's bottom-right causal triangle."""
    if not causal:
        return lq * lk
    shift = lk - lq
    return sum(min(lk, max(0, i + shift + 1)) for i in range(lq))


def _sdpa(a, p, dtype, out_bytes):
    q, k = a["q"], a["k"]
    b, hq, lq, d = q.shape
    lk = k.shape[2]
    causal = p.get("mask") == "causal"
    pairs = _attention_pairs(lq, lk, causal)
    flops = 4 * b * hq * pairs * d
    return Cost(flops, _io_bytes(a, dtype, out_bytes),
                "4 * B * Hq * pairs * D (QK^T and PV; causal counts the kept pairs); read q, k, v (+ mask), write out")


COST_MODELS: dict[str, Callable[[Mapping[str, np.ndarray], Mapping[str, Any], str, int], Cost]] = {
    "nn.linear": _linear,
    "nn.multi_linear": _multi_linear,
    "quantization.quantize": _quantize,
    "quantization.quantized_matmul": _quantized_matmul,
    "nn.quantized_linear": _quantized_matmul,
    "fast.rms_norm": _per_element(4, "4 per element (square, sum, scale, weight); read x, w, write y"),
    "nn.rms_norm": _per_element(4, "4 per element (square, sum, scale, weight); read x, w, write y"),
    "fast.layer_norm": _per_element(8, "8 per element (mean, variance, scale, weight, bias); read x, w, b, write y"),
    "nn.layer_norm": _per_element(8, "8 per element (mean, variance, scale, weight, bias); read x, w, b, write y"),
    "nn.embedding": _embedding,
    "nn.repeat_kv": _per_element(0, "memory only: read x, write the repeated heads"),
    "nn.causal_mask": _per_element(0, "memory only: read scores, write masked scores"),
    "fast.scaled_dot_product_attention": _sdpa,
    "fast.rope": _per_element(6, "6 per element (two multiplies and an add per output); read x, write y"),
}


def cost_of(op: str, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any], dtype: str,
            out_bytes: int) -> Cost:
    """The op's cost model applied to one input; ops without a model count bytes only."""
    model = COST_MODELS.get(op)
    if model is None:
        return Cost(0.0, _io_bytes(arrays, dtype, out_bytes), "no model: inputs read + outputs written")
    return model(arrays, params, dtype, out_bytes)
