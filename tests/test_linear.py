"""Linear and MultiLinear: known answers, MLX's half-precision rounding point, MLX vs the
PyTorch twin on fixed inputs (float32/float16/bfloat16), the float64 oracle, and errors."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest
import torch

from mlx_impl.nn.linear import Linear as MxLinear
from mlx_impl.nn.linear import MultiLinear as MxMultiLinear
from torch_reference.nn.linear import Linear as TorchLinear
from torch_reference.nn.linear import MultiLinear as TorchMultiLinear

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {
    "float32": mx.float32,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "float64": mx.float64,
}
TORCH_DTYPE = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
U32 = 2.0**-24  # unit roundoff of float32


def to_mx(a: np.ndarray, dtype: str) -> mx.array:
    return mx.array(a.astype(np.float32)).astype(MX_DTYPE[dtype])


def to_torch(a: np.ndarray, dtype: str) -> torch.Tensor:
    return torch.from_numpy(a.astype(np.float32)).to(TORCH_DTYPE[dtype])


def mx_as_torch(y: mx.array) -> torch.Tensor:
    """Exact conversion (every half value is a float32 value), keeping the dtype."""
    name = str(y.dtype).split(".")[-1]
    return torch.from_numpy(np.array(y.astype(mx.float32))).to(TORCH_DTYPE[name])


def ulp_size(v: torch.Tensor) -> torch.Tensor:
    """Spacing of the float16/bfloat16 grid at |v| (float64), subnormals included."""
    info = torch.finfo(v.dtype)
    mantissa_bits = {torch.float16: 10, torch.bfloat16: 7}[v.dtype]
    min_exp = int(np.log2(info.tiny))  # exponent of the smallest normal
    exponent = torch.floor(torch.log2(v.double().abs().clamp_min(info.tiny)))
    return torch.exp2(exponent.clamp_min(min_exp) - mantissa_bits)


def fixed_inputs(shape_x, out_features, seed=0):
    rng = np.random.default_rng(seed)
    k = shape_x[-1]
    x = rng.standard_normal(shape_x).astype(np.float32)
    w = (rng.standard_normal((out_features, k)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(out_features).astype(np.float32)
    return x, w, b


# ---------------------------------------------------------------- known answers

W_KNOWN = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
B_KNOWN = np.array([10.0, 20.0], dtype=np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer_without_bias(dtype):
    x = np.ones(3, dtype=np.float32)
    y_mx = MxLinear(to_mx(W_KNOWN, dtype))(to_mx(x, dtype))
    y_t = TorchLinear(to_torch(W_KNOWN, dtype))(to_torch(x, dtype))
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(np.array(y_mx.astype(mx.float32)), [6.0, 15.0])
    np.testing.assert_array_equal(y_t.float().numpy(), [6.0, 15.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_known_answer_with_bias(dtype):
    x = np.ones(3, dtype=np.float32)
    y_mx = MxLinear(to_mx(W_KNOWN, dtype), to_mx(B_KNOWN, dtype))(to_mx(x, dtype))
    y_t = TorchLinear(to_torch(W_KNOWN, dtype), to_torch(B_KNOWN, dtype))(to_torch(x, dtype))
    np.testing.assert_array_equal(np.array(y_mx.astype(mx.float32)), [16.0, 35.0])
    np.testing.assert_array_equal(y_t.float().numpy(), [16.0, 35.0])
    y_64 = TorchLinear(to_torch(W_KNOWN, dtype), to_torch(B_KNOWN, dtype))(
        to_torch(x, dtype), precision="float64"
    )
    assert y_64.dtype == torch.float64
    np.testing.assert_array_equal(y_64.numpy(), [16.0, 35.0])


@pytest.mark.parametrize("shape", [(3,), (2, 3), (2, 4, 3), (2, 2, 4, 3)])
def test_known_answer_every_input_rank(shape):
    """mx.addmm broadcasts batched x itself (rank 1..4 verified): no reshape is needed."""
    x = np.ones(shape, dtype=np.float32)
    y_mx = MxLinear(mx.array(W_KNOWN), mx.array(B_KNOWN))(mx.array(x))
    y_t = TorchLinear(torch.from_numpy(W_KNOWN), torch.from_numpy(B_KNOWN))(torch.from_numpy(x))
    expected = np.broadcast_to(np.array([16.0, 35.0], dtype=np.float32), (*shape[:-1], 2))
    np.testing.assert_array_equal(np.array(y_mx), expected)
    np.testing.assert_array_equal(y_t.numpy(), expected)


def test_properties_and_module_parameters():
    layer = MxLinear(mx.array(W_KNOWN), mx.array(B_KNOWN))
    assert isinstance(layer, mlx.nn.Module)
    assert (layer.output_dim, layer.in_features) == (2, 3)
    assert set(layer.parameters()) == {"weight", "bias"}
    assert MxLinear(mx.array(W_KNOWN)).bias is None
    t_layer = TorchLinear(torch.from_numpy(W_KNOWN))
    assert isinstance(t_layer, torch.nn.Module)
    assert (t_layer.output_dim, t_layer.in_features) == (2, 3)
    assert t_layer.bias is None and set(t_layer.state_dict()) == {"weight"}
    assert not t_layer.weight.requires_grad


# ------------------------------------------------- MLX's rounding point, pinned exactly


def _exact_inputs(dtype):
    """Inputs whose float32 dot products are EXACT (multiples of 1/64, K = 16, |sum| <= 2^10),
    so the only rounding left is the final one(s) to half precision; the product alone
    needs more bits than float16/bfloat16 hold, so rounding it before the bias add shows."""
    rng = np.random.default_rng(7)
    x = rng.integers(-64, 64, size=(6, 16)) / 8.0
    w = rng.integers(-64, 64, size=(10, 16)) / 8.0
    b = rng.integers(-2048, 2048, size=10) / 64.0
    if dtype == "bfloat16":  # bf16 holds 8 significant bits: shrink so inputs stay exact
        x, w, b = np.round(x * 2) / 2, np.round(w * 2) / 2, np.round(b * 4) / 4
    for a in (x, w, b):
        assert np.array_equal(to_torch(a, dtype).double().numpy(), a)  # inputs exact
    return x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mlx_addmm_half_adds_bias_before_the_single_rounding(dtype):
    """mx.addmm in half precision = R(x@W.T + b) computed in float32, ONE rounding;
    not R(R(x@W.T) + b). The twin reproduces it bit for bit."""
    x, w, b = _exact_inputs(dtype)
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    fused = torch.from_numpy(exact).to(TORCH_DTYPE[dtype])
    product_rounded = torch.from_numpy(x.astype(np.float64) @ w.T.astype(np.float64)).to(
        TORCH_DTYPE[dtype]
    )
    two_roundings = product_rounded + to_torch(b, dtype)
    assert (fused != two_roundings).any(), "inputs must separate the two rounding orders"
    y_mx = mx_as_torch(MxLinear(to_mx(w, dtype), to_mx(b, dtype))(to_mx(x, dtype)))
    assert torch.equal(y_mx, fused)
    y_t = TorchLinear(to_torch(w, dtype), to_torch(b, dtype))(to_torch(x, dtype))
    assert torch.equal(y_t, fused)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mlx_half_matmul_rounds_once_from_float32(dtype):
    """Without a bias: float32 accumulation, one rounding (here exactly R(exact))."""
    x, w, _ = _exact_inputs(dtype)
    exact = torch.from_numpy(x.astype(np.float64) @ w.T.astype(np.float64)).to(TORCH_DTYPE[dtype])
    assert torch.equal(mx_as_torch(MxLinear(to_mx(w, dtype))(to_mx(x, dtype))), exact)
    assert torch.equal(TorchLinear(to_torch(w, dtype))(to_torch(x, dtype)), exact)


# ---------------------------------------------------------- MLX vs twin, random inputs

SHAPES = [((5, 16), 24), ((2, 3, 33), 31), ((7,), 9), ((1, 2, 3, 64), 8)]


def _gamma(n: int) -> float:
    """Higham's gamma_n = n*u/(1-n*u): |fl(sum of n terms) - sum| <= gamma_n * sum|terms|."""
    return n * U32 / (1 - n * U32)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(("shape_x", "out"), SHAPES)
def test_float32_mlx_vs_twin_within_summation_order_bound(shape_x, out, with_bias):
    """float32 is not bit-exact: MLX and PyTorch's BLAS sum the K products in different
    orders. Each lies within gamma_{K+1} * (|x| @ |W|.T + |b|) of the exact value (K products
    and the bias add), so they differ by at most twice that. The bound is a-priori, not tuned."""
    x, w, b = fixed_inputs(shape_x, out)
    bias = b if with_bias else None
    y_mx = np.array(MxLinear(mx.array(w), None if bias is None else mx.array(bias))(mx.array(x)))
    t_layer = TorchLinear(torch.from_numpy(w), None if bias is None else torch.from_numpy(bias))
    y_t = t_layer(torch.from_numpy(x)).numpy()
    y_64 = t_layer(torch.from_numpy(x), precision="float64").numpy()
    assert y_mx.dtype == y_t.dtype == np.float32 and y_64.dtype == np.float64
    magnitude = np.abs(x.astype(np.float64)) @ np.abs(w.T.astype(np.float64))
    if bias is not None:
        magnitude = magnitude + np.abs(bias)
    bound = _gamma(shape_x[-1] + 1) * magnitude
    assert np.all(np.abs(y_mx - y_64) <= bound)
    assert np.all(np.abs(y_t - y_64) <= bound)
    assert np.all(np.abs(y_mx.astype(np.float64) - y_t) <= 2 * bound)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("shape_x", "out"), SHAPES)
def test_half_mlx_vs_twin_within_summation_bound_plus_one_ulp(shape_x, out, dtype, with_bias):
    """Both compute the same float32 value up to summation order (the two float32 values
    a, b differ by <= 2*gamma_{K+1} * (|x|@|W|.T + |b|)) and round it ONCE to the output
    dtype, so |R(a) - R(b)| <= |a - b| + ulp(max(|R(a)|, |R(b)|)). Usually they are equal;
    "<= 1 ulp" alone is NOT a valid bound: near cancellation (|y| much smaller than the
    magnitude) the float32 difference spans several small-output ulps (2 ulps measured at
    [64, 512] x [128, 512] float16)."""
    x, w, b = fixed_inputs(shape_x, out, seed=1)
    bias_mx = to_mx(b, dtype) if with_bias else None
    bias_t = to_torch(b, dtype) if with_bias else None
    y_mx = mx_as_torch(MxLinear(to_mx(w, dtype), bias_mx)(to_mx(x, dtype)))
    y_t = TorchLinear(to_torch(w, dtype), bias_t)(to_torch(x, dtype))
    assert y_mx.dtype == y_t.dtype == TORCH_DTYPE[dtype]
    assert y_mx.shape == y_t.shape == (*shape_x[:-1], out)
    xd, wd = to_torch(x, dtype).double().abs(), to_torch(w, dtype).double().abs()
    magnitude = xd @ wd.T + (to_torch(b, dtype).double().abs() if with_bias else 0.0)
    bound = 2 * _gamma(shape_x[-1] + 1) * magnitude + ulp_size(torch.maximum(y_mx.abs(), y_t.abs()))
    assert bool(((y_mx.double() - y_t.double()).abs() <= bound).all())


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "expected"),
    [
        ("float16", "bfloat16", "float32"),
        ("float16", "float32", "float32"),
        ("bfloat16", "float32", "float32"),
        ("float32", "float16", "float32"),
    ],
)
def test_mixed_dtypes_promote_like_mlx(x_dtype, w_dtype, expected):
    """Output dtype = promotion of x, W and b in both libraries; every such promotion widens
    exactly, so the result equals the float32 computation on the widened inputs."""
    x, w, b = fixed_inputs((3, 8), 5, seed=2)
    y_mx = MxLinear(to_mx(w, w_dtype), to_mx(b, w_dtype))(to_mx(x, x_dtype))
    y_t = TorchLinear(to_torch(w, w_dtype), to_torch(b, w_dtype))(to_torch(x, x_dtype))
    assert str(y_mx.dtype) == f"mlx.core.{expected}"
    assert y_t.dtype == TORCH_DTYPE[expected]
    widened = MxLinear(to_mx(w, w_dtype).astype(mx.float32), to_mx(b, w_dtype).astype(mx.float32))
    assert mx.array_equal(y_mx, widened(to_mx(x, x_dtype).astype(mx.float32))).item()
    magnitude = np.abs(x) @ np.abs(w.T) + np.abs(b)
    assert np.all(np.abs(np.array(y_mx) - y_t.numpy()) <= 2 * _gamma(9) * magnitude)


# ------------------------------------------------------------------------- MultiLinear


def test_multilinear_known_answer():
    w = np.stack([W_KNOWN, 2 * W_KNOWN])  # [heads=2, out=2, in=3]
    x = np.ones((1, 2, 1, 3), dtype=np.float32)
    expected = np.array([[[[6.0, 15.0]], [[12.0, 30.0]]]], dtype=np.float32)
    np.testing.assert_array_equal(np.array(MxMultiLinear(mx.array(w))(mx.array(x))), expected)
    np.testing.assert_array_equal(
        TorchMultiLinear(torch.from_numpy(w))(torch.from_numpy(x)).numpy(), expected
    )
    layer = MxMultiLinear(mx.array(w))
    assert (layer.num_heads, layer.out_features, layer.in_features) == (2, 2, 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multilinear_mlx_vs_twin(dtype):
    """Same bounds as Linear: float32 within 2*gamma_K * |x|@|W|.T (summation order), half
    precision within that plus one output ulp (one rounding of nearly equal float32 values)."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((3, 6, 20)) / np.sqrt(20)).astype(np.float32)
    x = rng.standard_normal((2, 3, 5, 20)).astype(np.float32)
    y_mx = mx_as_torch(MxMultiLinear(to_mx(w, dtype))(to_mx(x, dtype)))
    t_layer = TorchMultiLinear(to_torch(w, dtype))
    y_t = t_layer(to_torch(x, dtype))
    assert y_mx.shape == y_t.shape == (2, 3, 5, 6) and y_mx.dtype == y_t.dtype
    if dtype == "float32":
        magnitude = torch.from_numpy(np.abs(x) @ np.abs(w.transpose(0, 2, 1)))
        assert bool(((y_mx - y_t).abs() <= 2 * _gamma(20) * magnitude).all())
    else:
        magnitude = to_torch(np.abs(x), dtype).double() @ to_torch(
            np.abs(w), dtype
        ).double().transpose(1, 2)
        bound = 2 * _gamma(20) * magnitude + ulp_size(torch.maximum(y_mx.abs(), y_t.abs()))
        assert bool(((y_mx.double() - y_t.double()).abs() <= bound).all())
    y_64 = t_layer(to_torch(x, dtype), precision="float64")
    assert y_64.dtype == torch.float64
    exact = to_torch(x, dtype).double() @ to_torch(w, dtype).double().transpose(1, 2)
    assert torch.equal(y_64, exact)


# ------------------------------------------------------------------------ error cases

MX = SimpleNamespace(
    arr=lambda a, dtype="float32": (
        mx.array(np.asarray(a)).astype(MX_DTYPE[dtype])
        if dtype in MX_DTYPE
        else mx.array(np.asarray(a).astype(dtype))
    ),
    Linear=MxLinear,
    MultiLinear=MxMultiLinear,
)
TORCH = SimpleNamespace(
    arr=lambda a, dtype="float32": (
        torch.from_numpy(np.asarray(a, dtype=np.float32)).to(TORCH_DTYPE[dtype])
        if dtype in TORCH_DTYPE
        else torch.from_numpy(np.asarray(a).astype(dtype))
    ),
    Linear=TorchLinear,
    MultiLinear=TorchMultiLinear,
)

ERROR_CASES: list[tuple[str, type[Exception], Callable[[SimpleNamespace], object]]] = [
    ("weight not an array", TypeError, lambda L: L.Linear([[1.0, 2.0]])),
    ("weight 1-D", ValueError, lambda L: L.Linear(L.arr(np.ones(3)))),
    ("weight 3-D", ValueError, lambda L: L.Linear(L.arr(np.ones((1, 2, 3))))),
    ("weight integer", TypeError, lambda L: L.Linear(L.arr(np.ones((2, 3)), "int32"))),
    (
        "bias wrong length",
        ValueError,
        lambda L: L.Linear(L.arr(np.ones((2, 3))), L.arr(np.ones(3))),
    ),
    ("bias 2-D", ValueError, lambda L: L.Linear(L.arr(np.ones((2, 3))), L.arr(np.ones((1, 2))))),
    (
        "bias integer",
        TypeError,
        lambda L: L.Linear(L.arr(np.ones((2, 3))), L.arr(np.ones(2), "int32")),
    ),
    ("bias not an array", TypeError, lambda L: L.Linear(L.arr(np.ones((2, 3))), [1.0, 2.0])),
    (
        "x wrong last dim",
        ValueError,
        lambda L: L.Linear(L.arr(np.ones((2, 3))))(L.arr(np.ones((4, 2)))),
    ),
    ("x scalar", ValueError, lambda L: L.Linear(L.arr(np.ones((2, 3))))(L.arr(np.float32(1.0)))),
    (
        "x integer",
        TypeError,
        lambda L: L.Linear(L.arr(np.ones((2, 3))))(L.arr(np.ones(3), "int32")),
    ),
    ("x not an array", TypeError, lambda L: L.Linear(L.arr(np.ones((2, 3))))(np.ones(3))),
    ("multi weight 2-D", ValueError, lambda L: L.MultiLinear(L.arr(np.ones((2, 3))))),
    (
        "multi weight integer",
        TypeError,
        lambda L: L.MultiLinear(L.arr(np.ones((2, 2, 3)), "int32")),
    ),
    (
        "multi x 3-D",
        ValueError,
        lambda L: L.MultiLinear(L.arr(np.ones((2, 4, 3))))(L.arr(np.ones((2, 5, 3)))),
    ),
    (
        "multi x heads",
        ValueError,
        lambda L: L.MultiLinear(L.arr(np.ones((2, 4, 3))))(L.arr(np.ones((1, 3, 5, 3)))),
    ),
    (
        "multi x last dim",
        ValueError,
        lambda L: L.MultiLinear(L.arr(np.ones((2, 4, 3))))(L.arr(np.ones((1, 2, 5, 4)))),
    ),
    (
        "multi x integer",
        TypeError,
        lambda L: L.MultiLinear(L.arr(np.ones((2, 4, 3))))(L.arr(np.ones((1, 2, 5, 3)), "int32")),
    ),
]


@pytest.mark.parametrize(("case", "error", "make"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors_same_type_in_both_packages(lib, case, error, make):
    L = MX if lib == "mlx" else TORCH
    with pytest.raises(error, match=r"^\[(Linear|MultiLinear)\] "):
        make(L)


def test_twin_rejects_unknown_precision():
    layer = TorchLinear(torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"^\[Linear\] precision"):
        layer(torch.ones(3), precision="float32")
    with pytest.raises(ValueError, match=r"^\[MultiLinear\] precision"):
        TorchMultiLinear(torch.ones(1, 2, 3))(torch.ones(1, 1, 1, 3), precision="exact")


# ---------------------------------------------------------------------- zero-size dims
# Decision: every zero-size case that is mathematically defined is SUPPORTED, identically
# in both packages (shape, dtype and values). in == 0 makes every dot product an empty sum,
# so the result is the bias broadcast exactly (-0.0 kept, as MLX's 2-D mx.addmm gives) or
# zeros; an empty batch or out == 0 gives an empty result.

BIAS_WITH_NEG_ZERO = np.array([-0.0, 1.5, -2.0], dtype=np.float32)
ZERO_K_SHAPES = [(0,), (2, 0), (0, 0), (7, 0, 0), (1, 2, 0), (2, 0, 2, 0)]
MIXED = [  # (weight, bias, x) dtypes -> output dtype
    ("float16", "float16", "bfloat16", "float32"),  # the fuzz's pinned case
    ("float32", "float32", "float32", "float32"),
    ("bfloat16", "bfloat16", "bfloat16", "bfloat16"),
    ("float16", "float32", "float16", "float32"),
]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.uint64)


@pytest.mark.parametrize("x_shape", ZERO_K_SHAPES, ids=str)
@pytest.mark.parametrize(("w_dt", "b_dt", "x_dt", "out_dt"), MIXED, ids=lambda v: str(v))
def test_in_features_zero_gives_the_bias_exactly(x_shape, w_dt, b_dt, x_dt, out_dt):
    """Was: mx.addmm raised "[reshape] Cannot infer the shape of an empty array" for x of
    rank >= 3 (an MLX error, not the layer's); torch gave the result."""
    w = np.zeros((3, 0), np.float32)
    x = np.zeros(x_shape, np.float32)
    expected_shape = (*x_shape[:-1], 3)
    y_mx = MxLinear(to_mx(w, w_dt), to_mx(BIAS_WITH_NEG_ZERO, b_dt))(to_mx(x, x_dt))
    t_layer = TorchLinear(to_torch(w, w_dt), to_torch(BIAS_WITH_NEG_ZERO, b_dt))
    y_t = t_layer(to_torch(x, x_dt))
    assert y_mx.shape == tuple(y_t.shape) == expected_shape
    assert y_mx.dtype == MX_DTYPE[out_dt] and y_t.dtype == TORCH_DTYPE[out_dt]
    expected = np.broadcast_to(BIAS_WITH_NEG_ZERO, expected_shape)
    # Bit patterns, so the sign of -0.0 counts.
    np.testing.assert_array_equal(_bits(np.array(y_mx.astype(mx.float32))), _bits(expected))
    np.testing.assert_array_equal(_bits(y_t.float().numpy()), _bits(expected))
    y_64 = t_layer(to_torch(x, x_dt), precision="float64")
    assert y_64.dtype == torch.float64 and tuple(y_64.shape) == expected_shape
    np.testing.assert_array_equal(_bits(y_64.numpy()), _bits(expected))


@pytest.mark.parametrize("x_shape", ZERO_K_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_in_features_zero_without_bias_gives_positive_zeros(x_shape, dtype):
    w = np.zeros((4, 0), np.float32)
    x = np.zeros(x_shape, np.float32)
    y_mx = MxLinear(to_mx(w, dtype))(to_mx(x, dtype))
    y_t = TorchLinear(to_torch(w, dtype))(to_torch(x, dtype))
    expected = np.zeros((*x_shape[:-1], 4))
    assert y_mx.shape == tuple(y_t.shape) == expected.shape
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(_bits(np.array(y_mx.astype(mx.float32))), _bits(expected))
    np.testing.assert_array_equal(_bits(y_t.float().numpy()), _bits(expected))


def test_in_features_zero_twin_result_does_not_alias_the_bias():
    layer = TorchLinear(torch.zeros(3, 0), torch.tensor(BIAS_WITH_NEG_ZERO))
    y = layer(torch.zeros(2, 0))
    y += 1.0
    assert layer.bias is not None
    np.testing.assert_array_equal(_bits(layer.bias.detach().numpy()), _bits(BIAS_WITH_NEG_ZERO))


@pytest.mark.parametrize(
    ("x_shape", "out_features"),
    [((0, 4), 3), ((3, 0, 4), 3), ((2, 0, 2, 4), 3), ((2, 4), 0), ((0, 4), 0), ((5, 4), 0)],
    ids=str,
)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_or_out_features_zero_gives_empty_result(
    x_shape, out_features, with_bias, dtype
):
    w = np.ones((out_features, 4), np.float32)
    b = np.ones(out_features, np.float32)
    x = np.ones(x_shape, np.float32)
    y_mx = MxLinear(to_mx(w, dtype), to_mx(b, dtype) if with_bias else None)(to_mx(x, dtype))
    y_t = TorchLinear(to_torch(w, dtype), to_torch(b, dtype) if with_bias else None)(
        to_torch(x, dtype)
    )
    expected_shape = (*x_shape[:-1], out_features)
    assert y_mx.shape == tuple(y_t.shape) == expected_shape
    assert y_mx.size == 0 and y_t.numel() == 0
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]


MULTI_ZERO = [  # (x shape [B, heads, L, in], weight shape [heads, out, in])
    ((1, 2, 3, 0), (2, 4, 0)),
    ((0, 2, 3, 4), (2, 5, 4)),
    ((1, 0, 3, 4), (0, 5, 4)),
    ((1, 2, 0, 4), (2, 5, 4)),
    ((1, 2, 3, 4), (2, 0, 4)),
    ((0, 2, 3, 0), (2, 5, 0)),
    ((1, 0, 0, 0), (0, 0, 0)),
]


@pytest.mark.parametrize(("x_shape", "w_shape"), MULTI_ZERO, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_multilinear_zero_size_dims(x_shape, w_shape, dtype):
    """Every zero-size dim is supported the same way in both; in == 0 gives +0.0 zeros."""
    x = np.ones(x_shape, np.float32)
    w = np.ones(w_shape, np.float32)
    y_mx = MxMultiLinear(to_mx(w, dtype))(to_mx(x, dtype))
    t_layer = TorchMultiLinear(to_torch(w, dtype))
    y_t = t_layer(to_torch(x, dtype))
    expected = np.zeros((*x_shape[:-1], w_shape[1]))
    assert y_mx.shape == tuple(y_t.shape) == expected.shape
    assert y_mx.dtype == MX_DTYPE[dtype] and y_t.dtype == TORCH_DTYPE[dtype]
    np.testing.assert_array_equal(_bits(np.array(y_mx.astype(mx.float32))), _bits(expected))
    np.testing.assert_array_equal(_bits(y_t.float().numpy()), _bits(expected))
    assert t_layer(to_torch(x, dtype), precision="float64").dtype == torch.float64
