"""fast.scaled_dot_product_attention: known answers, MLX's bottom-right causal alignment
(decode, cached prefill, prefill, Lq > Lk) against PyTorch's top-left ``is_causal``, the
fully-masked-row convention, GQA head mapping, sinks, MLX vs the PyTorch twin on fixed
inputs (float32/float16/bfloat16, GQA ratios 1/2/4, head dims 64/80/128), the float64
oracle, and errors raised identically by both packages."""

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
    y_mx, y_t = both(q, k, v, scale=0.3, mask="causal")
    assert y_mx.shape == y_t.shape == (1, 2, 3, 3)
    torch.testing.assert_close(y_t, y_mx, rtol=0, atol=1e-6)


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
    y_mx, y_t = both(q, k, v, scale=0.35, mask=keep, dtype=dtype)
    if dtype == "float32":  # see test_mlx_matches_twin for this float32 bound
        assert (y_mx - y_t).abs().max().item() <= 4 * _ulp(float(np.abs(v).max()))
    else:
        assert torch.equal(y_mx, y_t)
    mean_v = to_torch(v, dtype).float().mean(dim=2)  # [B, H, D]
    tol = {"float32": 1e-6, "float16": 2e-3, "bfloat16": 2e-2}[dtype]  # v rounding + 1 output ulp
    torch.testing.assert_close(y_mx[:, :, 1].float(), mean_v, rtol=0, atol=tol)


def test_fully_masked_additive_minus_inf_row_is_nan() -> None:
    # An additive -inf row is a different thing: softmax of all -inf is NaN in both.
    q, k, v = random_qkv(1, 1, 1, 2, 3, 4)
    mask = np.zeros((2, 3), np.float32)
    mask[0] = -np.inf
    y_mx, y_t = both(q, k, v, scale=0.5, mask=mask)
    assert torch.isnan(y_mx[0, 0, 0]).all() and torch.isnan(y_t[0, 0, 0]).all()
    assert not torch.isnan(y_mx[0, 0, 1]).any()
    torch.testing.assert_close(y_t[0, 0, 1], y_mx[0, 0, 1], rtol=0, atol=1e-6)


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
    y_mx, y_t = both(q, k, v, scale=scale, mask="causal")
    assert (pt_causal - y_mx).abs().max() > 0.1  # MLX is NOT top-left when Lq != Lk
    torch.testing.assert_close(y_t, y_mx, rtol=0, atol=1e-6)  # and the twin follows MLX
    # With Lq == Lk the two alignments coincide.
    q, k, v = random_qkv(1, 2, 2, 4, 4, 8, seed=1)
    pt_square = F.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(v), is_causal=True, scale=scale
    )
    y_mx, _ = both(q, k, v, scale=scale, mask="causal")
    torch.testing.assert_close(y_mx, pt_square, rtol=0, atol=1e-6)


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


def _ulp(x: float) -> float:
    return 2.0 ** (math.floor(math.log2(x)) - 23)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ratio", [1, 2, 4])
@pytest.mark.parametrize("d", [64, 80, 128])
@pytest.mark.parametrize("mask", [None, "causal"])
def test_mlx_matches_twin(dtype: str, ratio: int, d: int, mask: str | None) -> None:
    q, k, v = random_qkv(1, 2 * ratio, 2, 3, 6, d, seed=ratio * 1000 + d)
    y_mx, y_t = both(q, k, v, scale=d**-0.5, mask=mask, dtype=dtype)
    assert y_mx.dtype == y_t.dtype == TORCH_DTYPE[dtype]
    if dtype == "float32":
        # Not bit-exact: the twin replays MLX's summation orders and its exp's float32
        # rounding of x * log2(e), but MLX's exp then evaluates 2^y with a polynomial that
        # is up to 1 ulp off. That moves a softmax weight by ~1 float32 ulp, so the output
        # (a convex combination of v rows) moves by a few ulps of max|v|. Measured: 99.3% of
        # elements identical, worst 2 ulp(max|v|) over 720 such configurations; asserted at 4.
        bound = 4 * _ulp(float(np.abs(v).max()))
        assert (y_mx - y_t).abs().max().item() <= bound
    else:
        # Half precision: the twin reproduces every rounding point (scale and q*scale in
        # the dtype, float32-accumulated matmuls rounded once, float32 softmax rounded).
        assert torch.equal(y_mx, y_t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bool", "additive", "sinks"])
def test_mlx_matches_twin_with_masks_and_sinks(dtype: str, kind: str) -> None:
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
    y_mx, y_t = both(q, k, v, scale=0.125, mask=mask, sinks=sinks, dtype=dtype)
    if dtype == "float32":
        assert (y_mx - y_t).abs().max().item() <= 4 * _ulp(float(np.abs(v).max()))  # as above
    else:
        assert torch.equal(y_mx, y_t)


def test_half_precision_rounds_the_scale_first() -> None:
    # MLX multiplies q by scale cast to q's dtype. With bfloat16 and scale = 1/sqrt(80) the
    # rounded scale is 0.11181640625 (not 0.1118034): the twin must round it too.
    q, k, v = random_qkv(1, 2, 2, 2, 4, 80, seed=5)
    scale = 80**-0.5
    y_mx, y_t = both(q, k, v, scale=scale, dtype="bfloat16")
    assert torch.equal(y_mx, y_t)
    assert float(torch.tensor(scale, dtype=torch.bfloat16)) != scale


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
    torch.testing.assert_close(native.double(), y64, rtol=0, atol=1e-5)


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


# ---- the MLX CPU numerics the twin replays (torch_reference.fast._mlx_cpu) -----------


def test_mlx_cpu_exp_rounds_x_log2e_to_float32() -> None:
    # MLX's CPU exp evaluates 2^y with y = float32(x * float32(log2 e)): up to ~64 float32
    # ulp from a correctly rounded exp at |x| ~ 80. The twin's emulation reproduces that
    # rounding point and lands within 1 ulp; torch.exp does not.
    from torch_reference.fast import _mlx_cpu

    x = torch.linspace(-90.0, 10.0, 200_001)
    mlx_exp = torch.from_numpy(np.array(mx.exp(mx.array(x.numpy()))))

    def ulps(a: torch.Tensor) -> int:
        return int((a.view(torch.int32).long() - mlx_exp.view(torch.int32).long()).abs().max())

    assert ulps(_mlx_cpu.exp(x)) <= 1
    assert ulps(torch.exp(x)) > 16
    assert mx.exp(mx.array(-87.7)).item() == 0.0  # no subnormals below y = -126.5
    assert _mlx_cpu.exp(torch.tensor([-87.7])).item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlx_cpu_matmul_order_is_sequential(dtype: str) -> None:
    # float32: netlib sgemm, products rounded, summed in order; halves: float32 accumulation
    # in order, rounded once. The twin's sequential_matmul reproduces both bit for bit.
    from torch_reference.fast import _mlx_cpu

    rng = np.random.default_rng(9)
    a = rng.standard_normal((2, 3, 5, 70)).astype(np.float32)
    b = rng.standard_normal((2, 1, 70, 6)).astype(np.float32)
    y_mx = mx_as_torch(to_mx(a, dtype) @ to_mx(b, dtype))
    y_t = _mlx_cpu.sequential_matmul(to_torch(a, dtype), to_torch(b, dtype)).to(TORCH_DTYPE[dtype])
    assert torch.equal(y_mx, y_t)


@pytest.mark.parametrize(("lq", "lk"), [(3, 0), (0, 3)], ids=["no_keys", "no_queries"])
def test_empty_sequence_axes(lq: int, lk: int) -> None:
    # MLX returns zeros when there is no key (an empty weighted sum) and an empty result when
    # there is no query; the twin agrees in both precisions.
    q = np.ones((1, 2, lq, 4), np.float32)
    k = np.ones((1, 1, lk, 4), np.float32)
    y_mx, y_t = both(q, k, k, scale=1.0, mask="causal")
    assert y_mx.shape == y_t.shape == (1, 2, lq, 4)
    assert torch.equal(y_mx, y_t) and not y_t.any()
    y64 = torch_sdpa(to_torch(q), to_torch(k), to_torch(k), scale=1.0, precision="float64")
    assert y64.shape == (1, 2, lq, 4) and not y64.any()
