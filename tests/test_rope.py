"""fast.RoPE / fast.rope: identity at position 0, rotate-half vs interleaved pairing on a
hand-computed vector, partial-dims pass-through, per-row offsets (3-D and 4-D), MLX and the
PyTorch twin on fixed inputs (float32/float16/bfloat16) both within a DERIVED error bound of
the float64 oracle, the half-precision rounding points pinned bit for bit where nothing else
can round differently, the base contract, empty batches, and errors raised identically by
both packages.

The twin's float32 ``exp``, ``sin`` and ``cos`` are PyTorch's (within ~1 float32 ulp), MLX's
CPU ones are polynomials (its ``exp`` up to ~17 ulp off), so the float32 angles differ:
outputs are compared through :func:`rope_error_bound`, not bit for bit."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import numpy as np
import pytest
import torch

from mlx_impl.fast.rope import RoPE as MxRoPE
from mlx_impl.fast.rope import rope as mx_rope
from torch_reference.fast.rope import RoPE as TorchRoPE
from torch_reference.fast.rope import rope as torch_rope

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_mx(a: np.ndarray, dtype: str = "float32") -> mx.array:
    return mx.array(a.astype(np.float32)).astype(MX_DTYPE[dtype])


def to_torch(a: np.ndarray, dtype: str = "float32") -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPE[dtype])


def mx_as_torch(y: mx.array) -> torch.Tensor:
    name = str(y.dtype).split(".")[-1]
    return torch.from_numpy(np.array(y.astype(mx.float32))).to(TORCH_DTYPE[name])


def both(
    x: np.ndarray,
    dims: int,
    *,
    dtype: str = "float32",
    offset: Any = 0,
    layer: bool = False,
    **kw: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both packages; ``offset`` is an int or a numpy integer array."""
    if isinstance(offset, np.ndarray):
        off_mx: Any = mx.array(offset)
        off_t: Any = torch.from_numpy(offset)
    else:
        off_mx = off_t = offset
    if layer:
        y_mx = MxRoPE(dims, **kw)(to_mx(x, dtype), offset=off_mx)
        y_t = TorchRoPE(dims, **kw)(to_torch(x, dtype), offset=off_t)
    else:
        y_mx = mx_rope(to_mx(x, dtype), dims, offset=off_mx, **kw)
        y_t = torch_rope(to_torch(x, dtype), dims, offset=off_t, **kw)
    return mx_as_torch(y_mx), y_t


U32 = 2.0**-24  # unit roundoff of float32
UNIT = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
"""Unit roundoff ``u_d`` of each input dtype."""
TINY = {torch.float32: 2.0**-149, torch.float16: 2.0**-24, torch.bfloat16: 2.0**-133}
"""Spacing of each dtype's subnormals: the absolute part of one rounding's error."""


def rope_error_bound(
    x: torch.Tensor,
    dims: int,
    *,
    traditional: bool = False,
    base: float = 10000.0,
    scale: float = 1.0,
    offset: Any = 0,
) -> torch.Tensor:
    """Elementwise bound on ``|native - float64 oracle|`` for MLX's float32 angle recipe
    evaluated with ANY faithful exp/sin/cos (MLX's CPU polynomials, PyTorch's), for positions
    below 2^24. ``x`` is the dtype tensor both libraries receive; ``u = 2^-24``, ``u_d`` the
    dtype's unit roundoff, ``X_i = (2i/dims) |ln base|`` the magnitude of exp's argument:

    * ``inv_freq_i = exp(-i * c)``, ``c = float32(ln float32(base)) / (dims/2)``: the float32
      base moves ``ln`` by <= u, and ``ln``, ``/``, ``*`` each round (``3u X_i``); MLX's exp
      is within ``(1.25 X + 3) u`` (tests/test_fast_attention.py::
      test_mlx_cpu_exp_error_envelope): relative error ``e_inv <= (4.25 X_i + 4) u``.
    * ``theta = ((t + offset) * scale) * inv_freq``: the integer sum is exact below 2^24, the
      two products round: ``e_theta = e_inv + 2u`` relative.
    * float32 cos/sin: ``|theta| e_theta`` plus the functions' own error, 2u absolute
      (MLX's measured <= 1.3u, test_mlx_cpu_sin_cos_error); cast to a half dtype: ``+ u_d``.
    * The rotation ``R(R(x1 c) - R(x2 s))`` in x's dtype: ``gamma_2(u_d) (|x1| + |x2|)``.

    So ``|y_hat - y| <= (|x1| + |x2|) (delta + gamma_2(u_d)(1 + delta))`` with
    ``delta = |theta| e_theta + 2u (+ u_d for half dtypes)``; 0 past ``dims``.
    """
    dtype = x.dtype
    ud, tiny = UNIT[dtype], TINY[dtype]
    xa = x.double().abs()
    half = dims // 2
    t = x.shape[-2]
    off = torch.as_tensor(np.asarray(offset), dtype=torch.float64)
    pos = torch.arange(t, dtype=torch.float64)
    if off.ndim:  # one offset per batch row: [B, 1, ..., T, 1]
        pos = off.reshape(-1, *([1] * (x.ndim - 1))) + pos.reshape(t, 1)
    else:
        pos = (off + pos).reshape(t, 1)
    i = torch.arange(half, dtype=torch.float64)
    exponent = i / half * abs(math.log(base))
    e_theta = U32 * (4.25 * exponent + 4) + 2 * U32
    theta = pos * abs(scale) * base ** (-i / half)
    delta = theta * e_theta + 2 * U32 + (0.0 if dtype == torch.float32 else ud + tiny)
    gamma2 = 2 * ud / (1 - 2 * ud)
    if traditional:
        x1, x2 = xa[..., 0:dims:2], xa[..., 1:dims:2]
    else:
        x1, x2 = xa[..., :half], xa[..., half:dims]
    pair = (x1 + x2) * (delta + gamma2 * (1 + delta)) + tiny
    bound = torch.zeros((*pair.shape[:-1], x.shape[-1]), dtype=torch.float64)
    if traditional:
        bound[..., 0:dims:2] = pair
        bound[..., 1:dims:2] = pair
    else:
        bound[..., :half] = pair
        bound[..., half:dims] = pair
    return bound


def both_within_bound(
    x: np.ndarray, dims: int, *, dtype: str = "float32", offset: Any = 0, **kw: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both packages; assert both within :func:`rope_error_bound` of the float64 oracle."""
    y_mx, y_t = both(x, dims, dtype=dtype, offset=offset, **kw)
    xt = to_torch(x, dtype)
    off_t = torch.from_numpy(offset) if isinstance(offset, np.ndarray) else offset
    y64 = torch_rope(xt, dims, offset=off_t, precision="float64", **kw)
    bound = rope_error_bound(xt, dims, offset=offset, **kw)
    for name, y in (("mlx", y_mx), ("twin", y_t)):
        assert y.dtype == TORCH_DTYPE[dtype], name
        ratio = float(((y.double() - y64).abs() / bound.clamp_min(2.0**-1074)).max())
        assert bool(((y.double() - y64).abs() <= bound).all()), (name, ratio)
    return y_mx, y_t


# ---- known answers -------------------------------------------------------------------


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_position_zero_is_identity(traditional: bool, dtype: str) -> None:
    x = np.random.default_rng(0).standard_normal((2, 1, 8)).astype(np.float32)
    y_mx, y_t = both(x, 8, dtype=dtype, traditional=traditional)
    assert torch.equal(y_mx, to_torch(x, dtype)) and torch.equal(y_t, to_torch(x, dtype))


@pytest.mark.parametrize("layer", [False, True])
def test_rotate_half_vs_interleaved_by_hand(layer: bool) -> None:
    # x = [1, 2, 3, 4], dims 4, base 100, position 1: frequencies 1 and 100^(-1/2) = 0.1.
    x = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 1, 4)
    c1, s1, c2, s2 = math.cos(1.0), math.sin(1.0), math.cos(0.1), math.sin(0.1)
    # rotate-half pairs (x0, x2) with angle 1 and (x1, x3) with angle 0.1
    half = [1 * c1 - 3 * s1, 2 * c2 - 4 * s2, 1 * s1 + 3 * c1, 2 * s2 + 4 * c2]
    # interleaved pairs (x0, x1) with angle 1 and (x2, x3) with angle 0.1
    inter = [1 * c1 - 2 * s1, 1 * s1 + 2 * c1, 3 * c2 - 4 * s2, 3 * s2 + 4 * c2]
    for traditional, want in ((False, half), (True, inter)):
        y_mx, y_t = both(x, 4, offset=1, base=100.0, traditional=traditional, layer=layer)
        expected = torch.tensor(want).reshape(1, 1, 4)
        torch.testing.assert_close(y_mx, expected, rtol=0, atol=2e-6)
        torch.testing.assert_close(y_t, expected, rtol=0, atol=2e-6)
    assert not np.allclose(half, inter)


def test_scale_multiplies_positions() -> None:
    # Offset 4 with scale 0.5 is position 2, the same as offset 2 with scale 1.
    x = np.random.default_rng(1).standard_normal((1, 1, 6)).astype(np.float32)
    a_mx, a_t = both(x, 6, offset=4, scale=0.5)
    b_mx, b_t = both(x, 6, offset=2)
    assert torch.equal(a_mx, b_mx) and torch.equal(a_t, b_t)


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_features_past_dims_pass_through_bit_exactly(traditional: bool, dtype: str) -> None:
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 16)).astype(np.float32)
    y_mx, y_t = both(x, 6, dtype=dtype, offset=9, traditional=traditional)
    xt = to_torch(x, dtype)
    assert torch.equal(y_mx[..., 6:], xt[..., 6:]) and torch.equal(y_t[..., 6:], xt[..., 6:])
    assert not torch.equal(y_mx[..., :6], xt[..., :6])


@pytest.mark.parametrize(
    "shape", [(3, 4, 8), (3, 2, 4, 8), (3, 2, 1, 4, 8)], ids=["3d", "4d", "5d"]
)
def test_per_row_offsets_index_the_batch_axis(shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    offsets = np.array([0, 5, 17], np.int32)
    y_mx, y_t = both(x, 8, offset=offsets)
    for row, off in enumerate(offsets.tolist()):
        r_mx, r_t = both(x, 8, offset=off)
        assert torch.equal(y_mx[row], r_mx[row]) and torch.equal(y_t[row], r_t[row])


def test_scalar_and_length_one_offset_arrays_equal_an_int() -> None:
    x = np.random.default_rng(4).standard_normal((2, 3, 8)).astype(np.float32)
    ref_mx, ref_t = both(x, 8, offset=7)
    for off in (
        np.array(7, np.int32),
        np.array([7], np.int32),
        np.array([7, 7], np.int64),
        np.array([7, 7], np.uint8),
    ):
        y_mx, y_t = both(x, 8, offset=off)
        assert torch.equal(y_mx, ref_mx) and torch.equal(y_t, ref_t), off.dtype


# ---- MLX vs the twin -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize(
    ("shape", "dims", "base", "scale", "offset"),
    [
        ((2, 3, 5, 16), 16, 10000.0, 1.0, 0),
        ((2, 3, 5, 16), 8, 10000.0, 1.0, 7),
        ((2, 4, 12), 12, 500000.0, 0.5, np.array([3, 9], np.int32)),
        ((1, 2, 4, 128), 96, 1e6, 1.0, 5),
        ((2, 2, 3, 80), 80, 10.0, 2.0, np.array([1, 4], np.int32)),
    ],
    ids=["4d_full", "4d_partial", "3d_per_row", "4d_d128_partial", "4d_d80_per_row"],
)
def test_mlx_and_twin_within_derived_bound(
    dtype, traditional, shape, dims, base, scale, offset
) -> None:
    # Measured at <= 0.7 of the bound over several hundred random configurations. Half
    # outputs are usually bit-identical at such small positions, but nothing guarantees it:
    # a float32 cos/sin a few ulps apart can straddle a half rounding boundary.
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    both_within_bound(
        x, dims, dtype=dtype, offset=offset, traditional=traditional, base=base, scale=scale
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlx_and_twin_within_derived_bound_large_positions(dtype: str) -> None:
    # Positions in the thousands: inv_freq a few float32 ulps apart (MLX's polynomial exp)
    # moves the angle by ~ position * that, which the bound's |theta| e_theta term covers.
    x = np.random.default_rng(6).standard_normal((2, 4, 6, 64)).astype(np.float32)
    for offset in (np.array([1000, 4096], np.int32), 30000):
        both_within_bound(x, 64, dtype=dtype, offset=offset, base=500000.0)
        both_within_bound(x, 64, dtype=dtype, offset=offset, base=10.0, traditional=True)


def _rope_half_recipe(x: torch.Tensor, dtype: torch.dtype, skip: str | None = None):
    """dims = 2 rotate-half by hand in float64: inv_freq = exp(0) = 1 exactly, so the angle
    is the position itself (offset 1: positions 1 ... T); ``R`` = rounding to ``dtype``:
    ``R(R(x1 R(cos)) - R(x2 R(sin)))`` and ``R(R(x1 R(sin)) + R(x2 R(cos)))``.
    ``skip`` drops a rounding point. Returns (y, cos, sin) with cos/sin in float64."""

    def r(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype).double()

    theta = torch.arange(1, x.shape[-2] + 1, dtype=torch.float64).unsqueeze(-1)  # offset 1
    c, s = torch.cos(theta), torch.sin(theta)
    x1, x2 = x[..., :1], x[..., 1:2]
    if skip == "rotation_in_float32":  # cos/sin rounded, the rotation rounded once
        y = torch.cat([r(x1 * r(c) - x2 * r(s)), r(x1 * r(s) + x2 * r(c))], -1)
    elif skip == "cos_sin_not_rounded":  # products of float32 cos/sin rounded
        c32, s32 = c.float().double(), s.float().double()
        y = torch.cat([r(r(x1 * c32) - r(x2 * s32)), r(r(x1 * s32) + r(x2 * c32))], -1)
    else:
        cd, sd = r(c), r(s)
        y = torch.cat([r(r(x1 * cd) - r(x2 * sd)), r(r(x1 * sd) + r(x2 * cd))], -1)
    return y, c, s


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_rounding_points_bit_for_bit(dtype: str) -> None:
    # MLX in half precision: float32 cos/sin cast to the dtype, then every multiply and add
    # of the rotation rounded in the dtype. Bit-exactness with the hand recipe is DERIVED:
    # with dims = 2 the angle is the position exactly (inv_freq = exp(0) = 1), both
    # libraries' float32 cos/sin are within 2u of the exact values, and no exact value has a
    # rounding boundary of the dtype within 2u (asserted), so both cast the same cos/sin and
    # then run the same half-precision operations in the same order (each computed in
    # float32 and rounded to the dtype, as the recipe's float64 values rounded through
    # float32 are). Skipping either rounding point changes the answer
    # (asserted), so both are pinned.
    tdt = TORCH_DTYPE[dtype]
    xn = (np.random.default_rng(12).standard_normal((1, 64, 2)) * 3).astype(np.float32)
    x = to_torch(xn, dtype).double()
    y, c, s = _rope_half_recipe(x, tdt)
    for f in (c, s):
        assert torch.equal((f - 2 * U32).to(tdt), (f + 2 * U32).to(tdt))
    for skip in ("rotation_in_float32", "cos_sin_not_rounded"):
        assert not torch.equal(_rope_half_recipe(x, tdt, skip)[0], y), skip
    y_mx, y_t = both(xn, 2, dtype=dtype, offset=1)
    assert torch.equal(y_mx.double(), y) and torch.equal(y_t.double(), y)


def test_float64_oracle() -> None:
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 8)).astype(np.float32)
    xt = torch.from_numpy(x)
    y64 = torch_rope(xt, 6, traditional=False, base=100.0, offset=3, precision="float64")
    assert y64.dtype == torch.float64
    pos = torch.arange(3, 7, dtype=torch.float64)[:, None]
    theta = pos * 100.0 ** (-torch.arange(0, 6, 2, dtype=torch.float64) / 6)
    x64 = xt.double()
    x1, x2 = x64[..., :3], x64[..., 3:6]
    want = torch.cat(
        [x1 * theta.cos() - x2 * theta.sin(), x1 * theta.sin() + x2 * theta.cos(), x64[..., 6:]], -1
    )
    torch.testing.assert_close(y64, want, rtol=1e-13, atol=1e-13)
    native = torch_rope(xt, 6, traditional=False, base=100.0, offset=3)
    bound = rope_error_bound(xt, 6, base=100.0, offset=3)
    assert bool(((native.double() - y64).abs() <= bound).all())
    layer64 = TorchRoPE(6, base=100.0)(xt, offset=3, precision="float64")
    assert torch.equal(layer64, y64)


def test_layers_are_modules_of_their_ecosystem() -> None:
    import mlx.nn

    assert isinstance(MxRoPE(8), mlx.nn.Module) and isinstance(TorchRoPE(8), torch.nn.Module)
    layer = MxRoPE(8, traditional=True, base=500000.0, scale=0.5)
    assert (layer.dims, layer.traditional, layer.base, layer.scale) == (8, True, 500000.0, 0.5)


# ---- errors: both packages reject the same inputs ------------------------------------

ERROR_CASES: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("odd_dims", {"dims": 3}, ValueError),
    ("zero_dims", {"dims": 0}, ValueError),
    ("negative_dims", {"dims": -2}, ValueError),
    ("dims_above_D", {"dims": 16}, ValueError),
    ("float_dims", {"dims": 8.0}, TypeError),
    ("rank_2_input", {"shape": (2, 8)}, ValueError),
    ("integer_input", {"int_x": True}, TypeError),
    ("float_offset", {"offset": 1.5}, TypeError),
    ("bool_offset", {"offset": True}, TypeError),
    ("negative_offset", {"offset": -1}, ValueError),
    ("offset_beyond_int32", {"offset": 2**31}, ValueError),
    ("float_offset_array", {"offset_np": np.array([1.0, 2.0], np.float32)}, TypeError),
    ("bool_offset_array", {"offset_np": np.array([True, False])}, TypeError),
    ("offset_array_wrong_length", {"offset_np": np.array([1, 2, 3], np.int32)}, ValueError),
    ("offset_array_2d", {"offset_np": np.array([[1, 2]], np.int32)}, ValueError),
    ("offset_list", {"offset": [1, 2]}, TypeError),
    ("base_zero", {"base": 0.0}, ValueError),
    ("base_negative", {"base": -10.0}, ValueError),
    ("base_inf", {"base": math.inf}, ValueError),
    # float32(base) is 0 or inf: MLX's log of it is infinite, every angle NaN.
    ("base_rounds_to_float32_zero", {"base": 1e-300}, ValueError),
    ("base_at_float32_zero_tie", {"base": 2.0**-150}, ValueError),
    ("base_rounds_to_float32_inf", {"base": 1e39}, ValueError),
    ("base_at_float32_inf_tie", {"base": float(2**128 - 2**103)}, ValueError),
    ("scale_nan", {"scale": math.nan}, ValueError),
    ("traditional_not_bool", {"traditional": 1}, TypeError),
]


def _call(lib: str, form: str, case: dict[str, Any]) -> Any:
    shape = case.get("shape", (2, 3, 8))
    x = np.ones(shape, np.float32)
    if lib == "mlx":
        tx: Any = mx.array(x.astype(np.int32)) if case.get("int_x") else mx.array(x)
        offset: Any = mx.array(case["offset_np"]) if "offset_np" in case else case.get("offset", 0)
        cls: Any = MxRoPE
        fn: Any = mx_rope
    else:
        tx = torch.from_numpy(x.astype(np.int32)) if case.get("int_x") else torch.from_numpy(x)
        offset = (
            torch.from_numpy(case["offset_np"]) if "offset_np" in case else case.get("offset", 0)
        )
        cls, fn = TorchRoPE, torch_rope
    config = {k: case[k] for k in ("traditional", "base", "scale") if k in case}
    dims = case.get("dims", 8)
    if form == "layer":
        return cls(dims, **config)(tx, offset=offset)
    return fn(tx, dims, offset=offset, **config)


@pytest.mark.parametrize(("name", "case", "exc"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("form", ["layer", "function"])
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors(lib: str, form: str, name: str, case: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc, match=r"^\[(RoPE|rope)\] "):
        _call(lib, form, case)


def test_torch_rejects_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision"):
        torch_rope(torch.ones(1, 2, 4), 4, precision="half")
    with pytest.raises(ValueError, match="precision"):
        TorchRoPE(4)(torch.ones(1, 2, 4), precision="half")


# ---- the base contract, empty batches, MLX facts the bound relies on ----------------


def test_mlx_itself_gives_nan_for_bases_that_round_to_float32_zero_or_inf() -> None:
    # Why the packages refuse them: MLX uses float32(base); ln 0 = -inf makes every angle
    # NaN (position 0 too), ln inf = inf the first frequency's (0 * inf).
    x = mx.ones((1, 2, 4))
    for base in (1e-300, 2.0**-150):
        assert bool(
            mx.isnan(mx.fast.rope(x, 4, traditional=False, base=base, scale=1.0, offset=0)).all()
        )
    y = mx.fast.rope(x, 4, traditional=False, base=1e39, scale=1.0, offset=0)
    assert bool(mx.isnan(y[..., 0]).all())


@pytest.mark.parametrize(
    "base",
    [math.nextafter(2.0**-150, 1.0), 1e-40, 0.5, 1.0, 3.4028234663852886e38],
    ids=["smallest_accepted", "subnormal", "below_one", "one", "float32_max"],
)
@pytest.mark.parametrize("layer", [False, True])
def test_extreme_bases_that_round_to_finite_float32_are_accepted_by_both(
    base: float, layer: bool
) -> None:
    # dims = 2: inv_freq = exp(0) = 1 whatever the base, so the angle is the position and
    # both stay within the derived bound. (With dims > 2 a tiny base gives frequencies up to
    # ~1/base: float32 angles of 1e30 and more, where neither library's sin/cos means
    # anything; accepted, as MLX accepts them, but not compared.)
    x = np.random.default_rng(9).standard_normal((1, 3, 8)).astype(np.float32)
    y_mx, y_t = both(x, 8, offset=1, base=base, layer=layer)
    assert y_mx.shape == y_t.shape == (1, 3, 8) and y_mx.dtype == y_t.dtype == torch.float32
    both_within_bound(x, 2, offset=1, base=base)


@pytest.mark.parametrize("shape", [(0, 3, 6), (0, 2, 3, 6)], ids=["3d", "4d"])
@pytest.mark.parametrize("layer", [False, True])
def test_empty_batch_with_per_row_offsets(shape: tuple[int, ...], layer: bool) -> None:
    # B = 0 with its (0,) per-row offsets is valid (one offset per row, and there is none).
    # MLX itself raises [broadcast_shapes] here (it broadcasts the (0,) offsets against the
    # T positions), so both packages pass offset 0 instead: an empty result of x's dtype.
    x = np.ones(shape, np.float32)
    with pytest.raises(ValueError, match="broadcast_shapes"):
        mx.fast.rope(
            mx.array(x),
            2,
            traditional=True,
            base=1e4,
            scale=1.0,
            offset=mx.array(np.zeros(0, np.int32)),
        )
    for dtype in DTYPES:
        y_mx, y_t = both(
            x, 2, dtype=dtype, offset=np.zeros(0, np.int32), traditional=True, layer=layer
        )
        assert y_mx.shape == y_t.shape == shape
        assert y_mx.dtype == y_t.dtype == TORCH_DTYPE[dtype]


def test_mlx_cpu_sin_cos_error() -> None:
    # rope_error_bound allows 2u absolute for float32 sin/cos. MLX's CPU ones are
    # polynomials with careful range reduction: <= 1.3u over [0, 1e6] (PyTorch's <= 0.6u).
    theta = torch.from_numpy(
        np.concatenate([np.linspace(0, 10, 200_001), np.linspace(10, 1e6, 200_001)]).astype(
            np.float32
        )
    )
    t64 = theta.double()
    for mx_fn, exact in ((mx.sin, torch.sin(t64)), (mx.cos, torch.cos(t64))):
        got = torch.from_numpy(np.array(mx_fn(mx.array(theta.numpy())))).double()
        assert float((got - exact).abs().max()) <= 2 * U32
