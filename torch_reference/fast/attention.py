"""Scaled dot-product attention: PyTorch twin of ``mlx_impl.fast.attention``.

Built from plain ops (never ``F.scaled_dot_product_attention``: its ``is_causal`` is
aligned top-left, MLX's ``"causal"`` bottom-right). What it reproduces, measured on
mlx 0.32.4's CPU back end:

* ``"causal"``: query ``i`` sees keys ``j <= i + (Lk - Lq)``.
* Boolean and causal masks put ``finfo(dtype).min`` (finite) on masked scores, so a fully
  masked row gets uniform weights and its output is the mean of ``v`` over all keys; an
  additive ``-inf`` row gives NaN. Both follow from the same ``where`` here.
* No keys (``Lk = 0``): the output is all zeros (an empty weighted sum), which is what MLX
  returns (with or without sinks); no queries, no batch or ``D = 0`` give the empty or
  zero results MLX gives. Nothing is refused for being empty.
* ``precision="native"`` keeps MLX's conventions and documented rounding points, computed
  with ordinary PyTorch ops at PyTorch speed: ``scale`` is cast to the input dtype and
  ``q * scale`` rounded; the scores ``q @ k.T`` are one ``torch.matmul`` (half inputs: in
  float32, as MLX's CPU path accumulates them) rounded to the input dtype; the mask is
  applied in the input dtype; softmax is ``torch.softmax`` in float32, rounded to the input
  dtype; ``probs @ v`` is one ``torch.matmul`` (half: in float32), rounded once.
  The summation ORDER inside the matmuls and the softmax is PyTorch's, not any MLX back
  end's (MLX's CPU BLAS sums sequentially, its Metal/CUDA kernels in tiles, and its CPU
  ``exp`` is a polynomial): float32 outputs therefore differ from MLX's by float32
  summation-order and ``exp`` errors, which ``gamma_K`` bounds against the float64 oracle
  cover (see ``tests/test_fast_attention.py`` and the conformance record); half outputs
  differ only where those float32 differences straddle a half-precision rounding boundary.
* ``precision="float64"``: every floating input widened exactly, everything in float64
  (the mask's fill value is float64's ``finfo.min``: the same uniform-row convention).
"""

from __future__ import annotations

import math
import numbers

import torch

from torch_reference._errors import type_error, value_error
from torch_reference._precision import check_precision

_WHERE = "scaled_dot_product_attention"


def _check_qkv(q: object, k: object, v: object) -> torch.dtype:
    """Validate q/k/v and return their promoted (output) dtype."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise type_error(_WHERE, f"{name} must be a torch.Tensor but got {type(t).__name__}.")
        if t.ndim != 4:
            raise value_error(
                _WHERE, f"{name} must be 4-D [B, heads, L, D] but got shape {tuple(t.shape)}."
            )
        if not t.is_floating_point():
            raise type_error(_WHERE, f"{name} must have a floating dtype but got {t.dtype}.")
    assert (
        isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
    )
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
    return torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise type_error(_WHERE, f"scale must be a real number but got {type(scale).__name__}.")
    value = float(scale)
    if not math.isfinite(value):
        raise value_error(_WHERE, f"scale must be finite but got {value}.")
    return value


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """True when a tensor of ``shape`` broadcasts to exactly ``target`` (NumPy rules)."""
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False))


def _check_mask(mask: object, out_dtype: torch.dtype, target: tuple[int, ...]) -> None:
    if mask is None:
        return
    if isinstance(mask, str):
        if mask != "causal":
            raise value_error(
                _WHERE, f"mask must be None, 'causal' or an array but got the string {mask!r}."
            )
        return
    if not isinstance(mask, torch.Tensor):
        raise type_error(
            _WHERE, f"mask must be None, 'causal' or a torch.Tensor but got {type(mask).__name__}."
        )
    if mask.dtype != torch.bool:
        if not mask.is_floating_point():
            raise type_error(
                _WHERE,
                f"mask must be boolean (keep where True) or floating (additive) but got {mask.dtype}.",
            )
        if torch.promote_types(mask.dtype, out_dtype) != out_dtype:
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


def _check_sinks(sinks: object, out_dtype: torch.dtype, hq: int) -> None:
    if sinks is None:
        return
    if not isinstance(sinks, torch.Tensor):
        raise type_error(
            _WHERE, f"sinks must be None or a torch.Tensor but got {type(sinks).__name__}."
        )
    if not sinks.is_floating_point():
        raise type_error(_WHERE, f"sinks must have a floating dtype but got {sinks.dtype}.")
    if torch.promote_types(sinks.dtype, out_dtype) != out_dtype:
        raise type_error(
            _WHERE,
            f"sinks must promote to the attention dtype {out_dtype} but got {sinks.dtype}; cast them first.",
        )
    if sinks.ndim != 1 or sinks.shape[0] != hq:
        raise value_error(
            _WHERE, f"sinks must have shape [Hq] = ({hq},) but got {tuple(sinks.shape)}."
        )


def causal_keep(lq: int, lk: int, device: torch.device | None = None) -> torch.Tensor:
    """MLX's causal mask ``[Lq, Lk]``: True where key ``j <= i + (Lk - Lq)`` (bottom-right).

    Rows ``i < Lq - Lk`` (only when ``Lq > Lk``) are all False: no visible key."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    return j <= i + (lk - lq)


def _acc_dtype(work: torch.dtype) -> torch.dtype:
    """The dtype MLX accumulates matmuls and softmax in: float32 for half inputs."""
    return torch.float32 if work in (torch.float16, torch.bfloat16) else work


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` accumulated in float32 for half inputs (as MLX's CPU path does), rounded
    once to the inputs' dtype. float32/float64 inputs: one plain ``torch.matmul``."""
    acc = _acc_dtype(a.dtype)
    if acc == a.dtype:
        return torch.matmul(a, b)
    return torch.matmul(a.to(acc), b.to(acc)).to(a.dtype)


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis computed in float32 for half scores (MLX's ``precise``
    softmax), returned rounded to the scores' dtype. An empty last axis (no keys) gives an
    empty result, from which ``probs @ v`` is all zeros -- MLX's answer too."""
    return torch.softmax(scores, dim=-1, dtype=_acc_dtype(scores.dtype)).to(scores.dtype)


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: str | torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
    precision: str = "native",
) -> torch.Tensor:
    """Multi-head attention ``softmax(scale * q @ k.T + mask) @ v`` with MLX's conventions.

    Grouped-query attention: query head ``h`` reads kv head ``h // (Hq // Hkv)``; ``k`` and
    ``v`` are passed untiled.

    Args:
        q: queries ``[B, Hq, Lq, D]``.
        k: keys ``[B, Hkv, Lk, D]``; ``Hq`` must be a multiple of ``Hkv``.
        v: values ``[B, Hkv, Lk, Dv]``.
        scale: finite real multiplier of the scores; in half precision (native) it is
            rounded to the input dtype before it multiplies ``q``, as MLX does.
        mask: ``None``; ``"causal"`` (bottom-right, MLX's alignment: query ``i`` sees keys
            ``j <= i + (Lk - Lq)``; NOT PyTorch's ``is_causal``); a boolean tensor (keep
            where True); or a floating tensor added to the scores. Tensors have rank <= 4
            and must broadcast to ``[B, Hq, Lq, Lk]``; an additive mask must promote to the
            attention dtype (float32 mask with float16 q is rejected, as MLX rejects it).
            A row whose every key is masked (boolean/causal) gets uniform weights.
        sinks: optional ``[Hq]`` per-head logits that join each softmax row and are
            dropped; their dtype must promote to the attention dtype.
        precision: ``"native"`` (MLX's rounding points in the input dtype) or
            ``"float64"`` (the oracle: all in float64, returns float64).

    Shape:
        ``q: [B, Hq, Lq, D]``, ``k: [B, Hkv, Lk, D]``, ``v: [B, Hkv, Lk, Dv]``
        ``-> [B, Hq, Lq, Dv]``.

    Dtypes:
        Output dtype is the promotion of q, k and v (``"native"``) or float64. Softmax runs
        in float32 for half inputs.

    Raises:
        TypeError / ValueError: exactly the inputs ``mlx_impl`` rejects (see there), plus
            an unknown ``precision`` (ValueError).

    Example:
        >>> import torch
        >>> q = torch.ones(1, 1, 1, 4); k = torch.ones(1, 1, 3, 4)
        >>> v = torch.arange(12.0).reshape(1, 1, 3, 4)
        >>> scaled_dot_product_attention(q, k, v, scale=0.5, mask="causal")
        tensor([[[[4., 5., 6., 7.]]]])
    """
    check_precision(_WHERE, precision)
    out_dtype = _check_qkv(q, k, v)
    scale_value = _check_scale(scale)
    b, hq, lq, _ = q.shape
    hkv, lk = k.shape[1], k.shape[2]
    _check_mask(mask, out_dtype, (b, hq, lq, lk))
    _check_sinks(sinks, out_dtype, hq)

    work = torch.float64 if precision == "float64" else out_dtype
    q, k, v = q.to(work), k.to(work), v.to(work)
    rep = hq // hkv

    # MLX multiplies q by a scalar array of q's dtype: the scale itself is rounded first.
    qs = q * torch.tensor(scale_value, dtype=work, device=q.device)
    # Query head h = kv * rep + r reads kv head kv = h // rep: stack the rep query heads of
    # each kv head as extra rows ([B, Hkv, rep * Lq, D]) instead of copying k/v rep times.
    qg = qs.reshape(b, hkv, rep * lq, q.shape[-1])
    scores = _matmul(qg, k.transpose(-1, -2)).reshape(b, hq, lq, lk)

    if mask is not None:
        if isinstance(mask, str):
            keep: torch.Tensor | None = causal_keep(lq, lk, device=q.device)
        elif mask.dtype == torch.bool:
            keep = mask.to(q.device)
        else:
            keep = None
            # Native: the additive mask is cast to the attention dtype, then added (rounded).
            scores = scores + mask.to(device=q.device, dtype=work)
        if keep is not None:
            # MLX's fill value is the dtype's lowest FINITE value, not -inf: a fully masked
            # row then has equal scores and softmax gives uniform weights, not NaN.
            # (In place: ``scores`` is this call's own fresh tensor.)
            scores.masked_fill_(~keep, torch.finfo(work).min)

    if sinks is not None:
        sink_col = sinks.to(device=q.device, dtype=work).reshape(1, hq, 1, 1).expand(b, hq, lq, 1)
        scores = torch.cat([sink_col, scores], dim=-1)

    probs = _softmax(scores)
    if sinks is not None:
        probs = probs[..., 1:]

    out = _matmul(probs.reshape(b, hkv, rep * lq, lk), v)
    return out.reshape(b, hq, lq, v.shape[-1])
