"""Tests of the harness's own parts: the ulp arithmetic, the judge, the tolerance policy
and the strategies. If these are wrong, every "conforms" is worthless."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.dtypes import BFLOAT16, FLOAT16, FLOAT32, round_to
from conformance.judge import judge
from conformance.strategies import VALUE_PROFILES, arrays, fill
from conformance.tolerance import EXACT, ROUNDED, Tolerance, gamma


@pytest.mark.parametrize(("fmt", "value", "spacing"), [
    (FLOAT32, 1.0, 2.0**-23), (FLOAT16, 1.0, 2.0**-10), (BFLOAT16, 1.0, 2.0**-7),
    (FLOAT16, 1000.0, 0.5), (FLOAT16, 0.0, 2.0**-24), (FLOAT16, 2.0**-20, 2.0**-24),
    (FLOAT32, -3.0, 2.0**-22),
])
def test_ulp(fmt, value, spacing) -> None:
    assert fmt.ulp(np.array([value]))[0] == spacing


def test_ulp_matches_numpy_spacing_for_float16() -> None:
    values = np.array([1e-7, 3e-5, 0.1, 1.0, 7.5, 300.0, 60000.0], dtype=np.float16)
    np.testing.assert_array_equal(FLOAT16.ulp(values.astype(np.float64)), np.spacing(values).astype(np.float64))


def test_gamma() -> None:
    assert gamma(10, 2.0**-11) == pytest.approx(10 * 2.0**-11 / (1 - 10 * 2.0**-11))
    assert gamma(2**11, 2.0**-11) == float("inf")


def _judge(m, p, o, dtype="float32", tol=ROUNDED):
    return judge(np.asarray(m, np.float32), np.asarray(p, np.float32), np.asarray(o, np.float64),
                 mlx_dtype=dtype, peer_dtype=dtype, tolerance=tol)


def test_judge_passes_identical_results() -> None:
    assert _judge([1.0, 2.0], [1.0, 2.0], [1.0, 2.0]).passed


def test_judge_flags_shape_and_dtype() -> None:
    assert _judge([1.0], [1.0, 2.0], [1.0, 2.0]).kind == "shape"
    v = judge(np.ones(2, np.float32), np.ones(2, np.float32), np.ones(2), mlx_dtype="float32",
              peer_dtype="float16", tolerance=ROUNDED)
    assert v.kind == "dtype" and not v.passed


def test_judge_flags_nan_and_inf_positions() -> None:
    assert _judge([np.nan, 1.0], [1.0, 1.0], [1.0, 1.0]).kind == "nonfinite"
    assert _judge([np.inf, 1.0], [-np.inf, 1.0], [1.0, 1.0]).kind == "nonfinite"
    assert _judge([np.nan, 1.0], [np.nan, 1.0], [1.0, 1.0]).passed


def test_judge_allows_floor_ulps_and_no_more() -> None:
    one_ulp = 2.0**-23
    assert _judge([1.0 + 2 * one_ulp], [1.0], [1.0]).passed
    failed = _judge([1.0 + 3 * one_ulp], [1.0], [1.0])
    assert not failed.passed and failed.kind == "value"
    assert "index (0,)" in failed.message and "ulp" in failed.message


def test_judge_scales_with_the_peer_error() -> None:
    # The peer is 8 ulp off; MLX may be 2 x 8 + 2 = 18 ulp off, not 19.
    u = 2.0**-23
    assert _judge([1 + 18 * u], [1 + 8 * u], [1.0]).passed
    assert not _judge([1 + 20 * u], [1 + 8 * u], [1.0]).passed


def test_judge_rows_are_independent() -> None:
    # A large row must not hide an error in a small row.
    o = np.array([[1000.0, 1000.0], [1e-3, 1e-3]])
    m = o.copy()
    m[1, 0] *= 1 + 1e-3
    assert not _judge(m, o, o).passed


def test_exact_judge_is_strict_about_signed_zero() -> None:
    v = judge(np.array([0.0], np.float32), np.array([-0.0], np.float32), np.array([0.0]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=EXACT)
    assert not v.passed
    ints = judge(np.array([1, 2], np.uint32), np.array([1, 3], np.uint32), np.array([1, 2]),
                 mlx_dtype="uint32", peer_dtype="uint32", tolerance=EXACT)
    assert not ints.passed and "1 / 2" in ints.message


def test_accumulation_bound_admits_gamma_k() -> None:
    tol = Tolerance(reason="test", accumulation_terms=lambda a, p: 64, accumulates_in_input_dtype=True)
    magnitude = np.array([10.0])
    slack = gamma(64, FLOAT16.unit_roundoff) * 10.0
    base = dict(mlx_dtype="float16", peer_dtype="float16", tolerance=tol, magnitude=magnitude,
                accumulation_terms=64)
    assert judge(np.array([1.0 + 0.9 * slack]), np.array([1.0]), np.array([1.0]), **base).passed
    assert not judge(np.array([1.0 + 2 * slack]), np.array([1.0]), np.array([1.0]), **base).passed


def test_tolerance_requires_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        Tolerance(reason="")


@pytest.mark.parametrize("profile", VALUE_PROFILES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_profiles_are_deterministic_and_representable(profile, dtype) -> None:
    a = fill((4, 33), profile, dtype, seed=7)
    np.testing.assert_array_equal(a, fill((4, 33), profile, dtype, seed=7))
    finite = np.isfinite(a)
    rounded = round_to(a, dtype)
    # Rounding to the dtype never overflows a finite value: "large" stays below the max.
    assert np.all(np.isfinite(rounded[finite]))
    if profile == "special":
        assert (~finite).any() or (a == 0).any()
    if profile == "subnormal" and dtype != "float32":
        assert np.all(np.abs(rounded) < 2.0 ** (FLOAT16.min_exponent if dtype == "float16" else -126))


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_arrays_strategy_respects_shape(data) -> None:
    shape = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 5)))
    a = data.draw(arrays(shape, "float16", profiles=VALUE_PROFILES))
    assert a.shape == shape and a.dtype == np.float32


def test_float32_accumulation_bound_uses_float32_roundoff() -> None:
    tol = Tolerance(reason="test", accumulation_terms=lambda a, p: 64)
    slack = gamma(64, FLOAT32.unit_roundoff) * 10.0
    base = dict(mlx_dtype="float16", peer_dtype="float16", tolerance=tol, magnitude=np.array([10.0]),
                accumulation_terms=64)
    # float16 output: the float32 summation bound is far below one float16 ulp, so only
    # the floor admits anything; 3 ulp of float16 must fail.
    assert slack < 2.0**-10
    assert not judge(np.array([1.0 + 3 * 2.0**-10]), np.array([1.0]), np.array([1.0]), **base).passed


def test_overflow_is_admissible_only_near_the_dtype_limit() -> None:
    big = 3.0e38
    # The exact answer is finite but its terms reach float32's limit: the peer's overflow is
    # order-dependent, and MLX's finite answer is judged against the oracle.
    v = judge(np.array([big], np.float32), np.array([np.inf], np.float32), np.array([big]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED, magnitude=np.array([4e38]))
    assert v.passed
    # Far from the limit an infinity is a real difference.
    # Far from the limit an infinity is a real difference: MLX's, when MLX has it...
    v = judge(np.array([np.inf], np.float32), np.array([1.0], np.float32), np.array([1.0]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED)
    assert not v.passed and v.kind == "nonfinite"
    # ... the peer's when the peer has it: the oracle arbitrates, MLX is the more accurate.
    v = judge(np.array([1.0], np.float32), np.array([np.inf], np.float32), np.array([1.0]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED)
    assert v.passed and v.kind == "more_accurate"
    # An infinity of the other sign is admissible only where the overflow is order-dependent.
    v = judge(np.array([-np.inf], np.float32), np.array([np.inf], np.float32), np.array([4e38]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED)
    assert v.passed
    v = judge(np.array([-np.inf], np.float32), np.array([np.inf], np.float32), np.array([1e30]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED)
    assert not v.passed


def test_nan_positions_must_match_unless_the_overflow_is_order_dependent() -> None:
    # Far from overflow: a NaN where the peer is finite is a real difference.
    assert not _judge([np.nan], [1.0], [1.0]).passed
    # The peer's NaN where MLX equals the oracle: MLX is the more accurate (the oracle arbitrates).
    assert _judge([1.0], [np.nan], [1.0]).kind == "more_accurate"
    # ... but not when MLX is itself off the oracle.
    assert not _judge([1.5], [np.nan], [1.0]).passed
    # The terms reach float32's limit: the peer's inf - inf = NaN is order-dependent;
    # MLX's infinity with the oracle's sign is admissible.
    v = judge(np.array([-np.inf], np.float32), np.array([np.nan], np.float32), np.array([-5e37]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED, magnitude=np.array([1e39]))
    assert v.passed
    # ... and symmetrically MLX's order may be the one that overflows; without the
    # overflow-scale magnitude the same NaN is a failure.
    v = judge(np.array([np.nan], np.float32), np.array([-5e37], np.float32), np.array([-5e37]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED, magnitude=np.array([1e39]))
    assert v.passed
    v = judge(np.array([np.nan], np.float32), np.array([-5e37], np.float32), np.array([-5e37]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=ROUNDED, magnitude=np.array([6e37]))
    assert not v.passed


def test_a_narrow_accumulator_overflow_is_not_admissible() -> None:
    # float16 output, exact result 0, terms far beyond float16's range but well inside
    # float32's: a float32 accumulator cannot overflow, so MLX's inf is a real difference.
    v = judge(np.array([np.inf]), np.array([0.0]), np.array([0.0]), mlx_dtype="float16",
              peer_dtype="float16", tolerance=ROUNDED, magnitude=np.array([153600.0]))
    assert not v.passed and v.kind == "nonfinite"


def test_more_accurate_needs_mlx_near_the_oracle_and_the_peer_worse() -> None:
    # MLX within 2 ulp of the oracle where the peer is 100 ulp off: MLX more accurate.
    ulp = 2.0**-23
    v = _judge([1.0 + ulp], [1.0 + 100 * ulp], [1.0])
    assert v.passed and v.kind in ("ok", "more_accurate")
    # MLX far off and the peer close: a failure, not "more accurate".
    assert not _judge([1.0 + 1e-2], [1.0 + 1e-3], [1.0]).passed
    # Bit-identical ops: MLX the correctly rounded oracle where the peer is not.
    one_rounding = np.float32(1.0) + np.float32(2.0**-23)
    v = judge(np.array([one_rounding], np.float32), np.array([1.0], np.float32), np.array([1.0 + 2.0**-23]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=EXACT)
    assert v.passed and v.kind == "more_accurate"
    v = judge(np.array([1.0], np.float32), np.array([one_rounding], np.float32), np.array([1.0 + 2.0**-23]),
              mlx_dtype="float32", peer_dtype="float32", tolerance=EXACT)
    assert not v.passed


def test_massive_activations_have_a_few_fixed_channels_and_an_outlier_row() -> None:
    from conformance.strategies import (
        MASSIVE_CHANNELS,
        MASSIVE_RATIO,
        OUTLIER_ROW_RATIO,
        massive_activations,
    )

    a = np.abs(massive_activations((5, 576), seed=3).astype(np.float64))
    top = np.argsort(-a, axis=-1)[:, :MASSIVE_CHANNELS]
    assert all(set(row) == set(top[0]) for row in top)  # the same channels in every row
    ratio = a.max(axis=-1) / np.median(a, axis=-1)
    assert np.all(ratio[1:] > MASSIVE_RATIO / 3) and ratio[0] > MASSIVE_RATIO * OUTLIER_ROW_RATIO / 3
    # The massive channels hold most of each row's sum of squares, as SmolLM2's do.
    share = np.sort(a * a, axis=-1)[:, -MASSIVE_CHANNELS:].sum(-1) / (a * a).sum(-1)
    assert np.all(share > 0.9)
