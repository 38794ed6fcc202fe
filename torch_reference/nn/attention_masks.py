"""GQA head expansion and causal masks: PyTorch twin of ``mlx_impl.nn.attention_masks``.

Fill value (the same deliberate change as the MLX side): masked scores get ``-1e9``
clamped to the scores' dtype's lowest finite value and rounded to that dtype, and the
output keeps the scores' dtype:

    float32 / float64: -1e9     float16: -65504     bfloat16: -998244352

It stays finite so that a fully masked row never makes softmax compute ``-inf - -inf``.
(PyTorch's ``where`` with a 0-d float32 tensor would keep float16 anyway, but MLX's would
promote to float32, so both sides pass an array of the scores' own dtype.)

Under ``precision="float64"`` the oracle keeps the SAME fill value, the one of the input
dtype (e.g. -65504 for float16 scores), widened exactly: the fill is part of the function's
definition, not a rounding artefact.
"""

from __future__ import annotations

import functools
import numbers

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision, to_working

MASK_VALUE = -1e9
"""The original's fill value, before clamping to the scores' dtype."""

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _is_int(value: object) -> bool:
    """True for Python/NumPy integers; False for bool (``True`` is not a count here)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@functools.cache
def mask_fill_value(dtype: torch.dtype) -> float:
    """The value masked scores get in ``dtype``: ``-1e9`` clamped to ``dtype``'s lowest finite
    value, then rounded to ``dtype`` (float16: -65504.0; bfloat16: -998244352.0)."""
    lowest = float(torch.finfo(dtype).min)
    return float(torch.tensor(max(MASK_VALUE, lowest), dtype=dtype).item())


MAX_HEADS = 2**31 - 1
"""The largest head count ``repeat_kv`` produces: MLX array dims are int32."""


def repeat_kv(x: torch.Tensor, repeats: int, *, precision: str = "native") -> torch.Tensor:
    """Expand key/value heads for grouped-query attention (Ollama ``RepeatKV``).

    Each kv head is repeated ``repeats`` times IN A ROW: output head ``h`` is input head
    ``h // repeats`` (kv0, kv0, kv1, kv1, ...), as ``torch.repeat_interleave(x, repeats,
    dim=1)`` would give; built here by inserting an axis, expanding and reshaping, like MLX.

    Args:
        x: ``[B, kv_heads, S, D]`` tensor of any dtype.
        repeats: an ``int >= 1`` (``bool`` is rejected). ``repeats == 1`` returns ``x``
            itself (the same object) under ``precision="native"``; under ``"float64"`` the
            widened copy of a non-float64 floating ``x``.
        precision: ``"native"`` or ``"float64"`` (floating ``x`` widened exactly).

    Shape:
        ``x: [B, kv_heads, S, D] -> [B, kv_heads * repeats, S, D]``.

    Dtypes:
        Unchanged (``"native"``); values are copied bit-exactly.

    Raises:
        TypeError: ``x`` not a tensor; ``repeats`` not an integer.
        ValueError: ``x`` not 4-D; ``repeats < 1``; ``max(kv_heads, 1) * repeats`` over
            :data:`MAX_HEADS` (``2**31 - 1``, MLX's int32 dim limit); unknown ``precision``.

    Example:
        >>> import torch
        >>> repeat_kv(torch.arange(2).reshape(1, 2, 1, 1), 2).reshape(-1)
        tensor([0, 0, 1, 1])
    """
    check_precision("repeat_kv", precision)
    if not isinstance(x, torch.Tensor):
        raise type_error("repeat_kv", f"x must be a torch.Tensor but got {type(x).__name__}.")
    if not _is_int(repeats):
        raise type_error(
            "repeat_kv", f"repeats must be an int but got {type(repeats).__name__} ({repeats!r})."
        )
    if x.ndim != 4:
        raise value_error(
            "repeat_kv", f"x must be 4-D [B, kv_heads, S, D] but got shape {tuple(x.shape)}."
        )
    if repeats < 1:
        raise value_error("repeat_kv", f"repeats must be >= 1 but got {repeats}.")
    kv_heads = int(x.shape[1])
    if max(kv_heads, 1) * int(repeats) > MAX_HEADS:
        # Refused as mlx_impl refuses it: MLX dims are int32, so MLX cannot build the result.
        raise value_error(
            "repeat_kv",
            f"the head count kv_heads * repeats (and repeats itself) must be <= 2**31 - 1 = "
            f"{MAX_HEADS} (MLX's int32 dims) but "
            f"got kv_heads={kv_heads}, repeats={repeats} (x shape {tuple(x.shape)}).",
        )
    x_w = to_working(x, precision)
    assert x_w is not None
    if repeats == 1:
        return x_w
    b, kv_heads, s, d = x_w.shape
    expanded = x_w[:, :, None].expand(b, kv_heads, int(repeats), s, d)
    return expanded.reshape(b, kv_heads * int(repeats), s, d)


def _check_scores(where: str, scores: object) -> torch.Tensor:
    """Validate a ``[B, H, Lq, Lk]`` floating scores tensor and return it."""
    if not isinstance(scores, torch.Tensor):
        raise type_error(where, f"scores must be a torch.Tensor but got {type(scores).__name__}.")
    if scores.ndim != 4:
        raise value_error(
            where, f"scores must be 4-D [B, H, Lq, Lk] but got shape {tuple(scores.shape)}."
        )
    if scores.dtype not in FLOATING_DTYPES:
        raise type_error(where, f"scores must have a floating dtype but got {scores.dtype}.")
    return scores


def _mask(scores: torch.Tensor, offset: int, precision: str) -> torch.Tensor:
    """Keep ``scores[..., i, j]`` where ``j <= i + offset``; fill the rest (see module doc)."""
    lq, lk = scores.shape[-2], scores.shape[-1]
    # The fill is defined by the INPUT dtype, also for the float64 oracle.
    fill_value = mask_fill_value(scores.dtype)
    work = to_working(scores, precision)
    assert work is not None
    keep = torch.ones(lq, lk, dtype=torch.bool, device=work.device).tril(diagonal=offset)
    fill = torch.tensor(fill_value, dtype=work.dtype, device=work.device)
    return torch.where(keep, work, fill)


def apply_causal_mask(scores: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
    """Causal mask for square scores: keep ``j <= i`` (``tri(S, S, 0)``), fill the rest.

    ``y[b, h, i, j] = scores[b, h, i, j]`` if ``j <= i`` else ``fill`` (``-1e9`` clamped to
    the scores' dtype, module docstring); the output keeps the scores' dtype
    (``"native"``) or is float64 (``"float64"``).

    Args:
        scores: ``[B, H, S, S]`` floating attention logits.
        precision: ``"native"`` or ``"float64"``.

    Shape:
        ``scores: [B, H, S, S] -> [B, H, S, S]``.

    Raises:
        TypeError: ``scores`` not a tensor or not floating.
        ValueError: ``scores`` not 4-D or not square in the last two dims; unknown
            ``precision``.

    Example:
        >>> import torch
        >>> apply_causal_mask(torch.zeros(1, 1, 2, 2))[0, 0]
        tensor([[ 0.0000e+00, -1.0000e+09],
                [ 0.0000e+00,  0.0000e+00]])
    """
    check_precision("apply_causal_mask", precision)
    scores = _check_scores("apply_causal_mask", scores)
    if scores.shape[-2] != scores.shape[-1]:
        raise value_error(
            "apply_causal_mask",
            "scores must be square in the last two dims [B, H, S, S] but got shape "
            f"{tuple(scores.shape)}; use apply_causal_mask_with_offset for Lq != Lk.",
        )
    return _mask(scores, 0, precision)


def apply_causal_mask_with_offset(
    scores: torch.Tensor, offset: int, *, precision: str = "native"
) -> torch.Tensor:
    """Causal mask for queries that start ``offset`` positions into the keys.

    Keeps ``tri(Lq, Lk, offset)``: query ``i`` sees keys ``j <= i + offset``; the rest get
    the same fill as :func:`apply_causal_mask`. In Ollama ``offset`` is the KV-cache length
    and ``Lk = offset + Lq`` (bottom-right alignment, like MLX's ``mask="causal"``; PyTorch's
    ``is_causal=True`` is top-left, i.e. ``offset == 0``).

    Range of ``offset``: ``0 <= offset <= Lk - Lq`` (the last query's newest visible key
    exists; smaller offsets leave trailing keys masked for every query, as a preallocated
    cache buffer needs). ``offset == 0`` with ``Lk > Lq`` is correct here; the original's
    fallback to ``apply_causal_mask`` for ``offset == 0`` breaks when ``Lk != Lq`` and is not
    reproduced.

    Args:
        scores: ``[B, H, Lq, Lk]`` floating attention logits, ``Lq <= Lk``.
        offset: an ``int`` in ``[0, Lk - Lq]`` (``bool`` is rejected).
        precision: ``"native"`` or ``"float64"``.

    Shape:
        ``scores: [B, H, Lq, Lk] -> [B, H, Lq, Lk]``.

    Raises:
        TypeError: ``scores`` not a tensor or not floating; ``offset`` not an int.
        ValueError: ``scores`` not 4-D; ``Lq > Lk``; ``offset < 0`` or ``offset > Lk - Lq``;
            unknown ``precision``.

    Example:
        >>> import torch
        >>> apply_causal_mask_with_offset(torch.zeros(1, 1, 1, 3), 2)[0, 0]
        tensor([[0., 0., 0.]])
    """
    where = "apply_causal_mask_with_offset"
    check_precision(where, precision)
    scores = _check_scores(where, scores)
    if not _is_int(offset):
        raise type_error(
            where, f"offset must be an int but got {type(offset).__name__} ({offset!r})."
        )
    lq, lk = scores.shape[-2], scores.shape[-1]
    if lq > lk:
        raise value_error(
            where,
            f"scores [B, H, Lq, Lk] must have Lq <= Lk but got shape {tuple(scores.shape)}.",
        )
    if offset < 0 or offset > lk - lq:
        raise value_error(
            where,
            f"offset must be in [0, Lk - Lq] = [0, {lk - lq}] for scores [B, H, Lq={lq}, Lk={lk}] "
            f"but got {offset}.",
        )
    return _mask(scores, int(offset), precision)
