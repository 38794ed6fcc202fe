"""How MLX's CPU back end (mlx 0.32.4, x86_64 wheel) orders and rounds its arithmetic, as
far as the fast ops' reference needs it. Every fact here was measured against MLX:

* Reductions over the last axis (``sum``, ``mean``, the softmax normaliser) accumulate
  SEQUENTIALLY: ``((x0 + x1) + x2) + ...``, in float32 for float16/bfloat16/float32 input.
* float32 ``matmul`` is the reference (netlib) BLAS ``sgemm``: every output is a sequential
  sum over k of products each rounded to float32 (no fused multiply-add). float16/bfloat16
  ``matmul`` accumulates the (exact) products sequentially in float32 and rounds once.
* ``exp`` is not libm's: it evaluates ``2^y`` with ``y = float32(x * float32(log2 e))``
  (``float32(log2 e) = 1.44269502...``), giving 0 below ``y = -126.5`` (no subnormals) and
  inf for ``x > 88``.
  Rounding ``y`` to float32 is its dominant error (up to ~64 float32 ulp at |x| ~ 80);
  computing ``2^y`` exactly from that same ``y`` lands within 1 ulp of MLX (93% identical,
  measured on 2e6 points in [-87, 0]), where ``torch.exp`` is up to 64 ulp away.
"""

from __future__ import annotations

import numpy as np
import torch

_LOG2E_F32 = float(np.float32(1.442695))  # the float32 constant MLX multiplies by
_HALF = (torch.float16, torch.bfloat16)


def sequential_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis IN ORDER (``((t0 + t1) + t2) + ...``), keeping the axis.

    Accumulates in ``t``'s dtype (float32 or float64). ``numpy.cumsum`` accumulates
    sequentially in the array's dtype; ``torch.cumsum`` accumulates float32 in float64 and
    ``torch.sum`` sums in blocks, so neither reproduces MLX's order."""
    n = t.shape[-1]
    if n == 0:
        return torch.zeros((*t.shape[:-1], 1), dtype=t.dtype, device=t.device)
    array = t.detach().cpu().contiguous().numpy()
    with np.errstate(all="ignore"):  # inf/NaN inputs propagate as in MLX, silently
        total = np.cumsum(array, axis=-1)[..., -1:]
    return torch.from_numpy(np.ascontiguousarray(total)).to(t.device)


def sequential_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with MLX's CPU accumulation order, NOT rounded to the inputs' dtype.

    Shapes: ``a: [..., M, K]``, ``b: [..., K, N]`` (batch axes broadcast) ``-> [..., M, N]``
    in float32 (float64 when either input is float64: netlib dgemm, same order). Each output
    is ``((p0 + p1) + p2) + ...`` with ``p_k = a_k * b_k`` rounded before it is added
    (float32 inputs: netlib sgemm, no FMA; half inputs: the products are exact in float32,
    so only the order of the float32 additions matters).

    K vectorised multiply-adds over the ``[..., M, N]`` output (NumPy, whose elementwise
    float32 ops round each result) instead of one BLAS call: a reproduction, not a fast path.
    """
    acc_dtype = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    m, k_len, n = a.shape[-2], a.shape[-1], b.shape[-1]
    a_np = a.detach().to(acc_dtype).cpu().expand(*batch, m, k_len).numpy()
    b_np = b.detach().to(acc_dtype).cpu().expand(*batch, k_len, n).numpy()
    a_cols = np.ascontiguousarray(np.moveaxis(a_np, -1, 0))[..., None]  # [K, ..., M, 1]
    b_rows = np.ascontiguousarray(np.moveaxis(b_np, -2, 0))[..., None, :]  # [K, ..., 1, N]
    acc = np.zeros((*batch, m, n), dtype=a_np.dtype)
    product = np.empty_like(acc)
    with np.errstate(all="ignore"):  # inf/NaN propagate as in MLX, silently
        for k in range(k_len):
            np.multiply(a_cols[k], b_rows[k], out=product)  # rounded product
            np.add(acc, product, out=acc)  # then the rounded sum: no FMA
    return torch.from_numpy(acc).to(a.device)


def exp(x: torch.Tensor) -> torch.Tensor:
    """MLX's CPU ``exp`` of a float32 tensor, to within 1 float32 ulp (see the module doc).

    Below ``y = -126.5`` (``x ~ -87.68``) MLX builds ``2^round(y)`` in the exponent field,
    which is then 0: the result is 0, not a subnormal, and so it is here."""
    y = x * torch.tensor(_LOG2E_F32, dtype=torch.float32, device=x.device)  # rounded to float32
    out = torch.exp2(y.double()).to(torch.float32)
    underflow = (x < -88.0) | (torch.floor(y + 0.5) <= -127.0)
    out = torch.where(underflow, torch.zeros_like(out), out)
    return torch.where(x > 88.0, torch.full_like(out, float("inf")), out)


def softmax_last(scores: torch.Tensor) -> torch.Tensor:
    """MLX's CPU softmax over the last axis in float32 (``precise`` for half inputs).

    ``e = exp(x - max)``, ``total = sequential_sum(e)``, ``out = e * (1 / total)``, all in
    float32 (float64 for float64 scores, whose ``exp`` MLX still evaluates in float32); the
    result is not rounded to the scores' dtype (the caller does that)."""
    acc_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    x = scores.to(acc_dtype)
    if x.shape[-1] == 0:  # no keys: nothing to normalise (amax would raise)
        return x
    e = exp((x - x.amax(dim=-1, keepdim=True)).to(torch.float32)).to(acc_dtype)
    return e * (1.0 / sequential_sum(e))
