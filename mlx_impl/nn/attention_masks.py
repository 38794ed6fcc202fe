"""Attention helpers of the layer set: GQA head expansion and additive-style causal masks.

Mask fill value (a deliberate change from the original): Ollama fills masked scores with
a float32 scalar array ``-1e9``. ``mx.where(mask, float16_scores, float32_array)`` promotes
to float32 (SEMANTICS.md), so the original silently turns a float16/bfloat16 attention chain
into float32; that is accidental, not a design. This project KEEPS THE SCORES' DTYPE and
fills with ``-1e9`` clamped to the dtype's lowest finite value:

    float32 / float64: -1e9     float16: -65504     bfloat16: -1e9 rounded, -998244352

The fill stays FINITE on purpose: a Python-scalar ``-1e9`` would become ``-inf`` in float16,
and a fully masked row would then make softmax compute ``-inf - (-inf) = nan``.
"""

from __future__ import annotations

import functools
import numbers
from typing import cast

import mlx.core as mx

from mlx_impl._errors import type_error, value_error

MASK_VALUE = -1e9
"""The original's fill value, before clamping to the scores' dtype."""


def _is_int(value: object) -> bool:
    """True for Python/NumPy integers; False for bool (``True`` is not a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@functools.cache
def mask_fill_value(dtype: mx.Dtype) -> float:
    """The value masked scores get in ``dtype``: ``-1e9`` clamped to ``dtype``'s lowest finite
    value, then rounded to ``dtype`` (float16: -65504.0; bfloat16: -998244352.0).

    Cached per dtype: it runs on every attention call and needs a (tiny) evaluation."""
    lowest = float(mx.finfo(dtype).min)
    rounded = mx.array(max(MASK_VALUE, lowest), dtype=dtype).item()
    return float(cast(float, rounded))


MAX_HEADS = 2**31 - 1
"""The largest head count ``repeat_kv`` produces: MLX array dims are int32."""


def repeat_kv(x: mx.array, repeats: int) -> mx.array:
    """Expand key/value heads for grouped-query attention (Ollama ``RepeatKV``).

    Each kv head is repeated ``repeats`` times IN A ROW: output head ``h`` is input head
    ``h // repeats`` (kv0, kv0, kv1, kv1, ... for ``repeats == 2``), which is the grouping
    ``mx.fast.scaled_dot_product_attention`` and PyTorch's ``enable_gqa`` use. Built by
    inserting an axis after the heads, broadcasting it to ``repeats`` and reshaping.

    Args:
        x: ``[B, kv_heads, S, D]`` array of any dtype.
        repeats: an ``int >= 1`` (``bool`` is rejected). ``repeats == 1`` returns ``x``
            itself, the same object, as the original does.

    Shape:
        ``x: [B, kv_heads, S, D] -> [B, kv_heads * repeats, S, D]``.

    Dtypes:
        Unchanged; values are copied bit-exactly.

    Raises:
        TypeError: ``x`` not an ``mx.array``; ``repeats`` not an integer.
        ValueError: ``x`` not 4-D; ``repeats < 1``; ``max(kv_heads, 1) * repeats`` over
            :data:`MAX_HEADS` (``2**31 - 1``, MLX's int32 dim limit).

    Example:
        >>> import mlx.core as mx
        >>> repeat_kv(mx.arange(2).reshape(1, 2, 1, 1), 2).reshape(-1)
        array([0, 0, 1, 1], dtype=int32)
    """
    if not isinstance(x, mx.array):
        raise type_error("repeat_kv", f"x must be an mx.array but got {type(x).__name__}.")
    if not _is_int(repeats):
        raise type_error(
            "repeat_kv", f"repeats must be an int but got {type(repeats).__name__} ({repeats!r})."
        )
    if x.ndim != 4:
        raise value_error(
            "repeat_kv", f"x must be 4-D [B, kv_heads, S, D] but got shape {x.shape}."
        )
    if repeats < 1:
        raise value_error("repeat_kv", f"repeats must be >= 1 but got {repeats}.")
    kv_heads = int(x.shape[1])
    if max(kv_heads, 1) * int(repeats) > MAX_HEADS:
        # MLX dims are int32: a larger head count (or repeat axis) raises OverflowError there.
        raise value_error(
            "repeat_kv",
            f"the head count kv_heads * repeats (and repeats itself) must be <= 2**31 - 1 = "
            f"{MAX_HEADS} (MLX's int32 dims) but "
            f"got kv_heads={kv_heads}, repeats={repeats} (x shape {x.shape}).",
        )
    if repeats == 1:
        return x
    b, kv_heads, s, d = x.shape
    expanded = mx.broadcast_to(x[:, :, None], (b, kv_heads, int(repeats), s, d))
    return expanded.reshape(b, kv_heads * int(repeats), s, d)


def _check_scores(where: str, scores: object) -> mx.array:
    """Validate a ``[B, H, Lq, Lk]`` floating scores array and return it."""
    if not isinstance(scores, mx.array):
        raise type_error(where, f"scores must be an mx.array but got {type(scores).__name__}.")
    if scores.ndim != 4:
        raise value_error(where, f"scores must be 4-D [B, H, Lq, Lk] but got shape {scores.shape}.")
    if not mx.issubdtype(scores.dtype, mx.floating):
        raise type_error(where, f"scores must have a floating dtype but got {scores.dtype}.")
    return scores


def _mask(scores: mx.array, offset: int) -> mx.array:
    """Keep ``scores[..., i, j]`` where ``j <= i + offset``; fill the rest in-dtype."""
    lq, lk = scores.shape[-2], scores.shape[-1]
    keep = mx.tri(lq, lk, k=offset, dtype=mx.bool_)
    # An array fill of the scores' own dtype: no promotion, and a finite value (module doc).
    fill = mx.array(mask_fill_value(scores.dtype), dtype=scores.dtype)
    return mx.where(keep, scores, fill)


def apply_causal_mask(scores: mx.array) -> mx.array:
    """Causal mask for square scores: keep ``j <= i`` (``tri(S, S, 0)``), fill the rest.

    ``y[b, h, i, j] = scores[b, h, i, j]`` if ``j <= i`` else ``fill``, where ``fill`` is
    ``-1e9`` clamped to the scores' dtype (module docstring): the output keeps the scores'
    dtype (the original promoted float16/bfloat16 to float32).

    Args:
        scores: ``[B, H, S, S]`` floating attention logits.

    Shape:
        ``scores: [B, H, S, S] -> [B, H, S, S]``.

    Raises:
        TypeError: ``scores`` not an ``mx.array`` or not floating.
        ValueError: ``scores`` not 4-D, or its last two dims differ (use
            :func:`apply_causal_mask_with_offset` for ``Lq != Lk``).

    Example:
        >>> import mlx.core as mx
        >>> apply_causal_mask(mx.zeros((1, 1, 2, 2)))[0, 0]
        array([[0, -1e+09],
               [0, 0]], dtype=float32)
    """
    scores = _check_scores("apply_causal_mask", scores)
    if scores.shape[-2] != scores.shape[-1]:
        raise value_error(
            "apply_causal_mask",
            f"scores must be square in the last two dims [B, H, S, S] but got shape {scores.shape}; "
            "use apply_causal_mask_with_offset for Lq != Lk.",
        )
    return _mask(scores, 0)


def apply_causal_mask_with_offset(scores: mx.array, offset: int) -> mx.array:
    """Causal mask for queries that start ``offset`` positions into the keys.

    Keeps ``tri(Lq, Lk, offset)``: query ``i`` (absolute position ``offset + i``) sees keys
    ``j <= i + offset``; the rest get ``fill`` (``-1e9`` clamped to the scores' dtype, as in
    :func:`apply_causal_mask`; the output keeps the scores' dtype).

    In Ollama ``offset`` is the KV-cache length before this step and
    ``Lk = offset + Lq`` (the cache plus the new tokens), which is bottom-right alignment,
    the same as ``mx.fast.scaled_dot_product_attention(mask="causal")``.

    Range of ``offset`` (decided here): ``0 <= offset <= Lk - Lq``. The upper bound means the
    last query's newest visible key, ``Lq - 1 + offset``, exists; a larger offset signals a
    caller bug (an offset counted after appending to the cache). ``offset < Lk - Lq`` is
    allowed: the keys past ``offset + Lq`` are masked for every query, as a preallocated
    cache buffer with unused tail slots needs. ``offset == 0`` with ``Lk > Lq`` is handled
    correctly (top-left alignment, ``j <= i``): the original falls back to
    ``apply_causal_mask`` when ``offset == 0``, which builds an ``[Lq, Lq]`` mask and breaks
    whenever ``Lk != Lq``; that bug is not reproduced.

    Args:
        scores: ``[B, H, Lq, Lk]`` floating attention logits, ``Lq <= Lk``.
        offset: an ``int`` in ``[0, Lk - Lq]`` (``bool`` is rejected).

    Shape:
        ``scores: [B, H, Lq, Lk] -> [B, H, Lq, Lk]``.

    Raises:
        TypeError: ``scores`` not an ``mx.array`` or not floating; ``offset`` not an int.
        ValueError: ``scores`` not 4-D; ``Lq > Lk``; ``offset < 0`` or ``offset > Lk - Lq``.

    Example:
        >>> import mlx.core as mx
        >>> apply_causal_mask_with_offset(mx.zeros((1, 1, 1, 3)), 2)[0, 0]
        array([[0, 0, 0]], dtype=float32)
    """
    where = "apply_causal_mask_with_offset"
    scores = _check_scores(where, scores)
    if not _is_int(offset):
        raise type_error(
            where, f"offset must be an int but got {type(offset).__name__} ({offset!r})."
        )
    lq, lk = scores.shape[-2], scores.shape[-1]
    if lq > lk:
        raise value_error(
            where, f"scores [B, H, Lq, Lk] must have Lq <= Lk but got shape {scores.shape}."
        )
    if offset < 0 or offset > lk - lq:
        raise value_error(
            where,
            f"offset must be in [0, Lk - Lq] = [0, {lk - lq}] for scores [B, H, Lq={lq}, Lk={lk}] "
            f"but got {offset}.",
        )
    return _mask(scores, int(offset))
