"""QuantizedLinear and quantized_matmul: both packages against ``x @ dequantize(W).T``
(never the float weight), MLX's own fused-kernel facts, the float64 oracle, the layer's
module plumbing, and errors raised by both packages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn
import numpy as np
import pytest
import torch

import mlx_impl.quantization as mq
import torch_reference.quantization as tq
from mlx_impl.nn.quantized import QuantizedLinear as MxQL
from torch_reference.nn.quantized import QuantizedLinear as TorchQL

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
FORMATS = [("affine", 64, 4), ("affine", 32, 3), ("affine", 128, 8), ("affine", 32, 1),
           ("nvfp4", 16, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8)]  # fmt: skip


def t2m(t: torch.Tensor) -> mx.array:
    if t.dtype == torch.bfloat16:
        return mx.array(t.to(torch.float32).numpy()).astype(mx.bfloat16)
    return mx.array(t.numpy())


def m2t(a: mx.array) -> torch.Tensor:
    if a.dtype == mx.bfloat16:
        return torch.from_numpy(np.array(a.astype(mx.float32))).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def make_layer_inputs(n: int, k: int, dtype: str, mode: str, gs: int, bits: int, seed: int = 0):
    """Float weight, x and bias, and the packed weight from mx.quantize (shared by both)."""
    g = torch.Generator().manual_seed(seed)
    td = TORCH_DTYPE[dtype]
    w = torch.randn(n, k, generator=g).to(td)
    x = torch.randn(2, k, generator=g).to(td)
    bias = torch.randn(n, generator=g).to(td)
    wq, s, b = (None if a is None else m2t(a) for a in mq.quantize(t2m(w), gs, bits, mode))
    return w, x, bias, wq, s, b


def accumulation_bound(x, wq, s, b, gs, bits, mode, out_dtype) -> torch.Tensor:
    """Worst-case error of any summation order of K products rounded to ``out_dtype``
    (Higham, first order): ``(K + K/gs + 4) * u * |x| @ (|q*s| + |b|).T + 2u|y|``.
    The K/gs and 4 terms count the per-group partial sums, the two dequantize roundings
    and the product; |q*s| + |b| (not |w|) because q*s and b may cancel."""
    zero = None if b is None else torch.zeros_like(b)
    qs = tq.dequantize(wq, s, zero, gs, bits, mode, precision="float64").abs()
    if b is not None:
        qs = qs + b.to(torch.float64).abs().repeat_interleave(gs, dim=-1)
    mag = x.to(torch.float64).abs() @ qs.T
    k = x.shape[-1]
    u = UNIT_ROUNDOFF[out_dtype]
    y = tq.quantized_matmul(x, wq, s, b, True, gs, bits, mode, precision="float64")
    return (k + k // gs + 4) * u * mag + 2 * u * y.abs()


# ------------------------------------------------------------------------------ facts


@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS[:4])
@pytest.mark.usefixtures("shipped_blas")
def test_float32_affine_kernel_is_bit_identical_to_matmul_of_dequantized(mode, gs, bits):
    """SEMANTICS.md, verified: float32 affine mx.quantized_matmul == MLX's own
    x @ mx.dequantize(w).T, bit for bit (K = 128 and 256)."""
    for k in (128, 256):
        _, x, _, wq, s, b = make_layer_inputs(8, k, "float32", mode, gs, bits)
        mx_x, mx_wq, mx_s, mx_b = t2m(x), t2m(wq), t2m(s), t2m(b)
        fused = mx.quantized_matmul(mx_x, mx_wq, mx_s, mx_b, True, gs, bits, mode)
        plain = mx_x @ mx.dequantize(mx_wq, mx_s, mx_b, gs, bits, mode).T
        assert np.array_equal(np.array(fused), np.array(plain))


def cpu_kernel_emulation(x, wq, s, b, gs, bits, mode):
    """MLX 0.32.4's x86 CPU quantized_matmul, reproduced step by step (T = output dtype,
    every op rounded to T, no FMA; loops in the order the kernel runs them):

    affine: ``acc = R(acc + R(x_k * w_k))`` for k = 0..K-1, ``w = R(R(q * s) + b)``.
    fp modes: per group ``g = R(g + R(x_k * v_k))``; then ``acc = R(acc + R(S * g))``
    group after group, ``S`` the block scale rounded to T.
    """
    out = torch.promote_types(x.dtype, s.dtype) if mode == "affine" else x.dtype
    x = x.to(out)
    k, n = x.shape[-1], wq.shape[0]
    acc = torch.zeros(*x.shape[:-1], n, dtype=out)
    if mode == "affine":
        w = tq.dequantize(wq, s.to(out), b.to(out), gs, bits, mode)
        for i in range(k):
            acc = acc + x[..., i, None] * w[:, i]
        return acc
    codes = tq._unpack(wq, bits).reshape(n, k // gs, gs)
    values, scale = tq._decode(codes, s, mode, bits)
    values, scale = values.to(out), scale[..., 0].to(out)
    xg = x.reshape(*x.shape[:-1], 1, k // gs, gs)
    group = torch.zeros(*x.shape[:-1], n, k // gs, dtype=out)
    for i in range(gs):
        group = group + xg[..., i] * values[..., i]
    for j in range(k // gs):
        acc = acc + scale[:, j] * group[..., j]
    return acc


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS)
def test_mlx_cpu_kernel_accumulates_sequentially_in_the_output_dtype(dtype, mode, gs, bits):
    """Pins SEMANTICS.md's "the CPU kernel accumulates in the INPUT dtype" exactly: MLX's
    x86 CPU quantized_matmul equals cpu_kernel_emulation BIT FOR BIT in every dtype and
    mode (float32 too; M = 1 and batched). The twin's native reference stays
    x @ dequantize(W).T (float32 accumulation), the back-end-independent definition."""
    k = 128
    for lead in ((1,), (2, 3)):
        g = torch.Generator().manual_seed(len(lead))
        w = torch.randn(8, k, generator=g).to(TORCH_DTYPE[dtype])
        x = torch.randn(*lead, k, generator=g).to(TORCH_DTYPE[dtype])
        wq, s, b = tq.quantize(w, gs, bits, mode)
        got = mq.quantized_matmul(
            t2m(x), t2m(wq), t2m(s), None if b is None else t2m(b), True, gs, bits, mode
        )
        assert torch.equal(m2t(got), cpu_kernel_emulation(x, wq, s, b, gs, bits, mode))


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype", "mode", "want"),
    [
        ("float16", "float32", "affine", "float32"),
        ("bfloat16", "float16", "affine", "float32"),
        ("float32", "bfloat16", "affine", "float32"),
        ("bfloat16", "bfloat16", "affine", "bfloat16"),
        ("float16", "float32", "mxfp8", "float16"),
        ("bfloat16", "float32", "nvfp4", "bfloat16"),
        ("float32", "float16", "mxfp4", "float32"),
    ],
)
def test_output_dtype_is_the_promotion_of_x_and_scales_or_x_for_fp_modes(
    x_dtype, w_dtype, mode, want
):
    gs, bits = {"affine": (64, 4), "nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}[mode]
    w = torch.randn(4, 64).to(TORCH_DTYPE[w_dtype])
    x = torch.randn(1, 64).to(TORCH_DTYPE[x_dtype])
    wq, s, b = tq.quantize(w, gs, bits, mode)
    y_t = tq.quantized_matmul(x, wq, s, b, True, gs, bits, mode)
    y_m = mq.quantized_matmul(
        t2m(x), t2m(wq), t2m(s), None if b is None else t2m(b), True, gs, bits, mode
    )
    assert y_t.dtype == TORCH_DTYPE[want]
    assert y_m.dtype == MX_DTYPE[want]
    # Mixed affine dtypes: MLX casts scales/biases to the promoted dtype, so the result
    # is the float32 product of x with W dequantized in float32 from the widened scales.
    ref = tq.quantized_matmul(x, wq, s, b, True, gs, bits, mode, precision="float64")
    bound = accumulation_bound(x, wq, s, b, gs, bits, mode, TORCH_DTYPE[want])
    assert ((m2t(y_m).double() - ref).abs() <= bound).all()


# ------------------------------------------------------------------ layer vs reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS)
def test_layers_agree_with_x_at_dequantized_w(dtype, mode, gs, bits):
    """Both layers, built from the same packed weights, stay within the accumulation
    bound of the float64 oracle x @ dequantize(W).T + bias (tiny 2 x 8 x 64: MLX's CPU
    half-precision kernel is slow and accumulates in the input dtype)."""
    k = 128 if gs == 128 else 64
    _, x, bias, wq, s, b = make_layer_inputs(8, k, dtype, mode, gs, bits, seed=gs + bits)
    m_layer = MxQL(t2m(wq), t2m(s), None if b is None else t2m(b), t2m(bias), gs, bits, mode)
    t_layer = TorchQL(wq, s, b, bias, gs, bits, mode)
    y_m = m2t(m_layer(t2m(x)))
    y_t = t_layer(x)
    y64 = t_layer(x, precision="float64")
    assert y_m.dtype == y_t.dtype == TORCH_DTYPE[dtype]
    assert y64.dtype == torch.float64 and y_m.shape == y_t.shape == y64.shape == (2, 8)
    bound = accumulation_bound(x, wq, s, b, gs, bits, mode, TORCH_DTYPE[dtype])
    bound = bound + 2 * UNIT_ROUNDOFF[TORCH_DTYPE[dtype]] * (y64.abs() + bias.double().abs())
    for name, y in (("mlx", y_m), ("torch", y_t)):
        err = (y.double() - y64).abs()
        assert (err <= bound).all(), f"{name}: max err {err.max():.3g}, bound {bound.min():.3g}"


def test_the_bound_catches_a_wrong_zero_point_or_scale():
    """The tolerance is not vacuous: dropping the zero-point biases, or reading the
    neighbouring group's scales, lands far outside it (float32)."""
    _, x, _, wq, s, b = make_layer_inputs(8, 128, "float32", "affine", 64, 4, seed=5)
    ref = tq.quantized_matmul(x, wq, s, b, True, 64, 4, "affine", precision="float64")
    bound = accumulation_bound(x, wq, s, b, 64, 4, "affine", torch.float32)
    no_zero = m2t(
        mq.quantized_matmul(t2m(x), t2m(wq), t2m(s), t2m(torch.zeros_like(b)), True, 64, 4)
    )
    rolled = m2t(mq.quantized_matmul(t2m(x), t2m(wq), t2m(s.roll(1, -1)), t2m(b), True, 64, 4))
    assert ((no_zero.double() - ref).abs() > bound).any()
    assert ((rolled.double() - ref).abs() > bound).any()


@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS)
def test_float32_layers_agree_closely(mode, gs, bits):
    """float32: MLX and the twin differ only by summation order (a few ulp of |y|)."""
    _, x, bias, wq, s, b = make_layer_inputs(16, 256, "float32", mode, gs, bits, seed=1)
    y_m = m2t(
        MxQL(t2m(wq), t2m(s), None if b is None else t2m(b), t2m(bias), gs, bits, mode)(t2m(x))
    )
    y_t = TorchQL(wq, s, b, bias, gs, bits, mode)(x)
    assert torch.allclose(y_m, y_t, rtol=0, atol=2e-5 * float(y_t.abs().max()))


def test_float64_oracle_is_exact_dequantize_then_float64_matmul():
    _, x, bias, wq, s, b = make_layer_inputs(8, 64, "bfloat16", "affine", 64, 4)
    layer = TorchQL(wq, s, b, bias, 64, 4, "affine")
    w64 = tq.dequantize(wq, s, b, 64, 4, "affine", precision="float64")
    want = x.double() @ w64.T + bias.double()
    assert torch.equal(layer(x, precision="float64"), want)
    with pytest.raises(ValueError, match=r"^\[QuantizedLinear\] precision"):
        layer(x, precision="float32")


def test_transpose_false_multiplies_by_w():
    """quantized_matmul(transpose=False) = x @ W with W [K, N] quantized along N."""
    w = torch.randn(64, 32)
    x = torch.randn(3, 64)
    wq, s, _ = tq.quantize(w, 16, 4, "nvfp4")
    y_t = tq.quantized_matmul(x, wq, s, None, False, 16, 4, "nvfp4")
    y_m = m2t(mq.quantized_matmul(t2m(x), t2m(wq), t2m(s), None, False, 16, 4, "nvfp4"))
    w_deq = tq.dequantize(wq, s, None, 16, 4, "nvfp4", torch.float32)
    assert y_t.shape == y_m.shape == (3, 32)
    assert torch.allclose(y_t, x @ w_deq, rtol=0, atol=1e-5)
    assert torch.allclose(y_m, y_t, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- construction


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS)
def test_from_float_is_bit_identical_across_packages(dtype, mode, gs, bits):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 128, generator=g).to(TORCH_DTYPE[dtype])
    bias = torch.randn(4, generator=g).to(TORCH_DTYPE[dtype])
    m_layer = MxQL.from_float(t2m(w), t2m(bias), gs, bits, mode)
    t_layer = TorchQL.from_float(w, bias, gs, bits, mode)
    assert torch.equal(m2t(m_layer.weight), t_layer.weight)
    assert torch.equal(m2t(m_layer.scales), t_layer.scales)
    if mode == "affine":
        assert m_layer.biases is not None and t_layer.biases is not None
        assert torch.equal(m2t(m_layer.biases), t_layer.biases)
    else:
        assert m_layer.biases is None and t_layer.biases is None
    assert m_layer.bias is not None and t_layer.bias is not None
    assert torch.equal(m2t(m_layer.bias), t_layer.bias)
    assert m_layer.output_dim == t_layer.output_dim == 4
    assert m_layer.in_features == t_layer.in_features == 128
    assert (m_layer.group_size, m_layer.bits, m_layer.mode) == (gs, bits, mode)


def test_module_plumbing():
    """mlx: a frozen mlx.nn.Module whose parameters() hold the arrays (None ones absent);
    torch: packed weight / scales / biases are buffers, the layer bias a frozen Parameter,
    and a state_dict round trip restores the layer."""
    w = torch.randn(8, 64)
    m_layer = MxQL.from_float(t2m(w), None, 32, 4, "mxfp4")
    assert isinstance(m_layer, mlx.nn.Module)
    assert set(m_layer.parameters()) == {"weight", "scales"}
    assert m_layer.trainable_parameters() == {}
    assert m_layer.weight.dtype == mx.uint32 and m_layer.scales.dtype == mx.uint8

    t_layer = TorchQL.from_float(w, torch.zeros(8), 64, 4, "affine")
    assert isinstance(t_layer, torch.nn.Module)
    assert {n for n, _ in t_layer.named_buffers()} == {"weight", "scales", "biases"}
    assert [n for n, _ in t_layer.named_parameters()] == ["bias"]
    assert t_layer.bias is not None and not t_layer.bias.requires_grad
    assert t_layer.weight.dtype == torch.uint32
    other = TorchQL.from_float(torch.randn(8, 64), torch.ones(8), 64, 4, "affine")
    other.load_state_dict(t_layer.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(other(x), t_layer(x))


def test_batched_input():
    _, _, bias, wq, s, b = make_layer_inputs(8, 64, "float32", "affine", 64, 4)
    x = torch.randn(2, 3, 64)
    y_t = TorchQL(wq, s, b, bias)(x)
    y_m = m2t(MxQL(t2m(wq), t2m(s), t2m(b), t2m(bias))(t2m(x)))
    assert y_t.shape == y_m.shape == (2, 3, 8)
    assert torch.allclose(y_t, y_m, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------- errors


def _packed(mode: str):
    gs, bits = {"affine": (64, 4), "nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}[mode]
    wq, s, b = tq.quantize(torch.ones(4, 64), gs, bits, mode)
    return wq, s, b, gs, bits


CONSTRUCTION_ERRORS = {
    "fp mode given biases": (ValueError, lambda: _fp_with_biases()),
    "affine without biases": (ValueError, lambda: _affine(biases=None)),
    "scales of the wrong shape": (ValueError, lambda: _affine(scales_slice=True)),
    "bias of the wrong length": (ValueError, lambda: _affine(bias=torch.zeros(3))),
    "bias of an integer dtype": (
        TypeError,
        lambda: _affine(bias=torch.zeros(4, dtype=torch.int32)),
    ),
    "weight not uint32": (TypeError, lambda: _affine(weight_dtype=torch.int32)),
    "weight 3-D": (ValueError, lambda: _affine(weight_3d=True)),
    "fp scales not uint8": (TypeError, lambda: _fp_float_scales()),
    "bits 7": (ValueError, lambda: _affine(bits=7)),
    "unknown mode": (ValueError, lambda: _affine(mode="q4")),
}


def _affine(
    biases="keep",
    scales_slice=False,
    bias=None,
    weight_dtype=None,
    weight_3d=False,
    bits=4,
    mode="affine",
):
    wq, s, b, gs, _ = _packed("affine")
    if weight_dtype is not None:
        wq = wq.view(weight_dtype)
    if weight_3d:
        wq, s, b = wq[None], s[None], b[None]
    if scales_slice:
        s, b = s[:, :0], b[:, :0]
    return (wq, s, b if biases == "keep" else biases, bias, gs, bits, mode)


def _fp_with_biases():
    wq, s, _, gs, bits = _packed("mxfp4")
    return (wq, s, torch.zeros(s.shape), None, gs, bits, "mxfp4")


def _fp_float_scales():
    wq, s, _, gs, bits = _packed("nvfp4")
    return (wq, s.float(), None, None, gs, bits, "nvfp4")


def _to_mx(args):
    return tuple(t2m(a) if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("case", sorted(CONSTRUCTION_ERRORS))
def test_constructor_errors_in_both_packages(case):
    exc, make = CONSTRUCTION_ERRORS[case]
    args = make()
    with pytest.raises(exc, match=r"^\[QuantizedLinear\] "):
        TorchQL(*args)
    with pytest.raises(exc, match=r"^\[QuantizedLinear\] "):
        MxQL(*_to_mx(args))


def test_call_errors_in_both_packages():
    wq, s, b, gs, bits = _packed("affine")
    layers: list[tuple[Any, Callable[[torch.Tensor], Any]]] = [
        (TorchQL(wq, s, b, None, gs, bits), lambda t: t),
        (MxQL(t2m(wq), t2m(s), None if b is None else t2m(b), None, gs, bits), t2m),
    ]
    for layer, to in layers:
        with pytest.raises(
            ValueError, match=r"^\[QuantizedLinear\] input last dim must equal in_features 64"
        ):
            layer(to(torch.ones(2, 32)))
        with pytest.raises(TypeError, match=r"^\[QuantizedLinear\] x must be"):
            layer(to(torch.ones(2, 64, dtype=torch.int32)))


def test_from_float_errors_in_both_packages():
    pairs: list[tuple[Any, Callable[[torch.Tensor], Any]]] = [(TorchQL, lambda t: t), (MxQL, t2m)]
    for cls, to in pairs:
        with pytest.raises(ValueError, match=r"^\[QuantizedLinear\] weight must be 2-D"):
            cls.from_float(to(torch.ones(64)))
        with pytest.raises(ValueError, match=r"^\[quantize\] mode 'nvfp4' supports group_size"):
            cls.from_float(to(torch.ones(4, 64)), None, 64, 4, "nvfp4")
        with pytest.raises(ValueError, match=r"^\[quantize\] .*divisible by group_size 64"):
            cls.from_float(to(torch.ones(4, 96)))


def _tiny_and_non_finite_weights(dtype: str) -> list[tuple[torch.Tensor, str, str]]:
    """(weight, mode, message pattern): a float32 / bfloat16 mxfp4 and mxfp8 group whose
    E8M0 scale code would wrap (amax 2^-126 for mxfp4, 2^-122 for mxfp8: in bfloat16
    2^-126 / 448 underflows to 0, which is allowed), and inf / NaN weights."""
    td = TORCH_DTYPE[dtype]
    cases = []
    if dtype != "float16":  # float16 can never wrap (tests/test_quantization.py)
        for mode in ("mxfp4", "mxfp8"):
            w = torch.ones(4, 64, dtype=td)
            w[2, 32:] = 0
            w[2, 40] = 2.0**-126 if mode == "mxfp4" else 2.0**-122
            cases.append((w, mode, rf"^\[quantize\] mode '{mode}': row 2, group 1 .*2\^-128"))
    for mode, value in (("affine", float("inf")), ("mxfp4", float("nan")), ("nvfp4", -np.inf)):
        w = torch.ones(4, 64, dtype=td)
        w[3, 9] = value
        cases.append((w, mode, rf"^\[quantize\] mode '{mode}': .* element \(3, 9\) is "))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_from_float_and_to_quantized_refuse_wrapping_groups_and_non_finite_weights(dtype):
    """QuantizedLinear.from_float and Linear.to_quantized go through quantize, so both
    packages refuse (before mx.quantize) weights MLX would silently turn into inf / NaN
    or dtype-dependent codes."""
    from mlx_impl.nn.linear import Linear as MxLinear
    from torch_reference.nn.linear import Linear as TorchLinear

    gs_bits = {"affine": (64, 4), "nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}
    for w, mode, pattern in _tiny_and_non_finite_weights(dtype):
        gs, bits = gs_bits[mode]
        bias = torch.zeros(4, dtype=w.dtype)
        with pytest.raises(ValueError, match=pattern):
            TorchQL.from_float(w, bias, gs, bits, mode)
        with pytest.raises(ValueError, match=pattern):
            MxQL.from_float(t2m(w), t2m(bias), gs, bits, mode)
        with pytest.raises(ValueError, match=pattern):
            TorchLinear(w, bias).to_quantized(gs, bits, mode)
        with pytest.raises(ValueError, match=pattern):
            MxLinear(t2m(w), t2m(bias)).to_quantized(gs, bits, mode)


# ------------------------------------------------------------- empty batches (SIGFPE)

# The child processes below print one JSON line; a child killed by a signal has a negative
# return code (subprocess's convention), so a crash fails a test instead of killing pytest.
_ROOT = Path(__file__).resolve().parent.parent
_EMPTY_FORMATS = [("affine", 32, 4), ("nvfp4", 16, 4), ("mxfp4", 32, 4), ("mxfp8", 32, 8)]
# (x shape, x dtype, scales dtype, transpose) for a [4, 64] weight ([64, 4 * ...] when
# transpose is False): every way for x to be empty, and mixed dtypes for the dtype rule.
_EMPTY_CASES = [
    ((0, 64), "float32", "float32", True),
    ((0, 64), "float16", "bfloat16", True),
    ((2, 0, 64), "bfloat16", "bfloat16", True),
    ((0, 1, 64), "float16", "float32", True),
    ((3, 2, 0, 64), "bfloat16", "float16", True),
    ((0, 64), "float32", "bfloat16", False),
]


def _run_child(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=_ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def _empty_case_inputs(mode: str, gs: int, bits: int, xs, x_dt: str, s_dt: str, tr: bool):
    """Torch inputs of one empty case: x, packed weight, scales, biases, layer bias."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 64, generator=g) if tr else torch.randn(64, 64, generator=g)
    wq, s, b = tq.quantize(w.to(TORCH_DTYPE[s_dt]), gs, bits, mode)
    x = torch.zeros(xs, dtype=TORCH_DTYPE[x_dt])
    bias = torch.randn(wq.shape[0], generator=g).to(torch.float16)
    return x, wq, s, b, bias


_EMPTY_CHILD = """
import json, sys
import mlx.core as mx, numpy as np, torch
sys.path.insert(0, "tests")
import mlx_impl.quantization as mq
from mlx_impl.nn.quantized import QuantizedLinear
from test_quantized_linear import _EMPTY_CASES, _EMPTY_FORMATS, _empty_case_inputs, t2m

out = []
for mode, gs, bits in _EMPTY_FORMATS:
    for xs, x_dt, s_dt, tr in _EMPTY_CASES:
        x, wq, s, b, bias = _empty_case_inputs(mode, gs, bits, xs, x_dt, s_dt, tr)
        args = (t2m(wq), t2m(s), None if b is None else t2m(b))
        y = mq.quantized_matmul(t2m(x), *args, tr, gs, bits, mode)
        mx.eval(y)
        row = {"fn": [list(y.shape), str(y.dtype)]}
        if tr:
            for name, lb in (("layer", None), ("layer+bias", t2m(bias))):
                z = QuantizedLinear(*args, lb, gs, bits, mode)(t2m(x))
                mx.eval(z)
                row[name] = [list(z.shape), str(z.dtype)]
        out.append(row)
print(json.dumps(out))
"""


def test_empty_batches_give_empty_results_without_reaching_mlx_kernel():
    """mx.quantized_matmul 0.32.4 (CPU) dies with SIGFPE on an empty x in every mode
    (test_raw_mlx_quantized_matmul_crashes_on_an_empty_batch). mlx_impl's
    quantized_matmul and QuantizedLinear must return the empty result instead, of the
    twin's shape and dtype (the affine promotion of x and the scales, x's dtype for fp
    modes, then the layer bias' promotion). The MLX calls run in a child process so that a
    regression fails this test instead of killing pytest."""
    done = _run_child(_EMPTY_CHILD)
    assert done.returncode == 0, (
        f"the child exited with {done.returncode} (negative: killed by that signal, i.e. "
        f"the empty input reached mx.quantized_matmul):\n{done.stderr[-3000:]}"
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    cases = [(f, c) for f in _EMPTY_FORMATS for c in _EMPTY_CASES]
    assert len(rows) == len(cases)
    for ((mode, gs, bits), (xs, x_dt, s_dt, tr)), row in zip(cases, rows, strict=True):
        x, wq, s, b, bias = _empty_case_inputs(mode, gs, bits, xs, x_dt, s_dt, tr)
        want = tq.quantized_matmul(x, wq, s, b, tr, gs, bits, mode)
        assert want.numel() == 0
        what = (mode, xs, x_dt, s_dt, tr)
        assert row["fn"] == [list(want.shape), f"mlx.core.{str(want.dtype)[6:]}"], what
        # The dtype is also MLX's own for a non-empty x of the same dtypes.
        full = mq.quantized_matmul(
            t2m(torch.ones(1, xs[-1], dtype=x.dtype)), t2m(wq), t2m(s),
            None if b is None else t2m(b), tr, gs, bits, mode,
        )  # fmt: skip
        assert row["fn"][1] == str(full.dtype), what
        if tr:
            layer = TorchQL(wq, s, b, None, gs, bits, mode)(x)
            with_bias = TorchQL(wq, s, b, bias, gs, bits, mode)(x)
            for name, t in (("layer", layer), ("layer+bias", with_bias)):
                assert row[name] == [list(t.shape), f"mlx.core.{str(t.dtype)[6:]}"], what


_RAW_CRASH_CHILD = """
import mlx.core as mx
mode, gs, bits = {fmt!r}
k = 64
w = mx.ones((4, k))
wq, s, *b = mx.quantize(w, gs, bits, mode)
y = mx.quantized_matmul(mx.zeros((0, k)), wq, s, b[0] if b else None, True, gs, bits, mode)
mx.eval(y)
print("returned", y.shape)
"""


@pytest.mark.parametrize("fmt", _EMPTY_FORMATS, ids=lambda f: f[0])
def test_raw_mlx_quantized_matmul_crashes_on_an_empty_batch(fmt):
    """Pins that MLX 0.32.4 crashes: ``mx.quantized_matmul`` on the CPU with x ``[0, K]``
    kills the process (SIGFPE, exit 136 from a shell) in every mode, which is why
    mlx_impl never hands it an empty x. Run in a child process; passes whenever the child
    is killed by a signal. If this fails because the call now returns, MLX has fixed the
    crash: revisit the empty-batch guards in mlx_impl/quantization.py (quantized_matmul)
    and mlx_impl/nn/quantized.py (QuantizedLinear.__call__)."""
    done = _run_child(_RAW_CRASH_CHILD.format(fmt=fmt))
    assert done.returncode != 0, (
        f"mx.quantized_matmul {getattr(mx, '__version__', '?')} no longer crashes on an empty batch in mode "
        f"{fmt[0]!r} ({done.stdout.strip()}): revisit the empty-batch guards in mlx_impl."
    )
    # Any signal pins the crash (SIGFPE on x86 today); an ordinary exit code would mean
    # MLX raised a Python exception instead, which also needs a look.
    assert done.returncode < 0, (
        f"expected the child to be killed by a signal (SIGFPE) but it exited with "
        f"{done.returncode}: {done.stderr[-2000:]}"
    )


# ---------------------------------------------------------- nvfp4 odd groups, batches


@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (1, 48), (3, 1, 16)])
def test_quantized_matmul_and_layer_accept_nvfp4_weights_mx_dequantize_cannot_unpack(shape):
    """mx.dequantize 0.32.4 fails on nvfp4 weights whose element count is not a multiple
    of 32 (both packages' dequantize refuse them, tests/test_quantization.py), but the
    fused mx.quantized_matmul computes them correctly, so quantized_matmul and
    QuantizedLinear accept them in both packages and agree with x @ dequantize(W).T."""
    g = torch.Generator().manual_seed(5)
    wq = torch.randint(0, 2**31, (*shape[:-1], shape[-1] // 8), generator=g).to(torch.uint32)
    s = torch.randint(40, 60, (*shape[:-1], shape[-1] // 16), generator=g).to(torch.uint8)
    x = torch.randn(*shape[:-2], 2, shape[-1], generator=g)
    y_t = tq.quantized_matmul(x, wq, s, None, True, 16, 4, "nvfp4")
    y_m = m2t(mq.quantized_matmul(t2m(x), t2m(wq), t2m(s), None, True, 16, 4, "nvfp4"))
    ref = tq.quantized_matmul(x, wq, s, None, True, 16, 4, "nvfp4", precision="float64")
    assert y_t.shape == y_m.shape == (*shape[:-2], 2, shape[-2])
    # The exact float64 W through the private helper (the public dequantize refuses it).
    w64 = tq._dequantize(wq, s, None, shape[-1], 16, 4, "nvfp4", None, None, "float64")
    mag = x.double().abs() @ w64.abs().transpose(-1, -2)
    bound = (shape[-1] + 8) * 2.0**-24 * mag  # float32 summation, any order
    assert ((y_m.double() - ref).abs() <= bound).all()
    assert ((y_t.double() - ref).abs() <= bound).all()
    if len(shape) == 2:
        layer_t = TorchQL(wq, s, None, None, 16, 4, "nvfp4")(x)
        layer_m = m2t(MxQL(t2m(wq), t2m(s), None, None, 16, 4, "nvfp4")(t2m(x)))
        assert torch.equal(layer_t, y_t)
        assert torch.equal(layer_m, y_m)


@pytest.mark.parametrize("transpose", [True, False])
def test_batched_weights_agree_when_x_has_the_weights_rank(transpose):
    """A batched packed weight works when x has at least its rank and broadcasting batch
    dims (MLX 0.32.4 computes it correctly then)."""
    g = torch.Generator().manual_seed(6)
    w = torch.randn(3, 4, 64, generator=g) if transpose else torch.randn(3, 64, 64, generator=g)
    wq, s, b = tq.quantize(w, 32, 4, "affine")
    assert b is not None
    k = 64
    for lead in ((3, 5), (1, 5), (2, 3, 5), (2, 1, 1)):
        x = torch.randn(*lead, k, generator=g)
        y_t = tq.quantized_matmul(x, wq, s, b, transpose, 32, 4, "affine")
        y_m = m2t(mq.quantized_matmul(t2m(x), t2m(wq), t2m(s), t2m(b), transpose, 32, 4))
        w_deq = tq.dequantize(wq, s, b, 32, 4, "affine", precision="float64")
        ref = x.double() @ (w_deq.transpose(-1, -2) if transpose else w_deq)
        assert y_t.shape == y_m.shape == ref.shape, lead
        assert torch.allclose(y_m.double(), ref, rtol=0, atol=1e-4), lead
        assert torch.allclose(y_t.double(), ref, rtol=0, atol=1e-4), lead


def test_raw_mlx_drops_the_weights_batch_for_a_lower_rank_x():
    """Why both packages refuse x of lower rank than a batched weight: MLX 0.32.4 returns
    [5, 2] for x [5, 32] times a weight [3, 2, 32] instead of [3, 5, 2] (no error), and
    fails with a "[broadcast_shapes]" error for batch dims that do not broadcast."""
    wq, s, b = mx.quantize(mx.ones((3, 2, 32)), 32, 4)
    assert mx.quantized_matmul(mx.ones((5, 32)), wq, s, b, True, 32, 4).shape == (5, 2)
    with pytest.raises(ValueError, match=r"broadcast_shapes"):
        mx.eval(mx.quantized_matmul(mx.ones((2, 1, 32)), wq, s, b, True, 32, 4))


@pytest.mark.parametrize(
    ("x_shape", "pattern"),
    [
        ((32,), r"needs x with at least 3 dims"),
        ((5, 32), r"needs x with at least 3 dims"),
        ((2, 1, 32), r"batch dims of x \(2,\) and of the packed weight \(3,\) must broadcast"),
        ((4, 2, 1, 32), r"batch dims of x \(4, 2\) and of the packed weight \(3,\)"),
    ],
)
def test_both_refuse_batched_weights_mlx_would_mishandle(x_shape, pattern):
    wq, s, b = tq.quantize(torch.ones(3, 2, 32), 32, 4, "affine")
    assert b is not None
    x = torch.ones(x_shape)
    with pytest.raises(ValueError, match=rf"^\[quantized_matmul\] .*{pattern}"):
        tq.quantized_matmul(x, wq, s, b, True, 32, 4)
    with pytest.raises(ValueError, match=rf"^\[quantized_matmul\] .*{pattern}"):
        mq.quantized_matmul(t2m(x), t2m(wq), t2m(s), t2m(b), True, 32, 4)
