"""Scaled dot-product attention over ``mx.fast.scaled_dot_product_attention``.

Behaviour measured on mlx 0.32.4, CPU back end (which always runs MLX's composed fallback;
``torch_reference.fast.attention`` reproduces it):

* ``mask="causal"`` is aligned bottom-right: query ``i`` sees keys ``j <= i + (Lk - Lq)``.
  PyTorch's ``is_causal=True`` is aligned top-left (``j <= i``); the two differ whenever
  ``Lq != Lk``.
* A boolean mask (and ``"causal"``) puts ``finfo(dtype).min`` -- a FINITE value -- on the
  masked scores, so a row whose every key is masked gives UNIFORM weights: the output row
  is the mean of ``v`` over all keys (not NaN, not zeros). This is what ``"causal"`` gives
  for the first ``Lq - Lk`` queries when ``Lq > Lk``. An additive mask of ``-inf`` over a
  whole row gives NaN. (Fused GPU kernels may differ; not verified here.)
* In float16/bfloat16: ``scale`` is rounded to the input dtype and ``q * scale`` is rounded;
  the scores ``q @ k.T`` accumulate in float32 and are rounded to the input dtype; the
  mask is applied in the input dtype; softmax runs in float32 and its output is rounded;
  ``probs @ v`` accumulates in float32 and is rounded once.
* ``sinks`` (one logit per query head, not scaled) join each row's softmax as an extra
  leading column that is dropped afterwards.
"""

from __future__ import annotations

import math
import numbers

import mlx.core as mx

from mlx_impl._dtypes import FLOATING_DTYPES
from mlx_impl._errors import type_error, value_error

_WHERE = "scaled_dot_product_attention"


def _check_qkv(q: object, k: object, v: object) -> mx.Dtype:
    """Validate q/k/v and return their promoted (output) dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, mx.array):
            raise type_error(_WHERE, f"{name} must be an mx.array but got {type(t).__name__}.")
        if t.ndim != 4:
            raise value_error(
                _WHERE, f"{name} must be 4-D [B, heads, L, D] but got shape {tuple(t.shape)}."
            )
        if not mx.issubdtype(t.dtype, mx.floating):
            raise type_error(_WHERE, f"{name} must have a floating dtype but got {t.dtype}.")
    assert isinstance(q, mx.array) and isinstance(k, mx.array) and isinstance(v, mx.array)
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise value_error(
            _WHERE,
            f"q, k and v must have the same batch size but got shapes {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(v.shape)}.",
        )
    if q.shape[-1] != k.shape[-1]:
        raise value_error(
            _WHERE,
            f"q and k must have the same head dim D but got q {tuple(q.shape)} and k {tuple(k.shape)}.",
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise value_error(
            _WHERE,
            f"k and v must have the same kv heads and length [B, Hkv, Lk, .] but got k "
            f"{tuple(k.shape)} and v {tuple(v.shape)}.",
        )
    hq, hkv = q.shape[1], k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise value_error(
            _WHERE,
            f"the query heads ({hq}) must be a positive multiple of the kv heads ({hkv}).",
        )
    return mx.result_type(q.dtype, k.dtype, v.dtype)


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise type_error(_WHERE, f"scale must be a real number but got {type(scale).__name__}.")
    value = float(scale)
    if not math.isfinite(value):
        raise value_error(_WHERE, f"scale must be finite but got {value}.")
    return value


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True when an array of ``shape`` broadcasts to exactly ``target`` (NumPy rules)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


def _check_mask(mask: object, out_dtype: mx.Dtype, target: tuple[int, ...]) -> None:
    if mask is None:
        return
    if isinstance(mask, str):
        if mask != "causal":
            raise value_error(
                _WHERE, f"mask must be None, 'causal' or an array but got the string {mask!r}."
            )
        return
    if not isinstance(mask, mx.array):
        raise type_error(
            _WHERE, f"mask must be None, 'causal' or an mx.array but got {type(mask).__name__}."
        )
    if mask.dtype != mx.bool_:
        if not mx.issubdtype(mask.dtype, mx.floating):
            raise type_error(
                _WHERE,
                f"mask must be boolean (keep where True) or floating (additive) but got {mask.dtype}.",
            )
        if mx.result_type(mask.dtype, out_dtype) != out_dtype:
            raise type_error(
                _WHERE,
                f"an additive mask must promote to the attention dtype {out_dtype} but got "
                f"{mask.dtype} (e.g. a float32 mask with float16 q/k/v); cast the mask first.",
            )
    if not _broadcasts_to(tuple(mask.shape), target):
        raise value_error(
            _WHERE,
            f"mask of shape {tuple(mask.shape)} does not broadcast to [B, Hq, Lq, Lk] = {target}.",
        )


def _check_sinks(sinks: object, out_dtype: mx.Dtype, hq: int) -> None:
    if sinks is None:
        return
    if not isinstance(sinks, mx.array):
        raise type_error(
            _WHERE, f"sinks must be None or an mx.array but got {type(sinks).__name__}."
        )
    if not mx.issubdtype(sinks.dtype, mx.floating):
        raise type_error(_WHERE, f"sinks must have a floating dtype but got {sinks.dtype}.")
    if mx.result_type(sinks.dtype, out_dtype) != out_dtype:
        raise type_error(
            _WHERE,
            f"sinks must promote to the attention dtype {out_dtype} but got {sinks.dtype}; cast them first.",
        )
    if sinks.ndim != 1 or sinks.shape[0] != hq:
        raise value_error(
            _WHERE, f"sinks must have shape [Hq] = ({hq},) but got {tuple(sinks.shape)}."
        )


def scaled_dot_product_attention(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    *,
    scale: float,
    mask: str | mx.array | None = None,
    sinks: mx.array | None = None,
) -> mx.array:
    """Multi-head attention ``softmax(scale * q @ k.T + mask) @ v`` (``mx.fast`` kernel).

    Grouped-query attention: query head ``h`` reads kv head ``h // (Hq // Hkv)``; ``k`` and
    ``v`` are passed untiled.

    Args:
        q: queries ``[B, Hq, Lq, D]``.
        k: keys ``[B, Hkv, Lk, D]``; ``Hq`` must be a multiple of ``Hkv``.
        v: values ``[B, Hkv, Lk, Dv]``.
        scale: finite real multiplier of the scores (typically ``D ** -0.5``); in half
            precision it is rounded to the input dtype before it multiplies ``q``.
        mask: ``None``; ``"causal"`` (bottom-right: query ``i`` sees keys
            ``j <= i + (Lk - Lq)``); a boolean array (keep where True); or a floating array
            added to the scores. Arrays have rank <= 4 and must broadcast to
            ``[B, Hq, Lq, Lk]``. An additive mask must promote to the attention dtype
            (a float32 mask with float16 q is rejected). A row with every key masked by a
            boolean/causal mask gets uniform weights (output = mean of ``v``).
        sinks: optional ``[Hq]`` per-head logits that join each softmax row and are
            dropped; their dtype must promote to the attention dtype.

    Shape:
        ``q: [B, Hq, Lq, D]``, ``k: [B, Hkv, Lk, D]``, ``v: [B, Hkv, Lk, Dv]``
        ``-> [B, Hq, Lq, Dv]``.

    Dtypes:
        Output dtype is the promotion of q, k and v. Softmax runs in float32 whatever the
        input dtype.

    Raises:
        TypeError: a non-array argument, non-floating q/k/v/sinks, a mask that is neither
            boolean nor floating, a mask or sinks dtype that does not promote, a non-real
            ``scale``.
        ValueError: ranks other than 4, mismatched batch / head dim / kv shapes, ``Hq`` not
            a multiple of ``Hkv``, an unknown mask string, a mask that does not broadcast,
            sinks not ``[Hq]``, a non-finite ``scale``.

    Example:
        >>> import mlx.core as mx
        >>> q = mx.ones((1, 1, 1, 4)); k = mx.ones((1, 1, 3, 4))
        >>> v = mx.arange(12, dtype=mx.float32).reshape(1, 1, 3, 4)
        >>> scaled_dot_product_attention(q, k, v, scale=0.5, mask="causal").shape
        (1, 1, 1, 4)
    """
    # The happy path first (a decode call is ~20-60 us on a GPU, where the full checks'
    # ~3 us show): no mask or sinks, a float scale, three non-empty 4-D floating arrays
    # whose shapes agree. The checks below accept exactly these and change nothing in them.
    if (mask is None and sinks is None and type(scale) is float and isinstance(q, mx.array)
            and isinstance(k, mx.array) and isinstance(v, mx.array)):
        qs, ks, vs = q.shape, k.shape, v.shape
        if (len(qs) == 4 and len(ks) == 4 and len(vs) == 4 and 0 not in qs and 0 not in ks and 0 not in vs
                and qs[0] == ks[0] == vs[0] and qs[3] == ks[3] and ks[1] == vs[1] and ks[2] == vs[2]
                and qs[1] % ks[1] == 0 and q.dtype in FLOATING_DTYPES and k.dtype in FLOATING_DTYPES
                and v.dtype in FLOATING_DTYPES and math.isfinite(scale)):
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    out_dtype = _check_qkv(q, k, v)
    scale_value = _check_scale(scale)
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    _check_mask(mask, out_dtype, target)
    _check_sinks(sinks, out_dtype, q.shape[1])
    if q.shape[1] == 0:
        # Zero query heads is a valid (empty) GQA group; MLX's kernel raises a broadcast error.
        return mx.zeros((q.shape[0], 0, q.shape[2], v.shape[3]), dtype=out_dtype)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale_value, mask=mask, sinks=sinks)
