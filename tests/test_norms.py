"""fast.RMSNorm / fast.rms_norm, fast.LayerNorm / fast.layer_norm, nn.RMSNorm and the
composed nn.LayerNorm: known answers, the eps conventions, MLX's rounding points (the
normalised value rounded before the weight multiply; the composed layer norm's statistics
in the input dtype), MLX vs the PyTorch twin in float32/float16/bfloat16 (equal up to the
order of the float32 sums: the twin sums in PyTorch's order, not MLX's), the float64
oracle, and errors raised identically by both packages."""

from __future__ import annotations

import functools
import math
from typing import Any

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mlx_impl.fast.norms as mx_fast
import mlx_impl.nn.norms as mx_nn
import torch_reference.fast.norms as t_fast
import torch_reference.nn.norms as t_nn

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_mx(a: np.ndarray | None, dtype: str = "float32") -> Any:
    """numpy -> mx.array in ``dtype`` (``None`` stays ``None``)."""
    return None if a is None else mx.array(np.asarray(a, np.float32)).astype(MX_DTYPE[dtype])


def to_torch(a: np.ndarray | None, dtype: str = "float32") -> Any:
    """numpy -> torch.Tensor in ``dtype`` (``None`` stays ``None``)."""
    return None if a is None else torch.from_numpy(np.asarray(a, np.float32)).to(TORCH_DTYPE[dtype])


def mx_as_torch(y: mx.array) -> torch.Tensor:
    name = str(y.dtype).split(".")[-1]
    return torch.from_numpy(np.array(y.astype(mx.float32))).to(TORCH_DTYPE[name])


def same_bits(a: torch.Tensor, b: torch.Tensor, stats: torch.dtype | None = None) -> bool:
    """Equal dtype and values up to the order of the float32 sums over the last axis: NaN
    matching NaN, infinities equal, and finite values within ``2 gamma_(2D+4) * max|row|``
    (both sides within gamma of the exact statistics; Higham §3.1) plus one rounding of the
    output dtype each. ``stats``: the dtype the statistics are rounded to when it is narrower
    than the output (the composed LayerNorm's x dtype): a different float32 sum can flip
    those roundings (mean, variance, rsqrt), each a relative ``eps`` of that dtype, so 4 of
    them are admitted. A wrong rounding point or formula is far outside this."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a64, b64 = a.double(), b.double()
    same = (a64 == b64) | (a64.isnan() & b64.isnan())
    if bool(same.all()):
        return True
    d = a.shape[-1] if a.ndim else 1
    u = 2.0**-24
    gamma = (2 * d + 4) * u / (1 - (2 * d + 4) * u)
    finite = a64.isfinite() & b64.isfinite()
    row = torch.where(finite, b64.abs(), torch.zeros_like(b64)).amax(dim=-1, keepdim=True) if a.ndim else b64.abs()
    slack = row * (2 * gamma + 2 * torch.finfo(a.dtype).eps
                   + (4 * torch.finfo(stats).eps if stats is not None else 0.0))
    return bool((same | (finite & ((a64 - b64).abs() <= slack))).all())


# The four layers/functions, each as (mlx call, torch call) over numpy inputs.
def run_fast_rms(x, w, b, eps, dtypes, **kw):
    xd, wd, _ = dtypes
    return (
        mx_as_torch(mx_fast.rms_norm(to_mx(x, xd), to_mx(w, wd), eps)),
        t_fast.rms_norm(to_torch(x, xd), to_torch(w, wd), eps, **kw),
    )


def run_fast_rms_layer(x, w, b, eps, dtypes, **kw):
    xd, wd, _ = dtypes
    return (
        mx_as_torch(mx_fast.RMSNorm(to_mx(w, wd))(to_mx(x, xd), eps)),
        t_fast.RMSNorm(to_torch(w, wd))(to_torch(x, xd), eps, **kw),
    )


def run_fast_ln(x, w, b, eps, dtypes, **kw):
    xd, wd, bd = dtypes
    return (
        mx_as_torch(mx_fast.layer_norm(to_mx(x, xd), to_mx(w, wd), to_mx(b, bd), eps)),
        t_fast.layer_norm(to_torch(x, xd), to_torch(w, wd), to_torch(b, bd), eps, **kw),
    )


def run_fast_ln_layer(x, w, b, eps, dtypes, **kw):
    xd, wd, bd = dtypes
    return (
        mx_as_torch(mx_fast.LayerNorm(to_mx(w, wd), to_mx(b, bd))(to_mx(x, xd), eps)),
        t_fast.LayerNorm(to_torch(w, wd), to_torch(b, bd))(to_torch(x, xd), eps, **kw),
    )


def run_nn_rms(x, w, b, eps, dtypes, stored_eps=1e-6, **kw):
    xd, wd, _ = dtypes
    return (
        mx_as_torch(mx_nn.RMSNorm(to_mx(w, wd), eps=stored_eps)(to_mx(x, xd), eps)),
        t_nn.RMSNorm(to_torch(w, wd), eps=stored_eps)(to_torch(x, xd), eps, **kw),
    )


def run_nn_ln(x, w, b, eps, dtypes, **kw):
    xd, wd, bd = dtypes
    return (
        mx_as_torch(mx_nn.LayerNorm(to_mx(w, wd), to_mx(b, bd), eps=eps)(to_mx(x, xd))),
        t_nn.LayerNorm(to_torch(w, wd), to_torch(b, bd), eps=eps)(to_torch(x, xd), **kw),
    )


RUNNERS = {
    "fast.rms_norm": run_fast_rms,
    "fast.RMSNorm": run_fast_rms_layer,
    "fast.layer_norm": run_fast_ln,
    "fast.LayerNorm": run_fast_ln_layer,
    "nn.RMSNorm": run_nn_rms,
    "nn.LayerNorm": run_nn_ln,
}


# ---- known answers -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fast.rms_norm", "fast.RMSNorm", "nn.RMSNorm"])
@pytest.mark.parametrize("weight", [1.0, 2.0])
def test_rms_norm_of_twos(name: str, weight: float) -> None:
    # rms([2, 2, 2, 2]) = 2, so x / rms = 1 and the result is the weight.
    x = np.full((1, 4), 2.0, np.float32)
    w = np.full(4, weight, np.float32)
    kw = {"stored_eps": 0.0} if name == "nn.RMSNorm" else {}  # eps 0 exactly: an exact answer
    for dtype in DTYPES:
        for y in RUNNERS[name](x, w, None, 0.0, (dtype,) * 3, **kw):
            assert y.float().tolist() == [[weight] * 4]


@pytest.mark.parametrize("name", ["fast.layer_norm", "fast.LayerNorm"])
def test_fast_layer_norm_of_one_two_three(name: str) -> None:
    # mean 2, biased variance 2/3: [-1, 0, 1] / sqrt(2/3) = [-1.2247, 0, 1.2247].
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    r = math.sqrt(1.5)
    for y in RUNNERS[name](x, None, None, 0.0, ("float32",) * 3):
        torch.testing.assert_close(y, torch.tensor([[-r, 0.0, r]]), rtol=0, atol=1e-6)
    w = np.array([2.0, 2.0, 2.0], np.float32)
    b = np.array([1.0, 1.0, 1.0], np.float32)
    for y in RUNNERS[name](x, w, b, 0.0, ("float32",) * 3):
        torch.testing.assert_close(
            y, torch.tensor([[1 - 2 * r, 1.0, 1 + 2 * r]]), rtol=0, atol=2e-6
        )


def test_nn_layer_norm_eps_zero_means_1e5() -> None:
    x = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], np.float32)
    w = np.ones(3, np.float32)
    r = 1.0 / math.sqrt(2.0 / 3.0 + 1e-5)
    for y in run_nn_ln(x, w, None, 0.0, ("float32",) * 3):
        torch.testing.assert_close(y[0], torch.tensor([-r, 0.0, r]), rtol=0, atol=1e-6)
        assert y[1].tolist() == [0.0, 0.0, 0.0]  # a constant row: 0 * rsqrt(1e-5), no NaN
    # and an explicit eps is used as given
    r1 = 1.0 / math.sqrt(2.0 / 3.0 + 0.5)
    for y in run_nn_ln(x[:1], w, None, 0.5, ("float32",) * 3):
        torch.testing.assert_close(y[0], torch.tensor([-r1, 0.0, r1]), rtol=0, atol=1e-6)


def test_nn_rms_norm_call_eps_zero_uses_stored_eps() -> None:
    # x = 1e-3 everywhere: y = 1e-3 / sqrt(1e-6 + eps).
    x = np.full((1, 4), 1e-3, np.float32)
    w = np.ones(4, np.float32)
    cases = ((0.0, 1e-6, 1 / math.sqrt(2)), (3e-6, 1e-6, 0.5))
    for call_eps, stored, want in cases:
        y_mx = mx_as_torch(mx_nn.RMSNorm(to_mx(w), eps=stored)(to_mx(x), eps=call_eps))
        y_t = t_nn.RMSNorm(to_torch(w), eps=stored)(to_torch(x), eps=call_eps)
        for y in (y_mx, y_t):
            torch.testing.assert_close(y, torch.full((1, 4), want), rtol=1e-6, atol=0)
    # The default call eps is 0: the stored one.
    y_mx = mx_as_torch(mx_nn.RMSNorm(to_mx(w), eps=1e-6)(to_mx(x)))
    torch.testing.assert_close(y_mx, torch.full((1, 4), 1 / math.sqrt(2)), rtol=1e-6, atol=0)



@pytest.mark.parametrize("layer_class", [mx_nn.RMSNorm, mx_nn.LayerNorm], ids=["nn.RMSNorm", "nn.LayerNorm"])
def test_stored_eps_is_checked_and_read_when_set_later(layer_class: Any) -> None:
    # The stored eps is a private dict item (mlx_impl._fast_path.CheckedItem, read by the fast paths):
    # setting it later is checked as the constructor's is, and the next call uses it.
    x = mx.array([[1e-3, -1e-3, 2e-3, -2e-3]])
    layer = layer_class(mx.ones((4,)), eps=1e-6)
    before = np.array(layer(x))
    layer.eps = 1.0
    assert layer.eps == 1.0 and not np.array_equal(np.array(layer(x)), before)
    # (An array would otherwise be stored by mlx.nn.Module.__setattr__ as an item, unchecked.)
    for bad, error in ((-1.0, ValueError), (math.inf, ValueError), ("1e-5", TypeError), (True, TypeError),
                       (mx.array(1e-5), TypeError), ([1e-5], TypeError)):
        with pytest.raises(error, match=rf"^\[{layer_class.__name__}\] eps"):
            layer.eps = bad
    assert layer.eps == 1.0



def test_nn_layer_norm_plan_follows_replaced_weights_and_new_inputs() -> None:
    # nn.LayerNorm's fast path reuses the plan of its last checked call: every replaced
    # weight or bias, and every new input dtype or width, must give what a fresh layer gives
    # (or its error), never the old plan's answer.
    x = mx.array([[1.0, 2.0, 3.0, 5.0]])
    layer = mx_nn.LayerNorm(mx.ones((4,)), mx.zeros((4,)))
    layer(x)
    steps: list[tuple[str, Any]] = [
        ("update weight", lambda: layer.update({"weight": mx.full((4,), 2.0)})),
        ("bias None", lambda: setattr(layer, "bias", None)),
        ("bias array", lambda: setattr(layer, "bias", mx.full((4,), 0.5))),
        ("set_dtype", lambda: layer.set_dtype(mx.bfloat16)),
    ]
    for name, step in steps:
        step()
        fresh = mx_nn.LayerNorm(layer.weight, layer.bias, eps=layer.eps)
        for xi in (x, x.astype(mx.float16)):
            assert same_bits(mx_as_torch(layer(xi)), mx_as_torch(fresh(xi))), name
    with pytest.raises(ValueError, match="must equal the last dimension"):
        layer(mx.array([[1.0]]))  # width 1 would broadcast against the [4] weight

def test_stored_eps_stays_out_of_mlx_module_machinery() -> None:
    # A float under a "_" key: no parameter, untouched by update / load_weights /
    # set_dtype, and mx.compile takes the module's state as inputs.
    layer = mx_nn.RMSNorm(mx.ones((4,)), eps=1e-6)
    assert list(layer.parameters()) == ["weight"]
    layer.update({"weight": mx.full((4,), 2.0)})
    layer.load_weights([("weight", mx.full((4,), 3.0))])
    layer.set_dtype(mx.float16)
    assert layer.eps == 1e-6 and layer.weight.dtype == mx.float16

    @functools.partial(mx.compile, inputs=layer.state)
    def step(x: mx.array) -> mx.array:
        return layer(x)
    x = mx.full((1, 4), 1.0, dtype=mx.float16)
    assert np.array_equal(np.array(step(x)), np.array(layer(x)))

# ---- MLX's rounding points, pinned ---------------------------------------------------


def test_fast_rms_norm_rounds_before_the_weight_multiply() -> None:
    # MLX: R(x * rsqrt(ms + eps)) * w, two roundings in float16. PyTorch's F.rms_norm rounds
    # once at the end; on these inputs the two disagree by an ulp somewhere, and the twin
    # follows MLX exactly.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 32)).astype(np.float32)
    w = rng.standard_normal(32).astype(np.float32)
    y_mx, y_t = run_fast_rms(x, w, None, 1e-5, ("float16",) * 3)
    assert same_bits(y_mx, y_t)
    pt = F.rms_norm(to_torch(x, "float16"), (32,), to_torch(w, "float16"), eps=1e-5)
    assert not torch.equal(pt, y_mx)
    x32 = to_torch(x, "float16").float()
    normed = (x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + 1e-5)).half()
    assert (normed * to_torch(w, "float16") != y_mx).sum() <= 2  # float32 last-bit effects only


def test_composed_layer_norm_differs_from_fused_in_half_precision() -> None:
    # nn.LayerNorm computes mean/variance in float16; fast.layer_norm in float32. Rows with a
    # large mean and a small spread lose the spread in float16: the two layers disagree,
    # and the twin reproduces each of them exactly.
    rng = np.random.default_rng(1)
    x = (300.0 + rng.standard_normal((4, 16))).astype(np.float32)
    w = np.ones(16, np.float32)
    composed_mx, composed_t = run_nn_ln(x, w, None, 1e-5, ("float16",) * 3)
    fused_mx, fused_t = run_fast_ln(x, w, None, 1e-5, ("float16",) * 3)
    assert same_bits(composed_mx, composed_t) and same_bits(fused_mx, fused_t)
    assert (composed_mx.float() - fused_mx.float()).abs().max() > 1e-2


def test_mlx_half_mean_accumulates_in_float32() -> None:
    # mx.mean of 4096 float16 ones is 1: a float16 accumulator would stall at 2048 (2048 + 1
    # rounds back to 2048). The composed layer norm depends on this; the twin sums in float32.
    ones = mx.ones((1, 4096), dtype=mx.float16)
    assert mx.mean(ones, axis=-1).item() == 1.0
    assert t_fast.mean_last(torch.ones(1, 4096, dtype=torch.float16), "native").item() == 1.0


def test_twin_sums_with_pytorch_not_numpy() -> None:
    # The twin replays no back end's summation order (issue 8): its float32 sum is torch.sum's,
    # which differs from MLX's CPU (sequential) sum in the last bits but stays within gamma_D.
    x = np.random.default_rng(2).standard_normal((64, 1000)).astype(np.float32)
    twin = t_fast.mean_last(torch.from_numpy(x), "native") * 1000
    exact = x.astype(np.float64).mean(axis=-1, keepdims=True) * 1000
    bound = 1000 * 2.0**-24 / (1 - 1000 * 2.0**-24) * np.abs(x).astype(np.float64).sum(-1, keepdims=True)
    assert (np.abs(twin.double().numpy() - exact) <= bound + 1e-3).all()
    assert not hasattr(t_fast, "sequential_sum")


# ---- MLX vs the twin, bit for bit ----------------------------------------------------


def _inputs(d: int, seed: int):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, d)) * 2 + 0.5).astype(np.float32)
    w = rng.standard_normal(d).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32)
    return x, w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [7, 64, 333])
@pytest.mark.parametrize("name", list(RUNNERS))
def test_mlx_matches_twin_bit_for_bit(name: str, d: int, dtype: str) -> None:
    # Bit-exact in every dtype: the twin replays MLX's op order, its sequential float32 sums
    # and its two-step rsqrt (see torch_reference.fast.norms).
    x, w, b = _inputs(d, seed=d)
    y_mx, y_t = RUNNERS[name](x, w, b, 1e-5, (dtype,) * 3)
    assert y_mx.dtype == TORCH_DTYPE[dtype]
    assert same_bits(y_mx, y_t)


@pytest.mark.parametrize(
    "name", ["fast.rms_norm", "fast.RMSNorm", "fast.layer_norm", "fast.LayerNorm", "nn.LayerNorm"]
)
def test_optional_weight_and_bias(name: str) -> None:
    x, w, b = _inputs(16, seed=3)
    combos = {
        "fast.rms_norm": [(None, None)],
        "fast.RMSNorm": [(None, None)],
        "fast.layer_norm": [(None, None), (w, None), (None, b)],
        "fast.LayerNorm": [(None, None), (w, None), (None, b)],
        "nn.LayerNorm": [(w, None)],  # the weight is required, the bias optional
    }[name]
    for ww, bb in combos:
        for dtype in DTYPES:
            y_mx, y_t = RUNNERS[name](x, ww, bb, 1e-5, (dtype,) * 3)
            assert same_bits(y_mx, y_t), (ww is None, bb is None, dtype)


@pytest.mark.parametrize(
    "dtypes",
    [
        ("float16", "float32", "float32"),
        ("bfloat16", "float16", "float16"),
        ("float32", "float16", "bfloat16"),
        ("bfloat16", "bfloat16", "float16"),
    ],
)
@pytest.mark.parametrize("name", list(RUNNERS))
def test_output_dtype_is_the_promotion(name: str, dtypes: tuple[str, str, str]) -> None:
    # weight/bias are cast to the promoted dtype first; RMS norms take no bias.
    x, w, b = _inputs(24, seed=4)
    used = dtypes[:2] if "RMS" in name or "rms" in name else dtypes
    want = functools.reduce(torch.promote_types, (TORCH_DTYPE[d] for d in used))
    y_mx, y_t = RUNNERS[name](x, w, b, 1e-5, dtypes)
    assert y_mx.dtype == y_t.dtype == want
    assert same_bits(y_mx, y_t, stats=TORCH_DTYPE[dtypes[0]] if name == "nn.LayerNorm" else None)


OPT_DTYPES = [None, "float16", "bfloat16", "float32"]
DTYPE_RULE_CASES = [
    (name, xd, wd, bd)
    for name in ("fast.rms_norm", "fast.RMSNorm", "fast.layer_norm", "fast.LayerNorm")
    for xd in DTYPES
    for wd in OPT_DTYPES
    for bd in ([None] if "rms" in name.lower() else OPT_DTYPES)  # RMS norms take no bias
]


@pytest.mark.parametrize(("name", "x_dtype", "w_dtype", "b_dtype"), DTYPE_RULE_CASES)
def test_fast_output_dtype_rule_with_optional_weight_and_bias(
    name: str, x_dtype: str, w_dtype: str | None, b_dtype: str | None
) -> None:
    # MLX's rule, measured over every combination: with a weight the output dtype is the
    # promotion of x, weight (and bias); WITHOUT a weight it is x's dtype whatever the bias
    # dtype -- mx.fast.layer_norm then casts the bias to x's dtype and adds it there (a
    # bfloat16 x with a float32 bias gives bfloat16, not float32). RMS norms take no bias.
    x, w, b = _inputs(12, seed=6)
    b = b / 3  # not representable in the half dtypes: the bias cast is visible in the bits
    ww = None if w_dtype is None else w
    bb = None if b_dtype is None else b
    used = [x_dtype] + ([] if w_dtype is None else [w_dtype] + ([b_dtype] if b_dtype else []))
    want = functools.reduce(torch.promote_types, (TORCH_DTYPE[d] for d in used))
    dts = (x_dtype, w_dtype or "float32", b_dtype or "float32")
    y_mx, y_t = RUNNERS[name](x, ww, bb, 1e-5, dts)
    assert y_mx.dtype == y_t.dtype == want
    assert same_bits(y_mx, y_t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_match(dtype: str) -> None:
    x = np.array(
        [[1, np.nan, 2, 3], [np.inf, 1, 2, 3], [0, 0, 0, 0], [1e-30, -1e-30, 2e-30, 0]], np.float32
    )
    w = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    for name, run in RUNNERS.items():
        y_mx, y_t = run(x, w, w, 1e-5, (dtype,) * 3)
        assert same_bits(y_mx, y_t), name


def test_leading_dims_and_layer_state() -> None:
    x = np.random.default_rng(5).standard_normal((2, 3, 8)).astype(np.float32)
    w = np.ones(8, np.float32)
    for run in RUNNERS.values():
        y_mx, y_t = run(x, w, w, 1e-5, ("float32",) * 3)
        assert y_mx.shape == y_t.shape == (2, 3, 8) and same_bits(y_mx, y_t)
    layer = mx_nn.LayerNorm(to_mx(w), None)
    assert isinstance(layer, mlx.nn.Module) and layer.bias is None
    assert list(layer.parameters()) == ["weight"]  # a None bias is no parameter
    tlayer = t_nn.LayerNorm(to_torch(w), to_torch(w))
    assert set(tlayer.state_dict()) == {"weight", "bias"} and not tlayer.weight.requires_grad
    assert t_fast.RMSNorm(None).weight is None and mx_fast.RMSNorm(None).weight is None


def test_float64_oracle() -> None:
    x, w, b = _inputs(12, seed=6)
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
    x64, w64, b64 = xt.double(), wt.double(), bt.double()
    rms = t_fast.rms_norm(xt, wt, 1e-5, precision="float64")
    want = x64 / torch.sqrt((x64**2).mean(-1, keepdim=True) + 1e-5) * w64
    assert rms.dtype == torch.float64
    torch.testing.assert_close(rms, want, rtol=1e-14, atol=1e-14)
    want_ln = F.layer_norm(x64, (12,), w64, b64, eps=1e-5)
    for y in (
        t_fast.layer_norm(xt, wt, bt, 1e-5, precision="float64"),
        t_fast.LayerNorm(wt, bt)(xt, 1e-5, precision="float64"),
        t_nn.LayerNorm(wt, bt, eps=1e-5)(xt, precision="float64"),
    ):
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, want_ln, rtol=1e-13, atol=1e-13)
    y = t_nn.RMSNorm(wt, eps=1e-5)(xt, precision="float64")
    torch.testing.assert_close(y, want, rtol=1e-14, atol=1e-14)
    # The native float32 result is within float32 rounding of the oracle.
    torch.testing.assert_close(t_fast.rms_norm(xt, wt, 1e-5).double(), want, rtol=1e-6, atol=1e-6)


# ---- errors: both packages reject the same inputs ------------------------------------

ERROR_CASES: list[tuple[str, str, dict[str, Any], type[Exception]]] = [
    ("fast.rms_norm", "negative_eps", {"eps": -1e-5}, ValueError),
    ("fast.rms_norm", "nan_eps", {"eps": math.nan}, ValueError),
    ("fast.rms_norm", "inf_eps", {"eps": math.inf}, ValueError),
    ("fast.rms_norm", "string_eps", {"eps": "1e-5"}, TypeError),
    ("fast.rms_norm", "weight_wrong_length", {"w": np.ones(3, np.float32)}, ValueError),
    ("fast.rms_norm", "weight_2d", {"w": np.ones((1, 4), np.float32)}, ValueError),
    ("fast.rms_norm", "weight_integer", {"w_int": True}, TypeError),
    ("fast.rms_norm", "x_integer", {"x_int": True}, TypeError),
    ("fast.rms_norm", "x_scalar", {"x": np.float32(1.0)}, ValueError),
    ("fast.RMSNorm", "negative_eps", {"eps": -1.0}, ValueError),
    ("fast.RMSNorm", "weight_wrong_length", {"w": np.ones(5, np.float32)}, ValueError),
    ("fast.layer_norm", "bias_wrong_length", {"b": np.ones(5, np.float32)}, ValueError),
    ("fast.layer_norm", "negative_eps", {"eps": -1e-3}, ValueError),
    ("fast.LayerNorm", "weight_bias_shapes_differ", {"b": np.ones(3, np.float32)}, ValueError),
    ("fast.LayerNorm", "bool_eps", {"eps": True}, TypeError),
    ("nn.RMSNorm", "negative_stored_eps", {"stored_eps": -1e-5}, ValueError),
    ("nn.RMSNorm", "negative_call_eps", {"eps": -1e-5}, ValueError),
    ("nn.RMSNorm", "weight_none", {"w_none": True}, TypeError),
    ("nn.RMSNorm", "weight_wrong_length", {"w": np.ones(3, np.float32)}, ValueError),
    ("nn.LayerNorm", "weight_none", {"w_none": True}, TypeError),
    (
        "nn.LayerNorm",
        "weight_wrong_length",
        {"w": np.ones(3, np.float32), "b_none": True},
        ValueError,
    ),
    ("nn.LayerNorm", "negative_eps", {"eps": -1e-5}, ValueError),
    ("nn.LayerNorm", "weight_bias_shapes_differ", {"b": np.ones(3, np.float32)}, ValueError),
]


def _error_call(lib: str, name: str, case: dict[str, Any]) -> Any:
    x = case.get("x", np.ones((2, 4), np.float32))
    w = None if case.get("w_none") else case.get("w", np.ones(4, np.float32))
    b = None if case.get("b_none") else case.get("b", np.ones(4, np.float32))
    eps = case.get("eps", 1e-5)
    if lib == "mlx":
        conv: Any = lambda a: None if a is None else mx.array(a)  # noqa: E731
        fast: Any = mx_fast
        nn_: Any = mx_nn
        as_int: Any = lambda a: mx.array(np.asarray(a).astype(np.int32))  # noqa: E731
    else:
        conv = lambda a: None if a is None else torch.from_numpy(np.asarray(a))  # noqa: E731
        fast, nn_ = t_fast, t_nn
        as_int = lambda a: torch.from_numpy(np.asarray(a).astype(np.int32))  # noqa: E731
    tx = as_int(x) if case.get("x_int") else conv(x)
    tw = as_int(w) if case.get("w_int") else conv(w)
    tb = conv(b)
    if name == "fast.rms_norm":
        return fast.rms_norm(tx, tw, eps)
    if name == "fast.RMSNorm":
        return fast.RMSNorm(tw)(tx, eps)
    if name == "fast.layer_norm":
        return fast.layer_norm(tx, tw, tb, eps)
    if name == "fast.LayerNorm":
        return fast.LayerNorm(tw, tb)(tx, eps)
    if name == "nn.RMSNorm":
        return nn_.RMSNorm(tw, eps=case.get("stored_eps", 1e-5))(tx, eps if "eps" in case else 0.0)
    return nn_.LayerNorm(tw, tb, eps=eps)(tx)


@pytest.mark.parametrize(
    ("name", "label", "case", "exc"), ERROR_CASES, ids=[f"{c[0]}-{c[1]}" for c in ERROR_CASES]
)
@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_errors(
    lib: str, name: str, label: str, case: dict[str, Any], exc: type[Exception]
) -> None:
    with pytest.raises(exc, match=r"^\[(rms_norm|layer_norm|RMSNorm|LayerNorm)\] "):
        _error_call(lib, name, case)


def test_torch_rejects_unknown_precision() -> None:
    x, w = torch.ones(2, 4), torch.ones(4)
    for call in (
        lambda: t_fast.rms_norm(x, w, 1e-5, precision="bf16"),
        lambda: t_fast.layer_norm(x, w, None, 1e-5, precision="bf16"),
        lambda: t_nn.RMSNorm(w)(x, precision="bf16"),
        lambda: t_nn.LayerNorm(w)(x, precision="bf16"),
    ):
        with pytest.raises(ValueError, match="precision"):
            call()
