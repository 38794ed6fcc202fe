"""Dtype sets for the layers' per-call fast paths.

``x.dtype in FLOATING_DTYPES`` is the same test as ``mx.issubdtype(x.dtype, mx.floating)``
at about half the cost (one set lookup instead of a second nanobind call): at decode a
layer's whole Python-side budget is about 1 us (5 % of a ~20 us CPU call), so each
~100 ns counts. The sets are derived from ``mx.issubdtype`` over every MLX dtype at import,
so they cannot drift from MLX's own classification.
"""

from __future__ import annotations

import mlx.core as mx

_ALL_DTYPES = tuple(d for d in vars(mx).values() if isinstance(d, mx.Dtype))

FLOATING_DTYPES: frozenset[mx.Dtype] = frozenset(d for d in _ALL_DTYPES if mx.issubdtype(d, mx.floating))
"""float16, bfloat16, float32, float64 (not complex64)."""

INTEGER_DTYPES: frozenset[mx.Dtype] = frozenset(d for d in _ALL_DTYPES if mx.issubdtype(d, mx.integer))
"""int8..int64 and uint8..uint64 (not bool)."""
