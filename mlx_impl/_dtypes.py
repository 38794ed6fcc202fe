"""Dtype tuples for the layers' per-call fast paths.

``x.dtype in FLOATING_DTYPES`` is the same test as ``mx.issubdtype(x.dtype, mx.floating)``
at a fraction of the cost: at decode a layer's whole Python-side budget is about 1 us (5 %
of a ~20 us CPU call), so each ~100 ns counts. The dtypes are derived from
``mx.issubdtype`` over every MLX dtype at import, so they cannot drift from MLX's own
classification, and kept as tuples, most common first: ``x.dtype`` is a new object on every
read, so ``in`` compares with ``==`` (one nanobind call per element tried), and a float32
or bfloat16 activation matches at the first or second, where a set lookup costs a hash and
a compare (measured at decode on the CPU: ~0.5 % of an ``nn.RMSNorm`` call).
"""

from __future__ import annotations

import mlx.core as mx

_ALL_DTYPES = tuple(d for d in vars(mx).values() if isinstance(d, mx.Dtype))


def _most_common_first(dtypes: list[mx.Dtype], first: tuple[mx.Dtype, ...]) -> tuple[mx.Dtype, ...]:
    return tuple(d for d in first if d in dtypes) + tuple(d for d in dtypes if d not in first)


FLOATING_DTYPES: tuple[mx.Dtype, ...] = _most_common_first(
    [d for d in _ALL_DTYPES if mx.issubdtype(d, mx.floating)], (mx.float32, mx.bfloat16, mx.float16))
"""float32, bfloat16, float16, float64 (not complex64)."""

INTEGER_DTYPES: tuple[mx.Dtype, ...] = _most_common_first(
    [d for d in _ALL_DTYPES if mx.issubdtype(d, mx.integer)], (mx.int32, mx.uint32, mx.int64))
"""int32, uint32, int64, then the other int and uint widths (not bool)."""
