"""fast.scaled_dot_product_attention: known answers, MLX's bottom-right causal alignment
(decode, cached prefill, prefill, Lq > Lk) against PyTorch's top-left ``is_causal``, the
fully-masked-row convention, GQA head mapping, sinks, MLX and the PyTorch twin on fixed
inputs (float32/float16/bfloat16, GQA ratios 1/2/4, head dims 64/80/128) both within a
DERIVED error bound of the float64 oracle, the half-precision rounding points pinned bit for
bit on inputs where nothing else can round differently, empty axes, and errors raised
identically by both packages.

The twin computes with PyTorch's matmul and softmax, so its float32 summation order is not
MLX's (nor is MLX's the same across its CPU, Metal and CUDA back ends): outputs are compared
through :func:`sdpa_error_bound`, not bit for bit, except where bit-exactness follows from
the construction of the inputs."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlx_impl.fast.attention import scaled_dot_product_attention as mx_sdpa
from torch_reference.fast.attention import scaled_dot_product_attention as torch_sdpa

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
U32 = 2.0**-24  # unit roundoff of float32
UNIT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
"""Unit roundoff ``u_d`` of each input dtype (half the spacing at 1)."""
TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}
"""Spacing of each dtype's subnormals: the absolute part of one rounding's error."""


def to_mx(a: np.ndarray, dtype: str = "float32") -> mx.array:
    if a.dtype == np.bool_:
        return mx.array(a)
    return mx.array(a.astype(np.float32)).astype(MX_DTYPE[dtype])


def to_torch(a: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    if a.dtype == np.bool_:
        return torch.from_numpy(a)
    return torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPE[dtype])


def mx_as_torch(y: mx.array) -> torch.Tensor:
    """Exact conversion keeping the dtype (every half value is a float32 value)."""
    name = str(y.dtype).split(".")[-1]
    return torch.from_numpy(np.array(y.astype(mx.float32))).to(TORCH_DTYPE[name])


def both(
    q, k, v, *, scale, mask=None, sinks=None, dtype="float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both packages on the same numpy inputs; return (mlx, torch) as torch tensors."""
    mkw: dict[str, Any] = {}
    tkw: dict[str, Any] = {}
    if isinstance(mask, str) or mask is None:
        mkw["mask"] = tkw["mask"] = mask
    else:
        mkw["mask"], tkw["mask"] = to_mx(mask, dtype), to_torch(mask, dtype)
    if sinks is not None:
        mkw["sinks"], tkw["sinks"] = to_mx(sinks, dtype), to_torch(sinks, dtype)
    y_mx = mx_sdpa(to_mx(q, dtype), to_mx(k, dtype), to_mx(v, dtype), scale=scale, **mkw)
    y_t = torch_sdpa(to_torch(q, dtype), to_torch(k, dtype), to_torch(v, dtype), scale=scale, **tkw)
    return mx_as_torch(y_mx), y_t


def gamma(n: int, u: float = U32) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative error bound of an n-term dot
    product or sum in any order (products rounded or exact), Accuracy and Stability of
    Numerical Algorithms, section 3.1."""
    return n * u / (1 - n * u)


def sdpa_error_bound(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: str | torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elementwise bound on ``|native - float64 oracle|`` for any implementation that keeps
    MLX's rounding points but sums in ANY order (MLX's CPU, the twin). Inputs: the dtype
    tensors both libraries receive (the oracle sees the same rounded values).

    With ``u = 2^-24``, ``u_d`` the input dtype's unit roundoff, ``m_j = |scale| |q|.|k_j|``:

    * Scores: ``R_d(scale)``, ``R_d(q * scale)``, a float32 dot product over D (error
      ``<= gamma_D m_j`` in any order; half products are exact in float32), ``R_d`` of it:
      ``|s_j - S_j| <= eta_j = ((1 + u_d)^3 (1 + gamma_D) - 1) m_j``; an additive mask adds
      ``R_d(s + mask)``: ``+ u_d (|z_j| + eta_j)``. Masked keys (boolean, causal, ``-inf``)
      get weight exactly 0 in both; a fully masked boolean row is uniform in both.
    * Softmax of scores each within ``eta = max_j eta_j``: the exact weights move by a factor
      in ``[e^-2eta, e^2eta]``. Its float32 evaluation: ``x_j - max`` rounded (``u |x_j|``),
      ``exp`` (MLX's polynomial: ``<= (1.25 |x| + 3) u``, test_mlx_cpu_exp_error_envelope),
      the sum (``gamma_n``), ``1/sum`` and the product (``2u``):
      ``eps_j = (2.25 |x_j| + 5) u + gamma_n``, ``|x_j| <=`` the exact gap below the row max
      ``+ 2 eta``; then ``R_d(p)``. So ``pi_j <= P_j E_j`` with
      ``E_j = e^2eta (1 + eps_j)(1 + u_d)``, plus ``2^-125`` absolute for MLX's ``exp``
      flushing results below ``2^-126.5`` to 0.
    * Output: a float32 sum over Lk (``gamma_Lk``) of ``pi_j v_j``, then ``R_d``:
      ``|y_hat - y| <= sum_j P_j |v_j| (E_j - 1) + (gamma_Lk + u_d)(1 + gamma_Lk) sum_j P_j E_j |v_j|``
      plus the absolute (subnormal) terms.

    The ``(1 + delta)`` factors are multiplied out, not linearised; only the float32
    softmax error ``eps_j`` (below 1e-4 on these inputs) enters to first order. Rows whose
    every score is an additive ``-inf`` are NaN in both and get a NaN bound (callers
    compare NaN positions separately). Measured: errors reach <= 0.3 of the bound over
    several hundred random configurations (float32, float16, bfloat16; GQA; all masks).
    """
    dtype = q.dtype
    ud, tiny = UNIT[dtype], TINY[dtype]
    q64, k64, v64 = q.double(), k.double(), v.double()
    b, hq, lq, d = q64.shape
    rep = hq // k64.shape[1]
    k64, v64 = k64.repeat_interleave(rep, 1), v64.repeat_interleave(rep, 1)
    lk = k64.shape[2]
    z = scale * q64 @ k64.transpose(-1, -2)
    m = abs(scale) * q64.abs() @ k64.abs().transpose(-1, -2)
    eta = ((1 + ud) ** 3 * (1 + gamma(d)) - 1) * m + tiny
    visible = torch.ones(b, hq, lq, lk, dtype=torch.bool)
    if isinstance(mask, str):
        visible = visible & torch.from_numpy(visible_keys(lq, lk))
    elif mask is not None and mask.dtype == torch.bool:
        visible = visible & mask
    elif mask is not None:
        additive = mask.double()
        visible = visible & torch.isfinite(additive)
        z = z + torch.where(visible, additive, 0.0)
        eta = eta + ud * (z.abs() + eta) + tiny
    if not isinstance(mask, torch.Tensor) or mask.dtype == torch.bool:
        empty = ~visible.any(-1, keepdim=True)  # fully masked: uniform weights in both
        visible, z = visible | empty, torch.where(empty, 0.0, z)
    logits = z.masked_fill(~visible, -math.inf)
    if sinks is not None:
        logits = torch.cat([sinks.double().reshape(1, hq, 1, 1).expand(b, hq, lq, 1), logits], -1)
    n = logits.shape[-1]
    p = torch.softmax(logits, -1)
    if sinks is not None:
        p = p[..., 1:]
    row = torch.zeros(b, hq, lq, 1, dtype=torch.float64)
    top = logits.amax(-1, keepdim=True) if n else row
    eta_row = eta.masked_fill(~visible, 0.0).amax(-1, keepdim=True) if lk else row
    gap = (top - z + 2 * eta_row).masked_fill(~visible, 0.0)
    eps = U32 * (2.25 * gap + 5) + gamma(n)
    e = torch.exp(2 * eta_row) * (1 + eps) * (1 + ud)
    av = v64.abs()
    absolute = (tiny + 2.0**-125) * av.sum(-2, keepdim=True)
    weighted = (p * e) @ av + absolute
    return (p * (e - 1)) @ av + absolute + (gamma(lk) + ud) * (1 + gamma(lk)) * weighted + tiny


def oracle(q, k, v, *, scale, mask=None, sinks=None) -> torch.Tensor:
    return torch_sdpa(q, k, v, scale=scale, mask=mask, sinks=sinks, precision="float64")


def assert_within_bound(
    y: torch.Tensor, q, k, v, *, scale, mask=None, sinks=None, what: str = ""
) -> None:
    """``|y - oracle| <= sdpa_error_bound`` everywhere; NaN exactly where the oracle's is."""
    y64 = oracle(q, k, v, scale=scale, mask=mask, sinks=sinks)
    bound = sdpa_error_bound(q, k, v, scale=scale, mask=mask, sinks=sinks)
    nan = y64.isnan()
    assert torch.equal(y.isnan(), nan), what
    err = (y.double() - y64).abs()[~nan]
    assert bool((err <= bound[~nan]).all()), (what, float((err / bound[~nan]).max()))


def both_within_bound(q, k, v, *, scale, mask=None, sinks=None, dtype="float32"):
    """Run both packages on numpy inputs; assert both within the oracle bound; return them."""
    y_mx, y_t = both(q, k, v, scale=scale, mask=mask, sinks=sinks, dtype=dtype)
    tq, tk, tv = to_torch(q, dtype), to_torch(k, dtype), to_torch(v, dtype)
    tmask = mask if mask is None or isinstance(mask, str) else to_torch(mask, dtype)
    tsinks = None if sinks is None else to_torch(sinks, dtype)
    for name, y in (("mlx", y_mx), ("twin", y_t)):
        assert y.dtype == TORCH_DTYPE[dtype], name
        assert_within_bound(y, tq, tk, tv, scale=scale, mask=tmask, sinks=tsinks, what=name)
    return y_mx, y_t


def random_qkv(b, hq, hkv, lq, lk, d, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, hq, lq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, lk, d)).astype(np.float32)
    return q, k, v


def one_hot_values(lk: int) -> np.ndarray:
    """v[j] = e_j, so output row i lists the weight query i gives each key."""
    return np.eye(lk, dtype=np.float32).reshape(1, 1, lk, lk)


def visible(lq: int, lk: int, top_left: bool = False) -> np.ndarray:
    """[Lq, Lk] keep mask: bottom-right (MLX) j <= i + Lk - Lq, or top-left j <= i."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    return j <= i + (0 if top_left else lk - lq)


visible_keys = visible


# ---- known answers -------------------------------------------------------------------


def test_known_answer_two_keys() -> None:
    # scores [0, ln 2] -> weights [1/3, 2/3]; values [3, 6] -> 1 + 4 = 5.
    q = np.ones((1, 1, 1, 1), np.float32)
    k = np.array([0.0, math.log(2.0)], np.float32).reshape(1, 1, 2, 1)
    v = np.array([3.0, 6.0], np.float32).reshape(1, 1, 2, 1)
    y_mx, y_t = both(q, k, v, scale=1.0)
    assert y_mx.item() == pytest.approx(5.0, abs=1e-6)
    assert y_t.item() == pytest.approx(5.0, abs=1e-6)


def test_scale_multiplies_scores() -> None:
    # scale 0 makes every score 0: uniform weights whatever q and k.
    q, k, v = random_qkv(1, 2, 2, 3, 4, 8)
    y_mx, y_t = both(q, k, v, scale=0.0)
    expected = torch.from_numpy(v.mean(axis=2, keepdims=True)).expand(1, 2, 3, 8)
    torch.testing.assert_close(y_mx, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(y_t, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("ratio", [1, 2, 4])
def test_gqa_query_head_reads_kv_head_h_div_ratio(ratio: int) -> None:
    # q = k = 0 gives uniform weights, so output head h is the mean of v[kv head].
    hkv = 2
    hq = hkv * ratio
    q = np.zeros((1, hq, 2, 4), np.float32)
    k = np.zeros((1, hkv, 3, 4), np.float32)
    v = np.stack([np.full((3, 4), 10.0 * (g + 1), np.float32) for g in range(hkv)])[None]
    y_mx, y_t = both(q, k, v, scale=0.5)
    for h in range(hq):
        want = 10.0 * (h // ratio + 1)
        assert torch.all(y_mx[0, h] == want), (h, y_mx[0, h])
        assert torch.all(y_t[0, h] == want), (h, y_t[0, h])


def test_dv_may_differ_from_d() -> None:
    q, k, _ = random_qkv(1, 2, 1, 3, 5, 8)
    v = np.random.default_rng(3).standard_normal((1, 1, 5, 3)).astype(np.float32)
    y_mx, y_t = both_within_bound(q, k, v, scale=0.3, mask="causal")
    assert y_mx.shape == y_t.shape == (1, 2, 3, 3)


# ---- causal alignment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("lq", "lk"),
    [(1, 5), (3, 5), (4, 4)],
    ids=["decode_Lq1", "cached_prefill_Lq<Lk", "prefill_Lq=Lk"],
)
def test_causal_is_bottom_right_aligned(lq: int, lk: int) -> None:
    # q = k = 0: each query spreads its weight uniformly over the keys it sees, and the
    # one-hot values read those weights back.
    q = np.zeros((1, 1, lq, 2), np.float32)
    k = np.zeros((1, 1, lk, 2), np.float32)
    keep = visible(lq, lk)
    expected = torch.from_numpy(keep / keep.sum(axis=1, keepdims=True)).float()
    y_mx, y_t = both(q, k, one_hot_values(lk), scale=1.0, mask="causal")
    torch.testing.assert_close(y_mx[0, 0], expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(y_t[0, 0], expected, rtol=0, atol=1e-7)


def test_causal_lq_greater_than_lk_rows_without_keys_are_uniform() -> None:
    # Lq = 5 > Lk = 3: queries 0 and 1 see no key (i + Lk - Lq < 0). MLX's causal mask fills
    # masked scores with finfo.min (finite), so such a row gets UNIFORM weights over all
    # keys -- its output is the mean of v -- rather than NaN or zeros. Reproduced on purpose.
    lq, lk = 5, 3
    q = np.zeros((1, 1, lq, 2), np.float32)
    k = np.random.default_rng(0).standard_normal((1, 1, lk, 2)).astype(np.float32)
    y_mx, y_t = both(q, k, one_hot_values(lk), scale=1.0, mask="causal")
    keep = visible(lq, lk)
    assert not keep[0].any() and not keep[1].any() and keep[2:].any(axis=1).all()
    for y in (y_mx, y_t):
        torch.testing.assert_close(y[0, 0, :2], torch.full((2, lk), 1.0 / lk), rtol=0, atol=1e-7)
        assert not torch.isnan(y).any()
    # Row 2 (i + Lk - Lq = 0) sees key 0 only.
    assert y_mx[0, 0, 2].tolist() == [1.0, 0.0, 0.0]
    assert y_t[0, 0, 2].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_boolean_row_gives_mean_of_v(dtype: str) -> None:
    q, k, v = random_qkv(1, 2, 2, 3, 4, 8)
    keep = np.ones((3, 4), bool)
    keep[1] = False  # query 1 sees nothing
    y_mx, y_t = both_within_bound(q, k, v, scale=0.35, mask=keep, dtype=dtype)
    mean_v = to_torch(v, dtype).float().mean(dim=2)  # [B, H, D]
    tol = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 2e-2}[dtype]  # v rounding + 1 output ulp
    for y in (y_mx, y_t):
        torch.testing.assert_close(y[:, :, 1].float(), mean_v, rtol=0, atol=tol)


def test_fully_masked_additive_minus_inf_row_is_nan() -> None:
    # An additive -inf row is a different thing: softmax of all -inf is NaN in both.
    q, k, v = random_qkv(1, 1, 1, 2, 3, 4)
    mask = np.zeros((2, 3), np.float32)
    mask[0] = -np.inf
    y_mx, y_t = both_within_bound(q, k, v, scale=0.5, mask=mask)  # row 1 within the bound
    assert torch.isnan(y_mx[0, 0, 0]).all() and torch.isnan(y_t[0, 0, 0]).all()
    assert not torch.isnan(y_mx[0, 0, 1]).any()


def test_pytorch_is_causal_is_top_left_and_differs_from_mlx_causal() -> None:
    # Decode / cached prefill (Lq < Lk): PyTorch's is_causal hides the cache; MLX does not.
    q, k, v = random_qkv(1, 2, 2, 2, 5, 8)
    scale = 8**-0.5
    pt_causal = F.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True, scale=scale
    )
    top_left = torch_sdpa(
        torch.from_numpy(q),
        torch.from_numpy(k),
        torch.from_numpy(v),
        scale=scale,
        mask=torch.from_numpy(visible(2, 5, top_left=True)),
    )
    torch.testing.assert_close(pt_causal, top_left, rtol=0, atol=1e-6)  # PyTorch = top-left
    y_mx, _ = both(q, k, v, scale=scale, mask="causal")
    assert (pt_causal - y_mx).abs().max() > 0.1  # MLX is NOT top-left when Lq != Lk
    both_within_bound(q, k, v, scale=scale, mask="causal")  # and the twin follows MLX
    # PyTorch's top-left answer is far outside the bound of MLX's convention: the bound
    # has teeth against a convention error.
    with pytest.raises(AssertionError):
        assert_within_bound(
            pt_causal, *(torch.from_numpy(a) for a in (q, k, v)), scale=scale, mask="causal"
        )
    # With Lq == Lk the two alignments coincide.
    q, k, v = random_qkv(1, 2, 2, 4, 4, 8, seed=1)
    pt_square = F.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True, scale=scale
    )
    assert_within_bound(
        pt_square, *(torch.from_numpy(a) for a in (q, k, v)), scale=scale, mask="causal"
    )


# ---- sinks ---------------------------------------------------------------------------


def test_sink_joins_softmax_and_is_dropped() -> None:
    # One key with score 0 and a sink logit 0: the key gets weight 1/2, the sink the rest.
    q = np.zeros((1, 2, 1, 4), np.float32)
    k = np.zeros((1, 1, 1, 4), np.float32)
    v = np.full((1, 1, 1, 4), 6.0, np.float32)
    sinks = np.array([0.0, math.log(2.0)], np.float32)  # head 1: key weight 1/3
    y_mx, y_t = both(q, k, v, scale=1.0, sinks=sinks)
    for y in (y_mx, y_t):
        torch.testing.assert_close(y[0, 0, 0], torch.full((4,), 3.0), rtol=0, atol=1e-6)
        torch.testing.assert_close(y[0, 1, 0], torch.full((4,), 2.0), rtol=0, atol=1e-6)


# ---- MLX vs the twin on fixed inputs -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [1, 2, 4])
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("mask", [None, "causal"])
def test_mlx_and_twin_within_derived_bound(
    dtype: str, ratio: int, d: int, mask: str | None
) -> None:
    # Not bit for bit: the twin's float32 sums (torch.matmul, torch.softmax) run in
    # PyTorch's order, MLX's CPU back end sums sequentially and its exp is a polynomial.
    # Both must sit within sdpa_error_bound of the float64 oracle (derived in its docstring;
    # measured at <= 0.3 of it over several hundred random configurations). In half
    # precision the outputs are usually bit-identical, but not always: a float32 sum that
    # lands within a few float32 ulps of a half rounding boundary can round either way
    # (it happens here for d=80, causal, ratio 2, float16).
    q, k, v = random_qkv(1, 2 * ratio, 2, 3, 6, d, seed=ratio * 1000 + d)
    both_within_bound(q, k, v, scale=d**-0.5, mask=mask, dtype=dtype)
    # Logits in the hundreds (|q|, |k| ~ 4): far past exp's range without max subtraction.
    both_within_bound(4 * q, 4 * k, v, scale=d**-0.5, mask=mask, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "additive", "sinks"])
def test_mlx_and_twin_within_derived_bound_with_masks_and_sinks(dtype: str, kind: str) -> None:
    rng = np.random.default_rng(7)
    q, k, v = random_qkv(2, 4, 2, 3, 5, 64, seed=11)
    mask = sinks = None
    if kind == "bool":
        mask = rng.random((2, 1, 3, 5)) < 0.6  # broadcast over heads
        mask[..., 0] = True
    elif kind == "additive":
        mask = rng.standard_normal((3, 5)).astype(np.float32)  # broadcast over B and heads
    else:
        sinks = rng.standard_normal(4).astype(np.float32)
    both_within_bound(q, k, v, scale=0.125, mask=mask, sinks=sinks, dtype=dtype)


def _half_recipe(q, k, v, scale: float, dtype: torch.dtype, skip: str | None = None):
    """MLX's half-precision recipe by hand in float64, ``R`` = rounding to ``dtype``:
    ``R(R(scale) q)`` @ k.T, ``R``; softmax; ``R``; @ v, ``R``. ``skip`` drops one rounding
    point (or moves the scale after the matmul). Returns (y, scores, weights)."""

    def r(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).double()

    sc = torch.tensor(scale, dtype=torch.float64)
    sc_d = sc if skip == "scale_not_rounded" else r(sc)
    if skip == "scale_after_matmul":
        scores = r((q @ k.transpose(-1, -2)) * sc_d)
    else:
        scores = r(q * sc_d) @ k.transpose(-1, -2)
        scores = scores if skip == "scores_not_rounded" else r(scores)
    p = torch.softmax(scores, -1)
    weights = p if skip == "weights_not_rounded" else r(p)
    return r(weights @ v), scores, p, weights


def _exact_in_float32(terms: torch.Tensor) -> bool:
    """True when every sum over the last axis of ``terms`` is exact in float32 in ANY order:
    all terms are multiples of one power of two g and the sum of their magnitudes is below
    2^24 g, so every partial sum is a float32 integer multiple of g."""
    nonzero = terms[terms != 0].abs()
    if nonzero.numel() == 0:
        return True
    g = 2.0 ** math.floor(math.log2(float(nonzero.min())))
    while not bool(torch.all(torch.remainder(terms / g, 1) == 0)):
        g /= 2
    return bool(terms.abs().sum(-1).max() < 2**24 * g)


@pytest.mark.parametrize(("dtype", "seed"), [("float16", 1), ("bfloat16", 0)])
def test_half_precision_rounding_points_bit_for_bit(dtype: str, seed: int) -> None:
    # MLX in half precision: scale rounded to the dtype, q * scale rounded, float32 scores
    # rounded, float32 softmax rounded, float32 weighted sum rounded once. Bit-exactness of
    # MLX and the twin with the hand recipe is DERIVED here, not measured: q are dtype
    # values, k and v small integers, so every float32 sum is exact in any order
    # (asserted), and the float32 softmax (within eps_j of the exact weights, see
    # sdpa_error_bound) cannot cross a rounding boundary of the dtype (asserted). Each
    # skipped rounding point changes the answer (asserted), so each one is pinned.
    tdt = TORCH_DTYPE[dtype]
    rng = np.random.default_rng(seed)
    qn = (rng.standard_normal((1, 1, 4, 8)) * 2).astype(np.float32)
    kn = rng.integers(-4, 5, (1, 1, 4, 8)).astype(np.float32)
    vn = rng.integers(-4, 5, (1, 1, 4, 2)).astype(np.float32)
    scale = 80**-0.5  # rounds to 0.11181640625 in bfloat16
    q, k, v = (to_torch(a, dtype).double() for a in (qn, kn, vn))
    y, scores, p, weights = _half_recipe(q, k, v, scale, tdt)
    qs = (q * torch.tensor(scale).to(tdt).double()).to(tdt).double()
    assert _exact_in_float32(qs.unsqueeze(-2) * k.unsqueeze(-3))  # q @ k.T, any order
    assert _exact_in_float32((weights.unsqueeze(-1) * v.unsqueeze(-3)).transpose(-1, -2))
    gap = scores.amax(-1, keepdim=True) - scores
    eps = U32 * (2.25 * gap + 5) + gamma(scores.shape[-1])
    assert torch.equal((p * (1 - eps)).to(tdt), (p * (1 + eps)).to(tdt))  # no boundary near
    for skip in (
        "scale_not_rounded",
        "scale_after_matmul",
        "scores_not_rounded",
        "weights_not_rounded",
    ):
        assert not torch.equal(_half_recipe(q, k, v, scale, tdt, skip)[0], y), skip
    y_mx, y_t = both(qn, kn, vn, scale=scale, dtype=dtype)
    assert torch.equal(y_mx.double(), y) and torch.equal(y_t.double(), y)
    assert y_mx.dtype == y_t.dtype == tdt


def test_float64_oracle() -> None:
    q, k, v = random_qkv(1, 4, 2, 3, 5, 16, seed=2)
    keep = visible(3, 5)
    args = (to_torch(q), to_torch(k), to_torch(v))
    y64 = torch_sdpa(*args, scale=0.25, mask="causal", precision="float64")
    assert y64.dtype == torch.float64
    # Plain float64 attention with repeated kv heads and the bottom-right mask.
    q64, k64, v64 = (torch.from_numpy(a).double() for a in (q, k, v))
    k64, v64 = k64.repeat_interleave(2, dim=1), v64.repeat_interleave(2, dim=1)
    s = (q64 * 0.25) @ k64.transpose(-1, -2)
    s = s.masked_fill(~torch.from_numpy(keep), -math.inf)
    torch.testing.assert_close(y64, torch.softmax(s, -1) @ v64, rtol=1e-12, atol=1e-12)
    native = torch_sdpa(*args, scale=0.25, mask="causal")
    assert_within_bound(native, *args, scale=0.25, mask="causal")


# ---- errors: both packages reject the same inputs ------------------------------------


def _qkv(shape_q=(1, 2, 3, 8), shape_k=(1, 2, 4, 8), shape_v=(1, 2, 4, 8)):
    return np.ones(shape_q, np.float32), np.ones(shape_k, np.float32), np.ones(shape_v, np.float32)


ERROR_CASES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("q_rank_3", {"qkv": _qkv(shape_q=(2, 3, 8))}, ValueError),
    ("k_rank_5", {"qkv": _qkv(shape_k=(1, 1, 2, 4, 8))}, ValueError),
    ("batch_mismatch", {"qkv": _qkv(shape_k=(2, 2, 4, 8), shape_v=(2, 2, 4, 8))}, ValueError),
    ("head_dim_mismatch", {"qkv": _qkv(shape_k=(1, 2, 4, 4))}, ValueError),
    ("kv_heads_mismatch", {"qkv": _qkv(shape_v=(1, 1, 4, 8))}, ValueError),
    ("kv_length_mismatch", {"qkv": _qkv(shape_v=(1, 2, 5, 8))}, ValueError),
    ("hq_not_multiple_of_hkv", {"qkv": _qkv(shape_q=(1, 3, 3, 8))}, ValueError),
    ("unknown_mask_string", {"mask": "upper"}, ValueError),
    ("mask_not_broadcastable", {"mask_np": np.ones((3, 5), bool)}, ValueError),
    ("mask_rank_5", {"mask_np": np.ones((1, 1, 1, 3, 4), bool)}, ValueError),
    ("mask_int_dtype", {"mask_np": np.zeros((3, 4), np.int32)}, TypeError),
    (
        "float32_mask_with_float16_q",
        {"dtype": "float16", "mask_np": np.zeros((3, 4), np.float32), "mask_dtype": "float32"},
        TypeError,
    ),
    (
        "bfloat16_mask_with_float16_q",
        {"dtype": "float16", "mask_np": np.zeros((3, 4), np.float32), "mask_dtype": "bfloat16"},
        TypeError,
    ),
    ("sinks_wrong_shape", {"sinks": np.zeros(3, np.float32)}, ValueError),
    (
        "float32_sinks_with_float16_q",
        {"dtype": "float16", "sinks": np.zeros(2, np.float32), "sinks_dtype": "float32"},
        TypeError,
    ),
    ("scale_nan", {"scale": float("nan")}, ValueError),
    ("scale_inf", {"scale": float("inf")}, ValueError),
    ("scale_string", {"scale": "0.5"}, TypeError),
    ("scale_bool", {"scale": True}, TypeError),
    ("q_integer_dtype", {"int_q": True}, TypeError),
    ("q_not_an_array", {"list_q": True}, TypeError),
]


def _call(lib: str, case: dict[str, Any]) -> Any:
    q, k, v = case.get("qkv", _qkv())
    dtype = case.get("dtype", "float32")
    conv: Any = to_mx if lib == "mlx" else to_torch
    fn: Any = mx_sdpa if lib == "mlx" else torch_sdpa
    tq, tk, tv = conv(q, dtype), conv(k, dtype), conv(v, dtype)
    if case.get("int_q"):
        tq = mx.array(q.astype(np.int32)) if lib == "mlx" else torch.from_numpy(q.astype(np.int32))
    if case.get("list_q"):
        tq = q.tolist()
    kw: dict[str, Any] = {"scale": case.get("scale", 0.5), "mask": case.get("mask")}
    if "mask_np" in case:
        m = case["mask_np"]
        if m.dtype in (np.bool_, np.int32):
            kw["mask"] = mx.array(m) if lib == "mlx" else torch.from_numpy(m)
        else:
            kw["mask"] = conv(m, case.get("mask_dtype", dtype))
    if "sinks" in case:
        kw["sinks"] = conv(case["sinks"], case.get("sinks_dtype", dtype))
    return fn(tq, tk, tv, **kw)


@pytest.mark.parametrize(("name", "case", "exc"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors(lib: str, name: str, case: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^\[scaled_dot_product_attention\] "):
        _call(lib, case)


def test_mlx_itself_rejects_a_float32_mask_with_float16_q() -> None:
    # Why the packages reject it up front: MLX raises at graph-build time.
    q = mx.ones((1, 1, 2, 4), dtype=mx.float16)
    with pytest.raises(ValueError, match="Mask type must promote"):
        mx.fast.scaled_dot_product_attention(
            q, q, q, scale=1.0, mask=mx.zeros((2, 2), dtype=mx.float32)
        )


def test_torch_rejects_unknown_precision() -> None:
    q = torch.ones(1, 1, 2, 4)
    with pytest.raises(ValueError, match=r"precision"):
        torch_sdpa(q, q, q, scale=1.0, precision="float32")


def test_valid_edge_inputs_are_accepted_by_both() -> None:
    # Rank-0..4 masks that broadcast, an int scale, numpy float scale, mixed q/k/v dtypes.
    q, k, v = _qkv()
    numpy_scale: Any = np.float32(1.0)
    for m in (np.array(True), np.ones(4, bool), np.ones((1, 1, 1, 4), bool)):
        y_mx = mx_sdpa(to_mx(q), to_mx(k), to_mx(v), scale=1, mask=mx.array(m))
        y_t = torch_sdpa(
            to_torch(q), to_torch(k), to_torch(v), scale=numpy_scale, mask=torch.from_numpy(m)
        )
        assert tuple(y_mx.shape) == tuple(y_t.shape) == (1, 2, 3, 8)
    y_mx = mx_sdpa(to_mx(q, "float16"), to_mx(k), to_mx(v, "bfloat16"), scale=0.5)
    y_t = torch_sdpa(to_torch(q, "float16"), to_torch(k), to_torch(v, "bfloat16"), scale=0.5)
    assert y_mx.dtype == mx.float32 and y_t.dtype == torch.float32


# ---- MLX facts the bound relies on ---------------------------------------------------


def test_mlx_cpu_exp_error_envelope() -> None:
    # MLX's CPU exp evaluates 2^y with y = float32(x * float32(log2 e)): rounding y costs up
    # to |x| u relative, so it is not correctly rounded (torch.exp is, to ~1 u). The bound in
    # sdpa_error_bound uses (1.25 |x| + 3) u; it flushes to 0 only below 2^-126.5.
    x = torch.linspace(-87.0, 10.0, 400_001, dtype=torch.float32)
    exact = torch.exp(x.double())
    rel = lambda t: (t.double() - exact).abs() / exact / U32  # noqa: E731
    mlx_rel = rel(torch.from_numpy(np.array(mx.exp(mx.array(x.numpy())))))
    assert bool((mlx_rel <= 1.25 * x.double().abs() + 3).all())
    assert float(mlx_rel.max()) > 16 and float(rel(torch.exp(x)).max()) <= 2
    tiny = torch.linspace(-88.5, -87.0, 10_001, dtype=torch.float32)
    flushed = torch.from_numpy(np.array(mx.exp(mx.array(tiny.numpy())))) == 0
    assert bool(flushed.any()) and bool((torch.exp(tiny.double())[flushed] < 2.0**-125).all())


@pytest.mark.parametrize(
    ("b", "lq", "lk", "d"),
    [(1, 3, 0, 4), (1, 0, 3, 4), (0, 3, 3, 4)],
    ids=["no_keys", "no_queries", "no_batch"],
)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_sinks", [False, True])
def test_empty_axes(b: int, lq: int, lk: int, d: int, dtype: str, with_sinks: bool) -> None:
    # MLX returns zeros when there is no key (an empty weighted sum, also with sinks, which
    # then take all the weight) and an empty result when there is no query or batch row;
    # the twin agrees in both precisions (a contract choice: the empty sum, not an error).
    q = np.ones((b, 2, lq, d), np.float32)
    k = np.ones((b, 1, lk, d), np.float32)
    sinks = np.array([0.5, -1.0], np.float32) if with_sinks else None
    y_mx, y_t = both(q, k, k, scale=1.0, mask="causal", sinks=sinks, dtype=dtype)
    assert y_mx.shape == y_t.shape == (b, 2, lq, d)
    assert y_mx.dtype == y_t.dtype == TORCH_DTYPE[dtype]
    assert torch.equal(y_mx, y_t) and not y_t.any()
    args = (to_torch(q), to_torch(k), to_torch(k))
    y64 = torch_sdpa(*args, scale=1.0, precision="float64")
    assert y64.shape == (b, 2, lq, d) and not y64.any()


@pytest.mark.parametrize("mask", [None, "causal"])
def test_zero_head_dim_gives_uniform_weights(mask: str | None) -> None:
    # D = 0: every score is the empty dot product 0, so each query averages the keys it
    # sees (bottom-right causal) -- MLX and the twin alike, bit for bit (exact sums).
    # Lq = Lk = 2: the rows see 1 or 2 keys, so the weights (1, 1/2) and sums are exact.
    q = np.ones((1, 2, 2, 0), np.float32)
    k = np.ones((1, 1, 2, 0), np.float32)
    v = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    y_mx, y_t = both(q, k, v, scale=1.0, mask=mask)
    keep = visible(2, 2) if mask else np.ones((2, 2), bool)
    want = torch.from_numpy((keep / keep.sum(1, keepdims=True)) @ v[0, 0]).float()
    assert torch.equal(y_mx[0, 0], want) and torch.equal(y_t[0, 0], want)
    assert torch.equal(y_mx, y_t)
