"""Records for quantization: ``quantization.quantize`` / ``dequantize`` (bit-exact),
``quantization.quantized_matmul`` and ``nn.QuantizedLinear`` (and ``Linear.to_quantized``),
in every mode MLX has: affine (bits 1-8 but 7, groups 32/64/128), nvfp4, mxfp4, mxfp8.

Quantized products are compared with ``x @ dequantize(w).T`` from the SAME packed weights
(made once by ``mx.quantize`` in ``derive``), never with the float weight.

mxfp4 / mxfp8 weights are never drawn from the "tiny" profile: their groups would have
amax / maxval <= 2^-128, whose E8M0 scale code MLX wraps (to inf / garbage), and mlx_impl
refuses such groups; QUANTIZE's error cases cover the refusal (and inf weights).
"""

from __future__ import annotations

import dataclasses
import functools

import mlx.core as mx
import numpy as np
import torch
from hypothesis import strategies as st

import torch_reference
from conformance.dtypes import FORMATS, mlx_to_numpy, to_mlx
from conformance.execute import backend_name
from conformance.record import (
    BenchCase,
    Case,
    EdgeCase,
    ErrorCase,
    ExpectedDivergence,
    Mutant,
    OpRecord,
    constant,
)
from conformance.records import quantized_fuzz
from conformance.strategies import arrays, fill, massive_activations
from conformance.tolerance import EXACT, Tolerance

MODES = ("affine", "nvfp4", "mxfp4", "mxfp8")
AFFINE_BITS = (4, 8, 2, 3, 5, 6, 1)
AFFINE_GROUPS = (64, 32, 128)
FP_FORMATS = {"nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}
WEIGHT_PROFILES = ("normal", "ints", "mixed", "tiny", "large")


def affine_bits(backend: str) -> tuple[int, ...]:
    """The affine bit widths the back end supports: MLX's CUDA back end has no 1-bit
    (``mlx_impl`` refuses it there; the error case ``CUDA_ONE_BIT`` covers the refusal)."""
    return tuple(b for b in AFFINE_BITS if not (b == 1 and backend == "cuda"))


@st.composite
def _format(draw, mode):
    if mode == "affine":
        bits = draw(st.sampled_from(affine_bits(backend_name())), label="bits")
        group = draw(st.sampled_from(AFFINE_GROUPS), label="group_size")
        return group, bits
    return FP_FORMATS[mode]


# mxfp4 / mxfp8 never draw "tiny" weights (1 to 8 x the dtype's smallest normal): such a
# group has amax / maxval <= 2^-128, so MLX's E8M0 scale code (s + 127) mod 256 wraps
# (e.g. to 255 = 2^128 = inf) and mlx_impl / torch_reference refuse it with a ValueError;
# QUANTIZE's "mxfp4 group whose scale code would wrap" error case covers that instead.
_MX_MODES_WITHOUT_TINY = ("mxfp4", "mxfp8")


CUDA_SINGLE_GROUP_FORMATS: tuple[tuple[int, int], ...] = ((64, 4), (128, 8), (128, 4), (64, 8))
"""(group size, bits) of the affine formats that MLX 0.32.4's CUDA back end sends to its
Hopper kernel ``qmm_sm90`` when a row is ONE group (``K`` = group size), the weight has a
multiple of 4 rows and ``x`` more than one row: wrong products (relative error ~1; found by
the H200 model-level run, ``python -m conformance repro cuda_affine_single_group_qmm``;
mlx_impl guards it). The random affine formats reach that boundary about once in 100 draws,
so the quantized-matmul cells draw it on purpose in 1 affine draw of 4, and every run checks
it as edge cases (``_single_group_edge_cases``)."""


def hits_cuda_single_group_kernel(x_shape: tuple[int, ...], n: int, params) -> bool:
    """Whether a transposed quantized matmul of ``x`` (shape ``x_shape``) by an ``[n, K]``
    weight lies on the boundary of ``CUDA_SINGLE_GROUP_FORMATS``."""
    k = x_shape[-1]
    rows = int(np.prod(x_shape[:-1], dtype=np.int64))
    return (params["mode"] == "affine" and params["bits"] in (4, 8) and k == params["group_size"]
            and k % 64 == 0 and n % 4 == 0 and rows > 1)


@st.composite
def _weight(draw, dtype, mode, n_choices=(1, 2, 5, 16), profiles=WEIGHT_PROFILES, one_group=False):
    """A float weight and its format. ``one_group``: the boundary of
    ``CUDA_SINGLE_GROUP_FORMATS`` (affine, 4 or 8 bits, group 64 or 128, one group per row,
    a multiple of 4 rows)."""
    if mode in _MX_MODES_WITHOUT_TINY:
        profiles = tuple(p for p in profiles if p != "tiny")  # see _MX_MODES_WITHOUT_TINY
    if one_group:
        group, bits = draw(st.sampled_from(CUDA_SINGLE_GROUP_FORMATS), label="single_group_format")
        groups = 1
        n_choices = (16, 4)
    else:
        group, bits = draw(_format(mode))
        groups = draw(st.sampled_from((1, 2, 3)), label="groups_per_row")
    n = draw(st.sampled_from(n_choices), label="out_features")
    if mode == "nvfp4" and (n * group * groups) % 32:
        n += 1  # MLX's CPU nvfp4 packer needs a multiple of 32 elements (mlx_impl refuses others)
    w = draw(arrays((n, group * groups), dtype, profiles=profiles, headroom=64.0, label="weight"))
    shape_rows = draw(st.sampled_from(("as drawn", "constant row", "negative-dominant", "zero row")),
                      label="row_shape")
    if shape_rows == "constant row":
        w[0] = w[0, 0]
    elif shape_rows == "negative-dominant":
        w[0] = -np.abs(w[0]) * 2 + np.abs(w[0]).max()
    elif shape_rows == "zero row":
        w[0] = 0
    return w, {"group_size": group, "bits": bits, "mode": mode}


def _fmt(p):
    return {"group_size": p["group_size"], "bits": p["bits"], "mode": p["mode"]}


# ---- quantize / dequantize ----------------------------------------------------------

def _quantize_call(lib, a, p, kw):
    # quantize is discrete: the torch twin has no float64 variant of it; precision is ignored.
    return lib.quantization.quantize(a["weight"], **_fmt(p))


@st.composite
def _quantize_cases(draw, dtype, mode):
    w, params = draw(_weight(dtype, mode))
    return Case({"weight": w}, params)


def _mutant_scales_via_bfloat16(lib, a, p, kw):
    wq, s, b = mx_quantize(a["weight"], p)
    return wq, s.astype(mx.bfloat16).astype(s.dtype), b


def _mutant_byteswapped_words(lib, a, p, kw):
    wq, s, b = mx_quantize(a["weight"], p)
    swapped = wq.view(mx.uint8).reshape(*wq.shape, 4)[..., ::-1].reshape(*wq.shape[:-1], -1).view(mx.uint32)
    return swapped, s, b


def _mutant_fp_sign_dropped(lib, a, p, kw):
    wq, s, b = mx_quantize(a["weight"], p)
    return wq & mx.array(0x77777777, dtype=mx.uint32), s, b


def mx_quantize(w, p):
    """``mx.quantize`` with biases normalised to None for the fp modes."""
    out = mx.quantize(w, **_fmt(p))
    return out[0], out[1], (out[2] if len(out) > 2 else None)


def _cuda_only_errors() -> tuple[ErrorCase, ...]:
    """Refusals that exist only on MLX's CUDA back end (the CPU and Metal accept 1-bit)."""
    if backend_name() != "cuda":
        return ()
    return (ErrorCase("1-bit affine on CUDA", Case({"weight": np.ones((2, 64), np.float32)},
                                                   {"group_size": 64, "bits": 1, "mode": "affine"}),
                      ValueError),)


QUANTIZE = OpRecord(
    name="quantization.quantize",
    api=("quantization.quantize",),
    entry_points=(quantized_fuzz.QUANTIZE_FUZZ,),
    call=_quantize_call,
    cases=_quantize_cases,
    modes=MODES,
    tolerance=constant(EXACT),
    errors=(
        *_cuda_only_errors(),
        ErrorCase("unknown mode", Case({"weight": np.ones((2, 64), np.float32)},
                                       {"group_size": 64, "bits": 4, "mode": "int4"}), ValueError),
        ErrorCase("affine bits 7", Case({"weight": np.ones((2, 64), np.float32)},
                                        {"group_size": 64, "bits": 7, "mode": "affine"}), ValueError),
        ErrorCase("nvfp4 with group 32", Case({"weight": np.ones((2, 64), np.float32)},
                                              {"group_size": 32, "bits": 4, "mode": "nvfp4"}), ValueError),
        ErrorCase("in-features not divisible by the group",
                  Case({"weight": np.ones((2, 48), np.float32)}, {"group_size": 32, "bits": 4, "mode": "affine"}),
                  ValueError),
        # amax 2^-126: ceil(log2(2^-126 / 6)) = -128, so mx.quantize would store scale code 255
        # (2^128 = inf); both libraries refuse it (which is why _weight draws no "tiny" mx weights).
        ErrorCase("mxfp4 group whose scale code would wrap",
                  Case({"weight": np.concatenate([np.full((1, 1), 2.0**-126), np.zeros((1, 31))],
                                                 axis=1).astype(np.float32)},
                       {"group_size": 32, "bits": 4, "mode": "mxfp4"}), ValueError),
        ErrorCase("weight containing inf",
                  Case({"weight": np.where(np.arange(64) == 5, np.inf, 1.0).reshape(1, 64).repeat(2, 0)
                        .astype(np.float32)},
                       {"group_size": 64, "bits": 4, "mode": "affine"}), ValueError),
    ),
    mutants=(
        Mutant("scales_via_bfloat16", "scales rounded through bfloat16", _mutant_scales_via_bfloat16,
               mode="affine"),
        Mutant("byteswapped_words", "packed words stored big-endian", _mutant_byteswapped_words,
               mode="affine"),
        Mutant("fp_sign_dropped", "FP4 sign bits cleared", _mutant_fp_sign_dropped, mode="nvfp4"),
    ),
    bench=(
        BenchCase("prefill", lambda: Case({"weight": fill((4096, 4096), "normal", "float32", 0)},
                                          {"group_size": 64, "bits": 4, "mode": "affine"}), mode="affine",
                  note="quantize one 4096 x 4096 projection",
                  cpu_make=lambda: Case({"weight": fill((2048, 2048), "normal", "float32", 0)},
                                        {"group_size": 64, "bits": 4, "mode": "affine"}),
                  cpu_note="2048 x 2048 on CPU"),
    ),
)


def _derive_packed(arrays_in, params, dtype):
    """Pack the rounded float weight once with MLX so both libraries read the same codes."""
    wq, scales, biases = mx_quantize(to_mlx(arrays_in["weight"], dtype), params)
    out = {"wq": mlx_to_numpy(wq), "scales": mlx_to_numpy(scales)}
    if biases is not None:
        out["qbiases"] = mlx_to_numpy(biases)
    return out


def _dequantize_call(lib, a, p, kw):
    return lib.quantization.dequantize(a["wq"], a["scales"], a.get("qbiases"), **_fmt(p), **kw)


def _mutant_truncated_rounding(lib, a, p, kw):
    # q*scale + bias in float32, then TRUNCATED to bfloat16 (the low 16 bits dropped) instead
    # of rounded to nearest: wrong on every back end. (A single rounding to nearest is not a
    # bug: MLX's CUDA dequantize does exactly that, more accurately than the CPU's two.)
    s = a["scales"]
    b = a.get("qbiases")
    wide = mx.dequantize(a["wq"], s.astype(mx.float32), None if b is None else b.astype(mx.float32), **_fmt(p))
    bits = wide.view(mx.uint32) & mx.array(0xFFFF0000, dtype=mx.uint32)
    return bits.view(mx.float32).astype(s.dtype)


def _mutant_fp_float32_output(lib, a, p, kw):
    return mx.dequantize(a["wq"], a["scales"], **_fmt(p), dtype=mx.float32)


DEQUANTIZE = OpRecord(
    name="quantization.dequantize",
    api=("quantization.dequantize",),
    entry_points=(quantized_fuzz.DEQUANTIZE_FUZZ,),
    call=_dequantize_call,
    cases=_quantize_cases,
    derive=_derive_packed,
    modes=MODES,
    tolerance=constant(Tolerance(
        reason="Dequantize has fixed rounding points (SEMANTICS.md): the peer reproduces them, "
               "so MLX must be bit-identical.", exact=True)),
    errors=(
        ErrorCase("biases with an fp mode",
                  Case({"wq": np.zeros((2, 8), np.uint32), "scales": np.zeros((2, 4), np.uint8),
                        "qbiases": np.zeros((2, 4), np.float32)},
                       {"group_size": 16, "bits": 4, "mode": "nvfp4"}), ValueError),
        ErrorCase("scales of the wrong shape",
                  Case({"wq": np.zeros((2, 8), np.uint32), "scales": np.zeros((2, 3), np.float32),
                        "qbiases": np.zeros((2, 3), np.float32)},
                       {"group_size": 32, "bits": 4, "mode": "affine"}), ValueError),
    ),
    mutants=(
        Mutant("truncated_rounding", "q*scale + bias truncated to bfloat16, not rounded to nearest",
               _mutant_truncated_rounding, mode="affine", dtype="bfloat16"),
        Mutant("fp_float32_output", "fp modes return float32, not bfloat16", _mutant_fp_float32_output,
               mode="mxfp8"),
    ),
)


# ---- quantized_matmul and QuantizedLinear -------------------------------------------

def _qmm_terms(arrays_in, params) -> int:
    """Products per output (K) plus one partial sum per group and the final rounding."""
    k = arrays_in["x"].shape[-1]
    return k + k // params["group_size"] + 2


def _qmm_magnitude(arrays_in, params) -> np.ndarray:
    """``|x| @ (|q * scale| + |zero-point bias|).T`` in float64: the magnitudes a
    factored kernel (sum of x*q times scale, plus sum of x times bias) accumulates."""
    # Scales and biases hold values of the test dtype: float32 carries them exactly.
    t = {k: torch.from_numpy(np.ascontiguousarray(v.astype(np.float32) if v.dtype == np.float64 else v))
         for k, v in arrays_in.items()}
    zero = None if "qbiases" not in t else torch.zeros_like(t["qbiases"])
    qs = torch_reference.quantization.dequantize(t["wq"], t["scales"], zero, **_fmt(params),
                                                 precision="float64")
    w_mag = qs.abs().numpy()
    if "qbiases" in arrays_in:
        w_mag = w_mag + np.repeat(np.abs(arrays_in["qbiases"]), params["group_size"], axis=-1)
    return np.abs(arrays_in["x"]) @ w_mag.T


def _qmm_tolerance(backend: str, dtype: str) -> Tolerance:
    half_modes = tuple(m for m in MODES if accumulates_in_half(backend, m, dtype))
    if half_modes:
        return Tolerance(
            reason=(
                f"MLX's {backend} quantized matmul accumulates float16/bfloat16 products in the input "
                f"dtype in modes {', '.join(half_modes)}, rounding every step (SEMANTICS.md for the x86 "
                "CPU; HALF_ACCUMULATING_KERNELS for CUDA nvfp4; Metal, NEON and the other CUDA modes "
                "accumulate in float32). The bound admits Higham's worst case for that summation, "
                "gamma_K * |x| @ (|q*s| + |b|).T, on top of 2x the peer's error + 2 ulp."
            ),
            accumulation_terms=_qmm_terms,
            accumulates_in_input_dtype=lambda params: params["mode"] in half_modes,
        )
    float32_sum = Tolerance(
        reason="x @ dequantize(w).T from identical packed weights, summed in float32 in any order: "
               "2x the peer's error + 2 ulp, or the float32 gamma_K summation bound on "
               "|x| @ (|q*s| + |b|).T, whichever is larger.",
        accumulation_terms=_qmm_terms,
    )
    if backend in HALF_PRODUCT_BACKENDS and dtype != "float32":
        return dataclasses.replace(
            float32_sum,
            reason=float32_sum.reason + f" On {backend} each {dtype} product is rounded to {dtype} "
            "before the float32 sum (HALF_PRODUCT_BACKENDS): the bound carries (1 + u_in)^2 with "
            f"u_in = {dtype}'s unit roundoff.",
            input_unit_roundoff=FORMATS[dtype].unit_roundoff,
        )
    return float32_sum


@st.composite
def _qmm_cases(draw, dtype, mode):
    # No "large" weights here: products near overflow make inf-vs-NaN depend on the
    # summation order, which no convention fixes (quantize/dequantize still test them).
    one_group = mode == "affine" and draw(st.sampled_from((False, False, False, True)),
                                          label="cuda_single_group_boundary")
    w, params = draw(_weight(dtype, mode, profiles=("normal", "ints", "mixed", "tiny"), one_group=one_group))
    lead = draw(st.sampled_from(((2, 3), (3,)) if one_group else ((1,), (3,), (2, 3))), label="batch")
    x = draw(arrays((*lead, w.shape[1]), dtype, profiles=("normal", "ints", "mixed"), label="x"))
    found = {"x": x, "weight": w}
    if draw(st.booleans(), label="has_bias"):
        found["bias"] = draw(arrays((w.shape[0],), dtype, profiles=("normal",), label="bias"))
    return Case(found, params)


HALF_ACCUMULATING_KERNELS: tuple[tuple[str, str], ...] = (
    ("cpu", "affine"), ("cpu", "nvfp4"), ("cpu", "mxfp4"), ("cpu", "mxfp8"),
)
"""(back end, mode) pairs whose float16/bfloat16 quantized matmul accumulates in the input
dtype: the x86 CPU kernel in every mode (SEMANTICS.md). On CUDA the sum is float32 in every
mode (measured on an H200: x = 400, w = +6 then -6 over K = 64, whose float16 running sum
would reach 76800, gives exactly 0), but each product is rounded to the input dtype first
(``HALF_PRODUCT_BACKENDS``)."""

HALF_PRODUCT_BACKENDS: tuple[str, ...] = ("cuda",)
"""Back ends whose float16/bfloat16 quantized matmul rounds every product ``x * w`` to the
input dtype before a float32 sum. Measured on an H200 (mlx 0.32.4): float16 NaN where one
product exceeds 65504 but the float64 result (-47613.66, -46978.78) is finite, with a float32
accumulator (above); bfloat16 errors of 3-4 output ulps where the peer (float32 products)
makes 0.4-1.6. The bound: each term carries the product's rounding (u of the input dtype),
then a float32 sum: ``((1 + u_in)^2 (1 + gamma_K) - 1) * |x| @ (|q*s| + |b|).T`` with
``u_in`` the input dtype's unit roundoff (the square also covers the peer's rounding of the
dequantized weight)."""


def accumulates_in_half(backend: str, mode: str, dtype: str) -> bool:
    """Whether MLX's quantized matmul on ``backend`` sums ``dtype`` products in ``dtype``."""
    return dtype != "float32" and (backend, mode) in HALF_ACCUMULATING_KERNELS


def _overflows_half_accumulator(case: Case, dtype: str, backend: str) -> bool:
    """A kernel that sums float16/bfloat16 products in the input dtype (see
    ``HALF_ACCUMULATING_KERNELS``) can overflow a partial sum where a float32 accumulator
    (and the peer) stays finite. In the fp modes the x86 kernel first sums ``x * element``
    per group with the UNSCALED element values (up to 6 for FP4, 448 for FP8), then adds
    each group's sum times its scale; both orders are bounded here."""
    if not accumulates_in_half(backend, case.params["mode"], dtype):
        return False
    x = np.abs(case.arrays["x"].astype(np.float64))
    w = np.abs(case.arrays["weight"].astype(np.float64))
    bounds = [x @ w.T]
    mode, group = case.params["mode"], case.params["group_size"]
    if mode in FP_FORMATS:
        top = 6.0 if FP_FORMATS[mode][1] == 4 else 448.0
        grouped = w.reshape(w.shape[0], -1, group)
        amax = grouped.max(axis=-1, keepdims=True)
        elements = np.where(amax > 0, grouped * top / np.where(amax > 0, amax, 1.0), 0.0)
        xg = x.reshape(*x.shape[:-1], -1, group)
        bounds.append(np.einsum("...gk,ngk->...ng", xg, elements))
    # 2x covers quantization rounding a value up (at most one step of its group's scale).
    return any(bool((2.0 * b).max() > FORMATS[dtype].max_finite) for b in bounds)


_OVERFLOW_CASE = Case(
    {"x": np.full((1, 64), 300.0, np.float32),
     "weight": np.concatenate([np.full((1, 32), 8.0), np.full((1, 32), -8.0)], axis=1).astype(np.float32)},
    {"group_size": 32, "bits": 4, "mode": "affine"},
    label="x = 300, w = +8 then -8: the true sum is 0, the float16 running sum reaches 76800",
)

# Found by the conformance run on an H200 (mlx 0.32.4, CUDA), float16 nvfp4: the float64 result
# of row 1 is -47613.66 (inside float16's range); MLX's CUDA kernel gives NaN (products such as
# 3640 * 3438 overflow float16 before the float32 sum).
_CUDA_NVFP4_CASE = Case(
    {"x": np.array(
        [[-0.016143798828125, 0.00933837890625, 0.029052734375, -7.23828125, -1389.0, 0.0335693359375,
        -1.4052734375, 0.0238189697265625, 73.8125, 100.1875, 38.625, 470.0, 0.0005259513854980469,
        0.0012111663818359375, -1925.0, -0.7958984375, 15.265625, -0.0026702880859375, -0.03271484375,
        0.388671875, 0.0010204315185546875, -0.0005240440368652344, 59.84375, 2.984375, -1947.0,
        0.011383056640625, -13.7421875, 368.25, -0.0013856887817382812, 1.3056640625, -0.013763427734375,
        0.04864501953125], [0.0019006729125976562, -879.0, -0.01910400390625, -110.0625, -6.88671875,
        -5.12890625, -0.0002675056457519531, 1013.5, 620.0, 1.43359375, -136.0, -0.004058837890625,
        -0.059722900390625, -0.0020313262939453125, -0.002010345458984375, -0.00240325927734375, -102.875,
        -0.00940704345703125, -73.375, 2056.0, -1552.0, 0.0186309814453125, 0.07177734375, -0.52734375,
        0.12042236328125, -0.0055389404296875, -0.2230224609375, 3.43359375, -174.75, 584.0, -3640.0,
        -0.0010881423950195312], [-0.6123046875, -1598.0, 1946.0, -422.5, 0.0009398460388183594, -812.0,
        137.0, -0.1552734375, -0.206298828125, -0.1690673828125, -0.0276641845703125, -0.5390625,
        0.00040411949157714844, -1.228515625, -630.0, 1.642578125, 11.453125, 0.0025119781494140625, 4.5,
        0.001209259033203125, 0.005413055419921875, 0.0245513916015625, 0.037445068359375,
        -0.0127105712890625, -0.0006518363952636719, -165.25, -0.0003046989440917969, -1932.0,
        -0.10614013671875, 0.0005297660827636719, 0.0024089813232421875, -1309.0]],
        np.float32),
     "weight": np.array(
        [[-5.0625, -0.0009584426879882812, 0.0005898475646972656, 0.00527191162109375, 1639.0, 3438.0,
        -25.34375, 0.0037708282470703125, 0.000324249267578125, -0.001415252685546875, 9.1328125,
        0.204833984375, 2130.0, 0.54052734375, -0.0003380775451660156, 10.359375, 987.5, 0.0166473388671875,
        -0.006801605224609375, -0.0011005401611328125, -83.75, -980.5, -398.25, -0.0149688720703125,
        -1.634765625, 60.5, 109.75, -0.0021610260009765625, -0.0081329345703125, -43.03125, -0.16015625,
        -0.07843017578125]],
        np.float32)},
    {"group_size": 16, "bits": 4, "mode": "nvfp4"},
    label="x [3, 32] float16 up to 3640 in magnitude, one nvfp4 output; exact row 1 is -47613.66 "
          "(rows 0 and 2 overflow float16 in any arithmetic)",
)


def _raw_qmm_call(lib, a, p, kw):
    """``mx.quantized_matmul`` itself, bypassing mlx_impl's guard."""
    return mx.quantized_matmul(a["x"], a["wq"], a["scales"], a.get("qbiases"), transpose=True, **_fmt(p))


def _guarded_in_mlx_impl(case: Case, dtype: str, backend: str) -> bool:
    """mlx_impl computes float16 on CUDA in float32, so the cells test these inputs too."""
    return False


CUDA_HALF_PRODUCT_OVERFLOW = ExpectedDivergence(
    name="cuda_half_product_overflow",
    reason="MLX's CUDA quantized matmul rounds each float16 product x*w to float16 before its float32 "
           "sum: one product above 65504 makes the result inf or NaN although it is finite "
           "(measured in nvfp4 and mxfp4). mlx_impl computes float16 in float32 on CUDA.",
    reference="reports/conformance/cuda-h200-triage/TRIAGE.md (H200, mlx 0.32.4); `python -m conformance repro "
              "cuda_half_product_overflow`",
    reproducer=_CUDA_NVFP4_CASE,
    dtype="float16",
    mode="nvfp4",
    applies=_guarded_in_mlx_impl,
    backends=("cuda",),
    mlx_call=_raw_qmm_call,
)


HALF_ACCUMULATOR_OVERFLOW = ExpectedDivergence(
    name="cpu_half_accumulator_overflow",
    reason="MLX's x86 CPU quantized matmul accumulates float16 in float16: a running sum above 65504 "
           "becomes inf although the result is finite (Metal and NEON accumulate in float32).",
    reference="SEMANTICS.md, quantized_matmul; mlx #963 (Metal accumulates in float32)",
    reproducer=_OVERFLOW_CASE,
    dtype="float16",
    mode="affine",
    applies=_overflows_half_accumulator,
    backends=("cpu",),
)


def _qmm_call(lib, a, p, kw):
    return lib.quantization.quantized_matmul(a["x"], a["wq"], a["scales"], a.get("qbiases"), transpose=True,
                                             **_fmt(p), **kw)


def _mutant_zero_point_ignored(lib, a, p, kw):
    b = a.get("qbiases")
    w = mx.dequantize(a["wq"], a["scales"], None if b is None else mx.zeros_like(b), **_fmt(p))
    return a["x"] @ w.T


def _mutant_next_group_scales(lib, a, p, kw):
    w = mx.dequantize(a["wq"], mx.roll(a["scales"], 1, -1), a.get("qbiases"), **_fmt(p))
    return a["x"] @ w.T


def _single_group_edge_cases(via: tuple[str, ...] = ()) -> tuple[EdgeCase, ...]:
    """The boundary of ``CUDA_SINGLE_GROUP_FORMATS`` in every format it covers, each with 16
    weight rows and several rows of ``x`` (a batch too), checked in every dtype by every run.
    ``via``: QuantizedLinear's constructors, taken in turn."""
    edges = []
    for i, ((group, bits), lead) in enumerate(zip(CUDA_SINGLE_GROUP_FORMATS, ((2, 3), (5,), (2, 3), (4,)), strict=True)):
        # Rows of different magnitudes (1/4 to 4), as trained weights have: a kernel that
        # reads another row's scale is then wrong by up to 16x.
        row_scale = np.exp2(np.arange(16) % 5 - 2.0).astype(np.float32)[:, None]
        found = {"x": fill((*lead, group), "normal", "float32", 10 + i),
                 "weight": fill((16, group), "normal", "float32", 20 + i) * row_scale}
        if i % 2 == 0:
            found["bias"] = fill((16,), "normal", "float32", 30 + i)
        params = {"group_size": group, "bits": bits, "mode": "affine"}
        if via:
            params["via"] = via[i % len(via)]
        label = (f"affine {bits}-bit, group {group} = K (one group per row), W [16, {group}], "
                 f"x {list(lead)} x {group}: MLX 0.32.4's CUDA qmm_sm90 boundary")
        edges.append(EdgeCase(Case(found, params, label=label), mode="affine"))
    return tuple(edges)


def _long_row_edge_cases(via: str | None = None) -> tuple[EdgeCase, ...]:
    """Long quantized rows of many groups (K = 1536: 24 affine groups of 64, 48 mxfp4 groups
    of 32) read by massive activations, as a trained model's down projection is: a kernel
    that mixes up a group's scale far along the row, or loses the small channels' products
    next to the large ones, shows here. Float32 and bfloat16 (the dtypes trained checkpoints
    ship; float16's range is the model's own concern at 2000x channels)."""
    edges = []
    for i, (mode, group, bits) in enumerate((("affine", 64, 4), ("mxfp4", 32, 4))):
        found = {"x": massive_activations((4, 1536), 40 + i, ratio=200.0),
                 "weight": (0.02 * fill((32, 1536), "normal", "float32", 50 + i)).astype(np.float32)}
        params = {"group_size": group, "bits": bits, "mode": mode}
        if via:
            params["via"] = via
        label = (f"{mode} {bits}-bit, K = 1536 ({1536 // group} groups per row), x with 3 channels 200x the rest "
                 "and row 0 2000x (SmolLM2-135M's down projection: conformance/strategies.py MASSIVE_RATIO)")
        edges.append(EdgeCase(Case(found, params, label=label), mode=mode, dtypes=("float32", "bfloat16")))
    return tuple(edges)


def _mutant_single_group_row0_scales(lib, a, p, kw):
    """Imitates MLX's CUDA single-group bug: on that boundary every weight row is read with
    row 0's scale and bias (a [N, 1] scale array indexed with the stride of a broadcast).
    Run in float32: on the x86 CPU the bfloat16 cells' bound (gamma_K of bfloat16 on the
    factored magnitude |x| @ (|q*s| + |b|).T, >= 0.35 of it at K = 64) admits errors of
    this size; float32 and float16 edge cases all kill it, and on CUDA every dtype sums in
    float32, where the bound is tight."""
    x, s, b = a["x"], a["scales"], a.get("qbiases")
    if not hits_cuda_single_group_kernel(x.shape, a["wq"].shape[0], p):
        return mx.quantized_matmul(x, a["wq"], s, b, transpose=True, **_fmt(p))
    s = mx.broadcast_to(s[:1], s.shape)
    b = None if b is None else mx.broadcast_to(b[:1], b.shape)
    return x @ mx.dequantize(a["wq"], s, b, **_fmt(p)).T


def _bench_qmm(m: int, k: int, n: int, mode: str) -> Case:
    group, bits = (64, 4) if mode == "affine" else FP_FORMATS[mode]
    return Case({"x": fill((m, k), "normal", "float32", 0), "weight": fill((n, k), "normal", "float32", 1)},
                {"group_size": group, "bits": bits, "mode": mode})


QUANTIZED_MATMUL = OpRecord(
    name="quantization.quantized_matmul",
    api=("quantization.quantized_matmul",),
    entry_points=(quantized_fuzz.QUANTIZED_MATMUL_FUZZ,),
    call=_qmm_call,
    cases=_qmm_cases,
    derive=_derive_packed,
    magnitude=_qmm_magnitude,
    modes=MODES,
    tolerance=_qmm_tolerance,
    divergences=(HALF_ACCUMULATOR_OVERFLOW, CUDA_HALF_PRODUCT_OVERFLOW),
    errors=(
        ErrorCase("x width differs from in-features",
                  Case({"x": np.ones((1, 32), np.float32), "wq": np.zeros((2, 8), np.uint32),
                        "scales": np.ones((2, 1), np.float32), "qbiases": np.zeros((2, 1), np.float32)},
                       {"group_size": 64, "bits": 4, "mode": "affine"}), ValueError),
    ),
    edge_cases=_single_group_edge_cases() + _long_row_edge_cases(),
    mutants=(
        Mutant("zero_point_ignored", "affine biases dropped", _mutant_zero_point_ignored, mode="affine"),
        Mutant("next_group_scales", "each group reads its neighbour's scale", _mutant_next_group_scales,
               mode="mxfp4"),
        Mutant("single_group_row0_scales", "affine, one group per row, several rows of x (MLX's CUDA "
               "qmm_sm90 boundary): every weight row dequantized with row 0's scale and bias",
               _mutant_single_group_row0_scales, mode="affine"),
    ),
    bench=tuple(
        BenchCase(f"{shape}-{mode}", functools.partial(_bench_qmm, m, 4096, 4096, mode), mode=mode,
                  note=f"{'decode M = 1' if m == 1 else f'prefill M = {m}'}, 4096 x 4096",
                  # The twin dequantizes on every call (seconds at 4096 x 4096 on MLX's CPU
                  # host): the CPU pass keeps the whole bench near 10 minutes.
                  cpu_make=functools.partial(_bench_qmm, 1 if m == 1 else 32, 2048, 2048, mode),
                  cpu_note=f"{'M = 1' if m == 1 else 'M = 32'}, 2048 x 2048 on CPU")
        for shape, m in (("decode", 1), ("prefill", 512))
        for mode in MODES
    ),
)


def _qlinear_call(lib, a, p, kw):
    if p.get("via") == "to_quantized":
        layer = lib.nn.Linear(a["weight"], a.get("bias")).to_quantized(**_fmt(p))
    else:
        layer = lib.nn.QuantizedLinear(a["wq"], a["scales"], a.get("qbiases"), a.get("bias"), **_fmt(p))
    return layer(a["x"], **kw)


@st.composite
def _qlinear_cases(draw, dtype, mode):
    case = draw(_qmm_cases(dtype, mode))
    via = draw(st.sampled_from(("constructor", "to_quantized")), label="built_by")
    return Case(case.arrays, {**case.params, "via": via})


def _mutant_single_group_rows_shifted(lib, a, p, kw):
    """Imitates MLX's CUDA single-group bug in the layer: on that boundary each output row is
    the product of the NEXT row of x (a tile that reads x one row off)."""
    x = a["x"]
    if not hits_cuda_single_group_kernel(x.shape, a["weight"].shape[0], p):
        return _qlinear_call(lib, a, p, kw)
    rows = x.reshape(-1, x.shape[-1])
    shifted = mx.concatenate([rows[1:], rows[:1]], axis=0).reshape(x.shape)
    return _qlinear_call(lib, {**a, "x": shifted}, p, kw)


def _mutant_dropped_layer_bias(lib, a, p, kw):
    return mx.quantized_matmul(a["x"], a["wq"], a["scales"], a.get("qbiases"), transpose=True, **_fmt(p))


QUANTIZED_LINEAR = OpRecord(
    name="nn.quantized_linear",
    api=("nn.QuantizedLinear",),
    entry_points=(
        quantized_fuzz.QUANTIZED_LINEAR_FUZZ,
        quantized_fuzz.FROM_FLOAT_FUZZ,
        quantized_fuzz.TO_QUANTIZED_FUZZ,
    ),
    call=_qlinear_call,
    cases=_qlinear_cases,
    derive=_derive_packed,
    magnitude=_qmm_magnitude,
    modes=MODES,
    tolerance=_qmm_tolerance,
    divergences=(HALF_ACCUMULATOR_OVERFLOW,),
    errors=(
        ErrorCase("fp mode given zero-point biases",
                  Case({"x": np.ones((1, 32), np.float32), "wq": np.zeros((2, 4), np.uint32),
                        "scales": np.zeros((2, 1), np.uint8), "qbiases": np.zeros((2, 1), np.float32)},
                       {"group_size": 32, "bits": 4, "mode": "mxfp4"}), ValueError),
        ErrorCase("layer bias of the wrong length",
                  Case({"x": np.ones((1, 64), np.float32), "wq": np.zeros((2, 8), np.uint32),
                        "scales": np.ones((2, 1), np.float32), "qbiases": np.zeros((2, 1), np.float32),
                        "bias": np.zeros(3, np.float32)},
                       {"group_size": 64, "bits": 4, "mode": "affine"}), ValueError),
    ),
    edge_cases=_single_group_edge_cases(via=("constructor", "to_quantized")) + _long_row_edge_cases("constructor"),
    mutants=(
        Mutant("dropped_layer_bias", "the layer bias is never added", _mutant_dropped_layer_bias,
               mode="affine"),
        Mutant("zero_point_ignored", "affine biases dropped", _mutant_zero_point_ignored, mode="affine"),
        Mutant("single_group_rows_shifted", "affine, one group per row, several rows of x (MLX's CUDA "
               "qmm_sm90 boundary): each output row is the product of the next row of x",
               _mutant_single_group_rows_shifted, mode="affine"),
    ),
    bench=QUANTIZED_MATMUL.bench,
)

RECORDS = (QUANTIZE, DEQUANTIZE, QUANTIZED_MATMUL, QUANTIZED_LINEAR)

