"""repeat_kv, apply_causal_mask and apply_causal_mask_with_offset: known answers, the fill
value's dtype (a deliberate change from the original, pinned), alignment with MLX's SDPA
"causal" mode, MLX vs the PyTorch twin, and errors."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_impl.nn import attention_masks as mx_masks
from torch_reference.nn import attention_masks as torch_masks

MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FILL = {"float32": -1e9, "float16": -65504.0, "bfloat16": -998244352.0}


def as_np(y) -> np.ndarray:
    if isinstance(y, mx.array):
        return np.array(y.astype(mx.float32)) if y.dtype != mx.float64 else np.array(y)
    return y.double().numpy() if y.is_floating_point() else y.numpy()


def random_scores(shape, dtype, seed=0):
    s = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return mx.array(s).astype(MX_DTYPE[dtype]), torch.from_numpy(s).to(TORCH_DTYPE[dtype])


# -------------------------------------------------------------------------- repeat_kv


def test_repeat_kv_each_head_repeated_in_a_row():
    x = np.arange(2 * 3 * 2 * 1).reshape(2, 3, 2, 1).astype(np.float32)  # [B=2, kv=3, S=2, D=1]
    expected = np.repeat(x, 2, axis=1)  # heads kv0, kv0, kv1, kv1, kv2, kv2
    y_mx = mx_masks.repeat_kv(mx.array(x), 2)
    y_t = torch_masks.repeat_kv(torch.from_numpy(x), 2)
    assert y_mx.shape == tuple(y_t.shape) == (2, 6, 2, 1)
    np.testing.assert_array_equal(as_np(y_mx), expected)
    np.testing.assert_array_equal(as_np(y_t), expected)
    # head h is kv head h // repeats, spelled out on batch 0
    assert as_np(y_mx)[0, :, 0, 0].tolist() == [0.0, 0.0, 2.0, 2.0, 4.0, 4.0]


@pytest.mark.parametrize("dtype", list(MX_DTYPE))
def test_repeat_kv_bit_exact_and_matches_repeat_interleave(dtype):
    x_mx, x_t = random_scores((1, 2, 3, 4), dtype)
    y_mx, y_t = mx_masks.repeat_kv(x_mx, 3), torch_masks.repeat_kv(x_t, 3)
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(as_np(y_mx), as_np(y_t))
    assert torch.equal(y_t, torch.repeat_interleave(x_t, 3, dim=1))
    assert torch_masks.repeat_kv(x_t, 3, precision="float64").dtype == torch.float64


def test_repeat_kv_integer_input_allowed():
    x = np.arange(4, dtype=np.int32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(
        np.array(mx_masks.repeat_kv(mx.array(x), 2)), np.repeat(x, 2, axis=1)
    )
    np.testing.assert_array_equal(
        torch_masks.repeat_kv(torch.from_numpy(x), 2).numpy(), np.repeat(x, 2, axis=1)
    )


def test_repeat_kv_one_returns_the_same_object():
    x_mx, x_t = random_scores((1, 2, 3, 4), "float32")
    assert mx_masks.repeat_kv(x_mx, 1) is x_mx
    assert torch_masks.repeat_kv(x_t, 1) is x_t
    widened = torch_masks.repeat_kv(x_t, 1, precision="float64")
    assert widened.dtype == torch.float64 and torch.equal(widened, x_t.double())


# ----------------------------------------------------------------------- causal masks


def test_causal_mask_3x3_known_answer():
    scores = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    m = -1e9
    expected = np.array([[[[1, m, m], [4, 5, m], [7, 8, 9]]]], dtype=np.float32)
    np.testing.assert_array_equal(as_np(mx_masks.apply_causal_mask(mx.array(scores))), expected)
    np.testing.assert_array_equal(
        as_np(torch_masks.apply_causal_mask(torch.from_numpy(scores))), expected
    )


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_causal_mask_with_offset_2x5_known_answer(offset):
    """2 queries, 5 keys: query i keeps keys j <= i + offset (np.tri(2, 5, offset))."""
    scores = np.arange(1, 11, dtype=np.float32).reshape(1, 1, 2, 5)
    keep = np.array([[j <= i + offset for j in range(5)] for i in range(2)])
    assert np.array_equal(keep, np.tri(2, 5, offset, dtype=bool))
    expected = np.where(keep, scores, np.float32(-1e9))
    y_mx = mx_masks.apply_causal_mask_with_offset(mx.array(scores), offset)
    y_t = torch_masks.apply_causal_mask_with_offset(torch.from_numpy(scores), offset)
    np.testing.assert_array_equal(as_np(y_mx), expected)
    np.testing.assert_array_equal(as_np(y_t), expected)


def test_offset_zero_with_more_keys_is_top_left_not_the_originals_crash():
    """The original falls back to apply_causal_mask when offset == 0, which builds a
    [Lq, Lq] mask: with Lk != Lq it cannot broadcast against the scores. Here offset 0 with
    Lk > Lq is the top-left causal mask (j <= i), like PyTorch's is_causal=True."""
    scores = mx.zeros((1, 1, 2, 5))
    with pytest.raises(ValueError, match="broadcast"):  # what the original's fallback does
        mx.eval(mx.where(mx.tri(2, 2, dtype=mx.bool_), scores, mx.array(-1e9)))
    y = as_np(mx_masks.apply_causal_mask_with_offset(scores, 0))[0, 0]
    assert (y == 0).tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
    ]
    top_left = torch.ones(2, 5, dtype=torch.bool).tril()  # PyTorch's is_causal pattern
    assert np.array_equal(y == 0, top_left.numpy())


def test_square_offset_zero_equals_apply_causal_mask():
    x_mx, x_t = random_scores((2, 3, 4, 4), "float32")
    assert mx.array_equal(
        mx_masks.apply_causal_mask_with_offset(x_mx, 0), mx_masks.apply_causal_mask(x_mx)
    ).item()
    assert torch.equal(
        torch_masks.apply_causal_mask_with_offset(x_t, 0), torch_masks.apply_causal_mask(x_t)
    )


def test_offset_lk_minus_lq_matches_mlx_sdpa_causal():
    """Ollama's use (offset = cache length, Lk = offset + Lq) is bottom-right alignment,
    exactly MLX's SDPA mask="causal": using our additive mask instead gives the same output."""
    q = mx.random.normal((1, 2, 3, 8), key=mx.random.key(0))
    k = mx.random.normal((1, 2, 7, 8), key=mx.random.key(1))
    v = mx.random.normal((1, 2, 7, 8), key=mx.random.key(2))
    additive = mx_masks.apply_causal_mask_with_offset(mx.zeros((1, 1, 3, 7)), 7 - 3)
    causal = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask="causal")
    masked = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=additive)
    assert mx.array_equal(causal, masked).item()


@pytest.mark.parametrize("dtype", list(MX_DTYPE))
@pytest.mark.parametrize(
    ("lq", "lk", "offset"), [(4, 4, 0), (1, 9, 8), (3, 8, 5), (3, 8, 2), (5, 5, 0)]
)
def test_mlx_and_twin_bit_exact(dtype, lq, lk, offset):
    x_mx, x_t = random_scores((2, 3, lq, lk), dtype, seed=lq * 31 + lk)
    y_mx = mx_masks.apply_causal_mask_with_offset(x_mx, offset)
    y_t = torch_masks.apply_causal_mask_with_offset(x_t, offset)
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(as_np(y_mx), as_np(y_t))
    y_64 = torch_masks.apply_causal_mask_with_offset(x_t, offset, precision="float64")
    assert y_64.dtype == torch.float64
    np.testing.assert_array_equal(y_64.numpy(), as_np(y_t))  # same fill, kept values exact


# ------------------------------------------------------------ fill value and dtype


@pytest.mark.parametrize("dtype", list(MX_DTYPE))
def test_mask_keeps_scores_dtype_and_fills_finite(dtype):
    """The project's choice: output dtype = scores dtype; fill = -1e9 clamped to the dtype's
    lowest finite value (float16 -65504, bfloat16 -1e9 rounded = -998244352): finite, so a
    later softmax never computes -inf - -inf."""
    x_mx, x_t = random_scores((1, 1, 3, 3), dtype)
    y_mx, y_t = mx_masks.apply_causal_mask(x_mx), torch_masks.apply_causal_mask(x_t)
    assert y_mx.dtype == MX_DTYPE[dtype]
    assert y_t.dtype == TORCH_DTYPE[dtype]
    assert as_np(y_mx)[0, 0, 0, 2] == FILL[dtype] == as_np(y_t)[0, 0, 0, 2]
    assert np.isfinite(as_np(y_mx)).all() and np.isfinite(as_np(y_t)).all()
    assert (
        mx_masks.mask_fill_value(MX_DTYPE[dtype])
        == torch_masks.mask_fill_value(TORCH_DTYPE[dtype])
        == FILL[dtype]
    )


def test_float16_in_float16_out():
    """Named pin of the dtype decision (f16 in -> f16 out, fill -65504)."""
    y = mx_masks.apply_causal_mask_with_offset(mx.zeros((1, 1, 2, 3), dtype=mx.float16), 1)
    assert y.dtype == mx.float16
    assert as_np(y)[0, 0, 0, 2] == -65504.0
    y_t = torch_masks.apply_causal_mask_with_offset(torch.zeros(1, 1, 2, 3, dtype=torch.float16), 1)
    assert y_t.dtype == torch.float16 and float(y_t[0, 0, 0, 2]) == -65504.0


def test_float64_oracle_keeps_the_input_dtypes_fill():
    y = torch_masks.apply_causal_mask(
        torch.zeros(1, 1, 2, 2, dtype=torch.float16), precision="float64"
    )
    assert y.dtype == torch.float64 and float(y[0, 0, 0, 1]) == -65504.0


def test_original_float32_fill_promotes_half_scores():
    """Documents why the original's helper is not copied: mx.where with a float32 array
    -1e9 turns float16 scores into float32, and a Python-scalar -1e9 becomes -inf in float16
    (SEMANTICS.md). PyTorch's where with a 0-d float32 tensor keeps float16 instead."""
    keep = mx.tri(2, 2, dtype=mx.bool_)
    scores = mx.zeros((1, 1, 2, 2), dtype=mx.float16)
    assert mx.where(keep, scores, mx.array(-1e9, dtype=mx.float32)).dtype == mx.float32
    scalar_fill = mx.where(keep, scores, -1e9)
    assert scalar_fill.dtype == mx.float16 and np.isneginf(as_np(scalar_fill)[0, 0, 0, 1])
    t = torch.where(
        torch.ones(2, 2, dtype=torch.bool).tril(),
        torch.zeros(2, 2, dtype=torch.float16),
        torch.tensor(-1e9),
    )
    assert t.dtype == torch.float16


# ------------------------------------------------------------------------ error cases


def _arr(lib, shape, dtype="float32"):
    a = np.zeros(shape, dtype=np.float32)
    if dtype == "int32":
        return (
            mx.array(a.astype(np.int32)) if lib == "mlx" else torch.from_numpy(a.astype(np.int32))
        )
    return mx.array(a) if lib == "mlx" else torch.from_numpy(a)


def _m(lib):
    return mx_masks if lib == "mlx" else torch_masks


ERROR_CASES = [
    ("repeat_kv x 3-D", ValueError, lambda lib: _m(lib).repeat_kv(_arr(lib, (2, 3, 4)), 2)),
    ("repeat_kv repeats 0", ValueError, lambda lib: _m(lib).repeat_kv(_arr(lib, (1, 2, 3, 4)), 0)),
    (
        "repeat_kv repeats negative",
        ValueError,
        lambda lib: _m(lib).repeat_kv(_arr(lib, (1, 2, 3, 4)), -2),
    ),
    (
        "repeat_kv repeats bool",
        TypeError,
        lambda lib: _m(lib).repeat_kv(_arr(lib, (1, 2, 3, 4)), True),
    ),
    (
        "repeat_kv repeats float",
        TypeError,
        lambda lib: _m(lib).repeat_kv(_arr(lib, (1, 2, 3, 4)), 2.0),
    ),
    (
        "repeat_kv x not an array",
        TypeError,
        lambda lib: _m(lib).repeat_kv(np.zeros((1, 2, 3, 4)), 2),
    ),
    (
        "causal not square",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask(_arr(lib, (1, 1, 2, 3))),
    ),
    ("causal 3-D", ValueError, lambda lib: _m(lib).apply_causal_mask(_arr(lib, (1, 3, 3)))),
    (
        "causal integer",
        TypeError,
        lambda lib: _m(lib).apply_causal_mask(_arr(lib, (1, 1, 3, 3), "int32")),
    ),
    (
        "causal not an array",
        TypeError,
        lambda lib: _m(lib).apply_causal_mask(np.zeros((1, 1, 2, 2))),
    ),
    (
        "offset negative",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 2, 5)), -1),
    ),
    (
        "offset past Lk - Lq",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 2, 5)), 4),
    ),
    (
        "offset nonzero square",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 3, 3)), 1),
    ),
    (
        "Lq > Lk",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 5, 2)), 0),
    ),
    (
        "offset bool",
        TypeError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 2, 5)), True),
    ),
    (
        "offset float",
        TypeError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 2, 5)), 1.0),
    ),
    (
        "offset scores 2-D",
        ValueError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (2, 5)), 0),
    ),
    (
        "offset scores integer",
        TypeError,
        lambda lib: _m(lib).apply_causal_mask_with_offset(_arr(lib, (1, 1, 2, 5), "int32"), 0),
    ),
]


@pytest.mark.parametrize(("case", "error", "make"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors_same_type_in_both_packages(lib, case, error, make):
    with pytest.raises(
        error, match=r"^\[(repeat_kv|apply_causal_mask|apply_causal_mask_with_offset)\] "
    ):
        make(lib)


def test_numpy_integer_counts_are_accepted():
    x = mx.zeros((1, 2, 1, 1))
    repeated = mx_masks.repeat_kv(x, np.int64(2))  # type: ignore[arg-type]
    assert repeated.shape == (1, 4, 1, 1)
    assert torch_masks.apply_causal_mask_with_offset(
        torch.zeros(1, 1, 1, 3),
        np.int32(2),  # type: ignore[arg-type]
    ).shape == (1, 1, 1, 3)


def test_twin_rejects_unknown_precision():
    for call in (
        lambda: torch_masks.repeat_kv(torch.zeros(1, 1, 1, 1), 2, precision="half"),
        lambda: torch_masks.apply_causal_mask(torch.zeros(1, 1, 1, 1), precision="half"),
        lambda: torch_masks.apply_causal_mask_with_offset(
            torch.zeros(1, 1, 1, 1), 0, precision="half"
        ),
    ):
        with pytest.raises(ValueError, match="precision"):
            call()


# ------------------------------------------------- repeat_kv: the int32 head-count bound
# Decision: MLX dims are int32, so the output head count kv_heads * repeats (and the repeat
# axis itself, which matters when kv_heads == 0) must be <= 2**31 - 1; both packages refuse
# more with a [repeat_kv] ValueError. (Was: MLX's unbracketed OverflowError; torch returned.)
# Only zero-size inputs here: the results are huge in heads but hold no elements.

REPEAT_BOUND = [  # (x shape, repeats, accepted)
    ((2, 1, 0, 0), 2**31, False),
    ((2, 1, 0, 0), 2**31 - 1, True),
    ((1, 2, 0, 3), 2**30, False),
    ((1, 2, 0, 3), 2**30 - 1, True),
    ((2, 0, 3, 0), 2**31, False),
    ((2, 0, 3, 0), 2**31 - 1, True),
    ((1, 3, 0, 2), 2**62, False),
]


@pytest.mark.parametrize(("shape", "repeats", "accepted"), REPEAT_BOUND, ids=str)
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_repeat_kv_head_count_must_fit_int32(lib, shape, repeats, accepted):
    x = _arr(lib, shape)
    if accepted:
        y = _m(lib).repeat_kv(x, repeats)
        b, kv, s, d = shape
        assert tuple(y.shape) == (b, kv * repeats, s, d)
        return
    with pytest.raises(ValueError, match=r"^\[repeat_kv\] the head count kv_heads \* repeats"):
        _m(lib).repeat_kv(x, repeats)


def test_repeat_kv_bound_applies_to_numpy_integers():
    with pytest.raises(ValueError, match=r"^\[repeat_kv\] "):
        mx_masks.repeat_kv(mx.zeros((1, 1, 0, 0)), np.int64(2**31))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^\[repeat_kv\] "):
        torch_masks.repeat_kv(torch.zeros(1, 1, 0, 0), np.int64(2**31))  # type: ignore[arg-type]
