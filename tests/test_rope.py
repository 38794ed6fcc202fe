"""fast.RoPE / fast.rope: identity at position 0, rotate-half vs interleaved pairing on a
hand-computed vector, partial-dims pass-through, per-row offsets (3-D and 4-D), MLX vs the
PyTorch twin on fixed inputs (float32/float16/bfloat16), the float64 oracle, and errors
raised identically by both packages."""

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


def rope_bound(x: torch.Tensor, max_position: float) -> float:
    """|MLX - twin| bound where the two are not bit-exact.

    Both compute the angles in float32 with the same rounding points, but MLX's CPU exp,
    sin and cos are polynomial approximations: the twin's inv_freq is within 1 float32 ulp
    of MLX's (measured), so the angle pos * inv_freq (inv_freq <= 1) differs by
    <= 2 p 2^-24 plus one rounding of the product (<= 2 p 2^-24 more), and cos/sin by
    <= 2 ulp (4 * 2^-24). A rotated value x1 c - x2 s then moves by <= (|x1| + |x2|) times
    that, plus the output's own rounding (2 ulp of max|x| in x's dtype). Measured at <= 25%
    of this bound (offsets 0 ... 30000, bases 10 ... 1e6)."""
    xmax = float(x.float().abs().max())
    eps = torch.finfo(x.dtype).eps
    return 2 * xmax * (max_position * 4 + 4) * 2.0**-24 + 2 * eps * xmax


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
def test_mlx_matches_twin_small_positions(
    dtype, traditional, shape, dims, base, scale, offset
) -> None:
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    y_mx, y_t = both(
        x, dims, dtype=dtype, offset=offset, traditional=traditional, base=base, scale=scale
    )
    assert y_mx.dtype == y_t.dtype == TORCH_DTYPE[dtype]
    if dtype == "float32":
        # float32 is within the polynomial-approximation bound (see rope_bound).
        max_pos = (int(np.max(offset)) + shape[-2]) * scale
        assert (y_mx - y_t).abs().max().item() <= rope_bound(to_torch(x, dtype), max_pos)
    else:
        # Positions <= ~20: the float32 angles' tiny differences never survive the cast
        # of cos/sin to half precision, and the rotation's roundings are reproduced.
        assert torch.equal(y_mx, y_t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mlx_matches_twin_large_positions(dtype: str) -> None:
    # At positions in the thousands an inv_freq that is 1 ulp off (MLX's polynomial exp)
    # moves the float32 angle by ~p * 2^-24, which can flip a half-precision rounding.
    x = np.random.default_rng(6).standard_normal((2, 4, 6, 64)).astype(np.float32)
    offset = np.array([1000, 4096], np.int32)
    y_mx, y_t = both(x, 64, dtype=dtype, offset=offset, base=500000.0)
    assert (y_mx.float() - y_t.float()).abs().max().item() <= rope_bound(
        to_torch(x, dtype), 4096 + 6
    )


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
    torch.testing.assert_close(native.double(), y64, rtol=0, atol=1e-5)
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
