"""quantize / dequantize: the PyTorch twin reproduces mx.quantize and mx.dequantize BIT FOR
BIT (every mode, every affine bits x group, float32 / float16 / bfloat16), known answers
worked out by hand, exact round trips, the float64 oracle, the table of what MLX accepts,
Ollama's labels, and errors raised by both packages before MLX sees the input."""

from __future__ import annotations

import itertools
import re

import mlx.core as mx
import numpy as np
import pytest
import torch

import mlx_impl.quantization as mq
import torch_reference.quantization as tq

DTYPES = ["float32", "float16", "bfloat16"]
MX_DTYPE = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}
TORCH_DTYPE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FORMATS = [("affine", g, b) for g in (32, 64, 128) for b in (1, 2, 3, 4, 5, 6, 8)] + [
    ("nvfp4", 16, 4),
    ("mxfp4", 32, 4),
    ("mxfp8", 32, 8),
]
FP_FORMATS = [f for f in FORMATS if f[0] != "affine"]
FP4_TABLE = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


# ----------------------------------------------------------------------------- helpers


def t2m(t: torch.Tensor) -> mx.array:
    """torch -> mx, exact (bfloat16 travels as float32)."""
    if t.dtype == torch.bfloat16:
        return mx.array(t.to(torch.float32).numpy()).astype(mx.bfloat16)
    if t.dtype == torch.float64:  # mx.array would silently narrow float64 to float32
        return mx.array(t.numpy(), dtype=mx.float64)
    return mx.array(t.numpy())


def m2t(a: mx.array) -> torch.Tensor:
    """mx -> torch, exact, keeping the dtype (uint32 / uint8 / float*)."""
    if a.dtype == mx.bfloat16:
        return torch.from_numpy(np.array(a.astype(mx.float32))).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern as int64, so that signed zeros, infinities and uint32 compare exactly."""
    if t.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        return t.view(view).to(torch.int64)
    return t.to(torch.int64)


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    diff = bits_of(got) != bits_of(want)
    if got.is_floating_point():
        # A NaN is a NaN: its sign and payload (0 * inf on x86 gives a negative one,
        # PyTorch's casts may not keep it) are not part of MLX's contract.
        diff &= ~(torch.isnan(got) & torch.isnan(want))
    if diff.any():
        idx = diff.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {diff.numel()} differ; first at {idx}: "
            f"got {got[tuple(idx)].item()!r}, want {want[tuple(idx)].item()!r}"
        )


def weight_rows(k: int, dtype: str, seed: int) -> torch.Tensor:
    """One row of each kind that exercises a different branch of the formats."""
    g = torch.Generator().manual_seed(seed)
    big = {"float16": 3e3, "float32": 1e30, "bfloat16": 1e30}[dtype]
    tiny = {"float16": 1e-6, "float32": 1e-35, "bfloat16": 1e-35}[dtype]
    rows = [
        torch.randn(k, generator=g),  # typical
        torch.zeros(k),  # all zeros: scale floor / zero scale codes
        torch.full((k,), -1.7),  # constant row
        torch.rand(k, generator=g) - 3.0,  # negative-dominant (bias = min)
        torch.rand(k, generator=g) * 2 + 0.5,  # positive-dominant (scale negated)
        torch.randn(k, generator=g) * tiny,  # tiny (subnormal territory)
        torch.randn(k, generator=g) * big,  # huge
        torch.randn(k, generator=g) * 10.0 ** torch.randint(-4, 4, (k,), generator=g),
        torch.randint(-8, 8, (k,), generator=g).float() * 0.25,  # many exact ties
        torch.randn(k, generator=g).abs(),  # all positive
    ]
    return torch.stack(rows).to(TORCH_DTYPE[dtype])


def both_quantize(w: torch.Tensor, gs: int, bits: int, mode: str, **kw):
    mine = tq.quantize(w, gs, bits, mode, **kw)
    theirs = mq.quantize(t2m(w), gs, bits, mode, **{k: t2m(v) for k, v in kw.items()})
    return mine, tuple(None if a is None else m2t(a) for a in theirs)


def assert_same_quantization(w: torch.Tensor, gs: int, bits: int, mode: str, **kw) -> None:
    mine, theirs = both_quantize(w, gs, bits, mode, **kw)
    for name, a, b in zip(("wq", "scales", "biases"), mine, theirs, strict=True):
        if b is None:
            assert a is None, f"{name} must be None for {mode}"
            continue
        assert a is not None
        assert_bit_equal(a, b, f"{mode} g{gs} b{bits} {w.dtype} {name}")


def pack_python(codes: list[int], bits: int) -> list[int]:
    """Independent packer: the row as one Python integer bit stream, LSB first."""
    stream = 0
    for i, c in enumerate(codes):
        stream |= c << (i * bits)
    return [(stream >> (32 * j)) & 0xFFFFFFFF for j in range(len(codes) * bits // 32)]


# ----------------------------------------------------------------- the table and labels


def test_modes_and_table_are_identical_in_both_packages():
    assert mq.QUANT_MODES == tq.QUANT_MODES == ("affine", "nvfp4", "mxfp4", "mxfp8")
    assert mq.SUPPORTED_QUANTIZATION == tq.SUPPORTED_QUANTIZATION
    assert mq.QUANTIZATION_LABELS == tq.QUANTIZATION_LABELS


def test_table_matches_what_mx_quantize_accepts():
    """Every (mode, group, bits) the table allows is accepted by mx.quantize, and every
    other one in a wide grid is rejected by mx.quantize (so the table is neither too
    strict nor too lax)."""
    w = mx.ones((2, 256))
    for mode, gs, bits in itertools.product(
        mq.QUANT_MODES, (8, 16, 32, 64, 128, 256), (1, 2, 3, 4, 5, 6, 7, 8)
    ):
        groups, widths = mq.SUPPORTED_QUANTIZATION[mode]
        allowed = gs in groups and bits in widths
        try:
            mx.eval(mx.quantize(w, gs, bits, mode))
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == allowed, (mode, gs, bits, accepted)


@pytest.mark.parametrize("lib", [mq, tq], ids=["mlx", "torch"])
def test_labels(lib):
    assert lib.quantization_for_label("NVFP4") == (16, 4, "nvfp4")
    for label in ("FP4", "q4", "Int4"):
        assert lib.quantization_for_label(label) == (32, 4, "affine")
    assert lib.quantization_for_label("mxfp8") == (32, 8, "mxfp8")
    for label in ("FP8", "Q8", "int8"):
        assert lib.quantization_for_label(label) == (64, 8, "affine")
    with pytest.raises(ValueError, match=r"^\[quantization_for_label\] .*'Q5'.*NVFP4"):
        lib.quantization_for_label("Q5")


# ------------------------------------------------------------------- bit-exact quantize


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "gs", "bits"), FORMATS, ids=lambda v: str(v))
def test_quantize_and_dequantize_bit_exact(dtype, mode, gs, bits):
    """Packed codes, scales and biases, and dequantize in every output dtype, equal MLX's
    bit for bit on rows of every kind (zeros, constant, negative/positive-dominant,
    tiny, huge, mixed magnitudes, exact ties)."""
    w = weight_rows(256, dtype, seed=bits * 1000 + gs)
    assert_same_quantization(w, gs, bits, mode)
    wq, scales, biases = mq.quantize(t2m(w), gs, bits, mode)
    for out in (None, "float32", "float16", "bfloat16"):
        want = mq.dequantize(
            wq, scales, biases, gs, bits, mode, None if out is None else MX_DTYPE[out]
        )
        got = tq.dequantize(
            m2t(wq),
            m2t(scales),
            None if biases is None else m2t(biases),
            gs,
            bits,
            mode,
            None if out is None else TORCH_DTYPE[out],
        )
        assert_bit_equal(got, m2t(want), f"dequantize {mode} g{gs} b{bits} {dtype} -> {out}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_mx_scale_is_the_smallest_power_of_two_that_avoids_saturation(dtype):
    """E8M0: s = ceil(log2(amax / maxval)), exact even when amax/maxval is one ulp above a
    power of two (a rounded log2 would miss it), and exactly a power of two."""
    eps = torch.finfo(TORCH_DTYPE[dtype]).eps
    rows = []
    for k, mant, maxval in itertools.product(
        range(-20, 12), (1.0, 1.0 + eps, 1.0 + 2 * eps, 2.0 - eps, 1.5), (6.0, 448.0)
    ):
        amax = maxval * 2.0**k * mant
        row = torch.full((32,), amax * 0.37)
        row[5], row[6] = amax, -amax * 0.999
        rows.append(row)
    w = torch.stack(rows).to(TORCH_DTYPE[dtype])
    # float16 overflows above 65504 (448 * 2^11 = 917504): quantize refuses non-finite
    # weights, so those rows are dropped (float32 / bfloat16 keep all of them).
    w = w[torch.isfinite(w).all(dim=-1)]
    assert w.shape[0] >= 280
    assert_same_quantization(w, 32, 4, "mxfp4")
    assert_same_quantization(w, 32, 8, "mxfp8")
    # Known answer: amax = 6 * 2^3 * (1 + eps) needs 2^4, not 2^3.
    one = torch.full((1, 32), 48.0 * (1 + eps)).to(TORCH_DTYPE[dtype])
    _, s, _ = tq.quantize(one, 32, 4, "mxfp4")
    assert int(s.item()) == 127 + 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_scale_rounds_to_nearest_e4m3_ties_to_even_and_saturates(dtype):
    """amax/6 placed exactly on every E4M3 midpoint, on every E4M3 value, in the
    subnormal range and past 448 (saturating at code 0x7E)."""
    table = tq._e4m3_table()
    mids = ((table[:-1] + table[1:]) / 2).tolist()
    targets = mids + table.tolist() + [460.0, 463.9, 464.0, 1000.0, 2.0**-10, 2.0**-11]
    rows = []
    for m, sign in itertools.product(targets, (1.0, -1.0)):
        row = torch.linspace(-1, 1, 16) * m * 6 * 0.9
        row[3] = sign * m * 6
        rows.append(row)
    assert_same_quantization(torch.stack(rows).to(TORCH_DTYPE[dtype]), 16, 4, "nvfp4")


@pytest.mark.parametrize("dtype", DTYPES)
def test_element_rounding_ties(dtype):
    """E2M1 ties go to the smaller magnitude, E4M3 ties to even; scale is exactly 1."""
    table = tq._e4m3_table()
    mids = ((table[:-1] + table[1:]) / 2)[:120]
    vals = torch.cat([mids, -mids, table[:120], -table[:120]])
    vals = vals[: vals.numel() // 31 * 31].reshape(-1, 31)
    fp8 = torch.cat([vals, torch.full((vals.shape[0], 1), 448.0)], 1)  # amax 448 -> 2^0
    assert_same_quantization(fp8.to(TORCH_DTYPE[dtype]), 32, 8, "mxfp8")
    ties = torch.tensor(
        [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.5, -0.25, -0.75, -1.75, -3.5, -5.0]
    )
    fp4 = torch.zeros(2, 32)
    fp4[:, : ties.numel()] = ties
    fp4[:, -1] = 6.0  # amax 6 -> scale 2^0 (mx) and E4M3 1.0 (nv)
    assert_same_quantization(fp4.to(TORCH_DTYPE[dtype]), 32, 4, "mxfp4")
    assert_same_quantization(fp4.reshape(4, 16).to(TORCH_DTYPE[dtype]), 16, 4, "nvfp4")


# The mx-mode scale-code wrap. Boundaries measured on mlx 0.32.4 (CPU) by quantizing
# every bfloat16 value below 2^-100 and, for float32, 6000 values around each threshold,
# all subnormals up to 5000 ulp and 100 000 random values below 2^-100, with amax as the
# only nonzero of the group: a group wraps iff 0 < R(amax / maxval) <= 2^-128 (R =
# rounding to the weight's dtype). (dtype, mode) -> (smallest wrapping amax, largest
# wrapping amax, smallest amax above that quantizes fine, largest nonzero amax whose
# ratio underflows to 0 and so quantizes to code 127, i.e. to zeros).
WRAP_BOUNDS = {
    ("float32", "mxfp4"): ("0x1p-147", "0x1.800006p-126", "0x1.800008p-126", "0x1.8p-148"),
    ("float32", "mxfp8"): ("0x1.c2p-142", "0x1.c00006p-120", "0x1.c00008p-120", "0x1.cp-142"),
    ("bfloat16", "mxfp4"): ("0x1p-131", "0x1.86p-126", "0x1.88p-126", "0x1.8p-132"),
    ("bfloat16", "mxfp8"): ("0x1.c2p-126", "0x1.c6p-120", "0x1.c8p-120", "0x1.cp-126"),
}
MX_BITS = {"mxfp4": 4, "mxfp8": 8}


def one_group_rows(amaxes: list[float], dtype: str, groups: int = 1) -> torch.Tensor:
    """One row per amax: the LAST group holds +amax at element 0 and -amax/3 at element
    1 (rounded to dtype, so amax stays the group's amax); every other element is 0."""
    w = torch.zeros(len(amaxes), 32 * groups, dtype=torch.float64)
    for i, a in enumerate(amaxes):
        w[i, 32 * (groups - 1)] = a
        w[i, 32 * (groups - 1) + 1] = -a / 3
    return w.to(TORCH_DTYPE[dtype])


def test_raw_mx_quantize_wraps_tiny_mx_groups_to_infinity():
    """PINS MLX'S RAW BEHAVIOUR (fails when MLX changes it): mx.quantize stores the E8M0
    code (s + 127) mod 256 unclipped, so a float32 mxfp4 group of amax 2^-126 (s =
    ceil(log2(2^-126 / 6)) = -128) gets code 255 and mx.dequantize turns it into inf
    (2^128) and its zeros into NaN (0 * inf); 2^-131 (s = ceil(-133.58) = -133) gets 250,
    i.e. scale 2^123, and its amax element (4 * 2^-133) dequantizes to 2^125: garbage.
    Both packages' quantize refuse such groups; the twin's private _fp_quantize still
    emulates the raw wrap bit for bit (float32 and bfloat16, mxfp4 and mxfp8)."""
    w = mx.zeros((1, 32))
    w[0, 0] = 2.0**-126
    wq, s = mx.quantize(w, 32, 4, "mxfp4")[:2]  # two arrays for the fp modes
    assert np.array(s).tolist() == [[255]]
    back = np.array(mx.dequantize(wq, s, None, 32, 4, "mxfp4", dtype=mx.float32))
    assert np.isposinf(back[0, 0]) and np.isnan(back[0, 1:]).all()  # 0 * 2^128 = 0 * inf
    w[0, 0] = 2.0**-131
    wq, s = mx.quantize(w, 32, 4, "mxfp4")[:2]  # two arrays for the fp modes
    assert np.array(s).tolist() == [[250]]
    back = np.array(mx.dequantize(wq, s, None, 32, 4, "mxfp4", dtype=mx.float32))
    assert back[0, 0] == 2.0**125  # finite garbage, no error
    for dtype in ("float32", "bfloat16"):
        amaxes = [2.0**-126, 2.0**-131, 6 * 2.0**-128, 6 * 2.0**-127, 2.0**-140, 0.0]
        rows = one_group_rows(amaxes, dtype)
        for mode, bits in MX_BITS.items():
            mine = tq._fp_quantize(rows, 32, bits, mode, None)
            theirs = mx.quantize(t2m(rows), 32, bits, mode)
            for name, a, b in zip(("wq", "scales"), mine, theirs, strict=True):
                assert_bit_equal(a, m2t(b), f"raw {mode} {dtype} {name}")
    assert (
        int(tq._fp_quantize(one_group_rows([2.0**-126], "float32"), 32, 4, "mxfp4", None)[1]) == 255
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8"])
def test_both_refuse_groups_whose_mx_scale_code_would_wrap(dtype, mode):
    """Both packages raise before mx.quantize, naming the op, the mode, the first
    offending (row, group), its amax and the threshold, for both ends of the wrapping
    range, for 2^-126 and for a group just at the threshold ratio."""
    lo, hi, _, _ = (float.fromhex(v) for v in WRAP_BOUNDS[(dtype, mode)])
    maxval = 6.0 if mode == "mxfp4" else 448.0
    for amax in (lo, hi, maxval * 2.0**-128, 2.0**-126, 2.0**-130):
        if not lo <= amax <= hi:
            continue
        # Row 0 fine; row 1: group 0 fine, group 1 wraps; row 2 wraps too (not the first).
        w = one_group_rows([1.0, amax, amax], dtype, groups=2)
        w[1, 5] = 0.5
        amax_text = f"{float(w[1, 32].float()):.9g}"
        pattern = (
            rf"^\[quantize\] mode '{mode}': row 1, group 1 \(elements 32\.\.63\) has amax "
            rf"{re.escape(amax_text)}, .* in {dtype}, at or below the threshold 2\^-128"
        )
        for lib, to in ((mq, t2m), (tq, lambda t: t)):
            with pytest.raises(ValueError, match=pattern):
                lib.quantize(to(w), 32, MX_BITS[mode], mode)
    # Leading batch dims: the row is named by its index tuple.
    w3 = one_group_rows([1.0, 1.0, 1.0, 1.0, 1.0, hi], dtype).reshape(2, 3, 32)
    for lib, to in ((mq, t2m), (tq, lambda t: t)):
        with pytest.raises(ValueError, match=r"^\[quantize\] mode '\w+': row \(1, 2\), group 0 "):
            lib.quantize(to(w3), 32, MX_BITS[mode], mode)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8"])
def test_groups_just_outside_the_wrap_range_quantize_bit_exactly(dtype, mode):
    """Just above the threshold (one ulp of amax past the largest wrapping value) the
    scale code is 0 (2^-127) and both packages agree bit for bit; just below the
    smallest wrapping amax, amax / maxval underflows to 0 in the weight's dtype and the
    group gets code 127 and quantizes to zeros (finite, allowed), as does an all-zero
    group. Values above, a few ulps further, still code 0."""
    lo, hi, above, zeroed = (float.fromhex(v) for v in WRAP_BOUNDS[(dtype, mode)])
    td = TORCH_DTYPE[dtype]
    assert torch.tensor(above, dtype=td).item() == above > hi  # representable neighbours
    assert torch.tensor(zeroed, dtype=td).item() == zeroed < lo
    int_view = torch.int16 if dtype == "bfloat16" else torch.int32
    above_bits = torch.tensor([above], dtype=td).view(int_view)
    up = (above_bits + torch.arange(4, dtype=int_view)).view(td).double().tolist()  # +0..3 ulp
    w = one_group_rows([*up, zeroed, 0.0, 2.0**-110], dtype)
    w[:, 1] = 0  # keep amax alone so the boundary is the one measured
    assert_same_quantization(w, 32, MX_BITS[mode], mode)
    wq, s, _ = tq.quantize(w, 32, MX_BITS[mode], mode)
    assert s[:4, 0].tolist() == [0, 0, 0, 0]  # 2^-127: no wrap
    assert s[4:6, 0].tolist() == [127, 127]  # ratio 0: scale 2^0, all codes 0
    back = tq.dequantize(wq, s, None, 32, MX_BITS[mode], mode, torch.float32)
    assert torch.isfinite(back).all() and (back[4:6] == 0).all()
    assert (back[:4, 0] > 0).all()  # the tiny amax survives (scale 2^-127)
    # One ulp below `above` is the largest wrapping amax: refused.
    with pytest.raises(ValueError, match=r"^\[quantize\] "):
        tq.quantize(one_group_rows([hi], dtype), 32, MX_BITS[mode], mode)


@pytest.mark.parametrize("mode", ["mxfp4", "mxfp8"])
def test_float16_weights_never_wrap(mode):
    """float16's smallest subnormal is 2^-24, so amax / maxval (>= 2^-24 / 448 before
    rounding) can never reach 2^-128: every float16 subnormal and the normals up to
    2^-8 quantize in both packages, bit for bit, with finite dequantized values (tiny
    groups whose ratio underflows to 0 in float16 get code 127 and quantize to 0)."""
    mags = torch.arange(1, 0x1C00, dtype=torch.int16).view(torch.float16).double()  # < 2^-8
    w = one_group_rows(mags.tolist(), "float16")
    assert_same_quantization(w, 32, MX_BITS[mode], mode)
    wq, s, _ = tq.quantize(w, 32, MX_BITS[mode], mode)
    assert (s <= 127).all()  # no wrapped (>= 128) code for a group below 1
    assert torch.isfinite(tq.dequantize(wq, s, None, 32, MX_BITS[mode], mode)).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
@pytest.mark.parametrize(("mode", "gs", "bits"), [FORMATS[3], *FP_FORMATS], ids=lambda v: str(v))
def test_both_refuse_non_finite_weights(dtype, value, mode, gs, bits):
    """inf / NaN in any mode: refused by both, naming the first non-finite element
    (MLX would store dtype-dependent codes: mx scale code 128 for float32, 0 for float16
    / bfloat16; affine gets NaN scales, or silently drops a NaN)."""
    w = torch.ones(2, 64, dtype=TORCH_DTYPE[dtype])
    w[1, 37] = value
    w[1, 50] = value
    text = "nan" if value != value else str(value)
    pattern = (
        rf"^\[quantize\] mode '{mode}': the weight must be finite .* element \(1, 37\) is {text}\.$"
    )
    for lib, to in ((mq, t2m), (tq, lambda t: t)):
        with pytest.raises(ValueError, match=pattern):
            lib.quantize(to(w), gs, bits, mode)


def test_nvfp4_elements_round_in_float32_even_for_bfloat16_weights():
    """MLX multiplies nvfp4 elements by a float32 encode factor (1.0) before the E2M1
    argmin, so the distances are float32: -548 (a bfloat16 w / saturated scale) maps to
    -6 (code 15). Rounded to bfloat16 the distances to -2 .. -6 would all tie at 544 and
    the first, -2 (code 12), would win."""
    w = torch.zeros(2, 16)
    w[0, 0] = 1.0
    w[0, 1] = -244736.0  # exact in bfloat16; amax / 6 saturates the E4M3 scale at 448
    w = w.to(torch.bfloat16)  # and -244736 / 448 = -546.3 rounds to -548 in bfloat16
    assert_same_quantization(w, 16, 4, "nvfp4")
    wq, _, _ = tq.quantize(w, 16, 4, "nvfp4")
    assert (int(wq[0, 0].item()) >> 4) & 0xF == 15


@pytest.mark.parametrize("dtype", DTYPES)
def test_nvfp4_global_scale_bit_exact(dtype):
    """With a float32 global scale g: scale code e4m3(amax/6 * 2688/g), dequantize
    multiplies by g/2688 and returns float32 whatever dtype is asked (MLX 0.32.4)."""
    w = weight_rows(64, dtype, seed=7)[[0, 1, 2, 3, 4, 7, 8, 9]]
    for g in (1.0, 0.37, 2688.0, 1e3):
        gs = torch.tensor(g, dtype=torch.float32)
        assert_same_quantization(w, 16, 4, "nvfp4", global_scale=gs)
        wq, s, _ = tq.quantize(w, 16, 4, "nvfp4", global_scale=gs)
        for out in ("float16", "bfloat16"):
            got = tq.dequantize(wq, s, None, 16, 4, "nvfp4", TORCH_DTYPE[out], global_scale=gs)
            want = mq.dequantize(
                t2m(wq), t2m(s), None, 16, 4, "nvfp4", MX_DTYPE[out], global_scale=t2m(gs)
            )
            assert got.dtype == torch.float32
            assert_bit_equal(got, m2t(want), f"nvfp4 global {g} -> {out}")


def test_batched_weights_and_nvfp4_rows_of_sixteen():
    """Leading batch dims are kept; nvfp4 rows of 16 (two uint32 words) pack per row."""
    w = torch.randn(2, 3, 64)
    assert_same_quantization(w, 32, 3, "affine")
    assert_same_quantization(torch.randn(4, 16), 16, 4, "nvfp4")


# ------------------------------------------------------------------------- known answers


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_affine_4bit_positive_dominant(lib):
    """w_i = i mod 16 (i < 32): max 15 is the edge, so scale = -(15/15) = -1, q0 =
    rint(15 / -1) = -15, scale = 15 / -15 = -1, bias = 15, q = 15 - w (codes run
    reversed). Word 0 holds codes 15..8 LSB-first: 0x89ABCDEF; word 1 codes 7..0."""
    w = torch.tensor([[float(i % 16) for i in range(32)]])
    wq, s, b = quantize_with(lib, w, 32, 4, "affine")
    assert wq.tolist() == [[0x89ABCDEF, 0x01234567, 0x89ABCDEF, 0x01234567]]
    assert s.tolist() == [[-1.0]] and b.tolist() == [[15.0]]
    # Negative-dominant mirror image: min -15 is the edge, scale +1, bias -15, same codes.
    wq, s, b = quantize_with(lib, -w, 32, 4, "affine")
    assert wq.tolist() == [[0x89ABCDEF, 0x01234567, 0x89ABCDEF, 0x01234567]]
    assert s.tolist() == [[1.0]] and b.tolist() == [[-15.0]]


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_affine_3bit_straddles_words(lib):
    """w_i = (i mod 8) - 7: min -7 is the edge, scale 1, bias -7, q_i = i mod 8. Eight
    3-bit codes 0..7 fill 24 bits (octal 76543210 = 0xFAC688), so code 10 straddles words
    0 and 1; word 0 = 0xFAC688 | 0x88 << 24."""
    codes = [i % 8 for i in range(32)]
    w = torch.tensor([[float(c - 7) for c in codes]])
    wq, s, b = quantize_with(lib, w, 32, 3, "affine")
    assert wq.tolist() == [pack_python(codes, 3)]
    assert wq[0, 0].item() == 0x88FAC688
    assert s.tolist() == [[1.0]] and b.tolist() == [[-7.0]]


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_affine_1bit_rounds_half_to_even(lib):
    """bits = 1: scale = max - min = 1, bias = min = 0; 0.5 -> rint(0.5) = 0, 0.75 -> 1,
    0.25 -> 0: codes 0, 0, 1, 0, then 1s -> 0xFFFFFFF4. No edge rule at 1 bit."""
    w = torch.full((1, 32), 0.75)
    w[0, :4] = torch.tensor([0.0, 0.5, 1.0, 0.25])
    wq, s, b = quantize_with(lib, w, 32, 1, "affine")
    assert wq.tolist() == [[0xFFFFFFF4]]
    assert s.tolist() == [[1.0]] and b.tolist() == [[0.0]]
    # Constant row: scale is floored at 1e-7 (float32), bias is the value, codes 0.
    wq, s, b = quantize_with(lib, torch.full((1, 32), 2.5), 32, 1, "affine")
    assert wq.tolist() == [[0]] and b.tolist() == [[2.5]]
    assert s.tolist() == [[float(np.float32(1e-7))]]


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_constant_and_zero_groups(lib):
    """A constant row c: max - min = 0, scale = -1e-7 (edge = max, negated), q0 =
    rint(c / -1e-7) != 0 so bias = c; an all-zero row: q0 = 0, bias = 0."""
    for c, bias in ((2.5, 2.5), (-2.5, -2.5), (0.0, 0.0)):
        wq, s, b = quantize_with(lib, torch.full((1, 64), c), 64, 4, "affine")
        assert wq.tolist() == [[0] * 8]
        assert b.tolist() == [[bias]]
        assert s.tolist() == [[-float(np.float32(1e-7))]]


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_nvfp4(lib):
    """amax 6 -> scale E4M3 1.0 (code 0x38 = 56). E2M1 ties to the smaller magnitude
    (1.75 -> 1.5, 3.5 -> 3, 2.5 -> 2, 5 -> 4, 0.75 -> 0.5, 1.25 -> 1) and -0.25 / -0.0
    give +0 (code 0); nibbles LSB-first."""
    row = [6.0, 1.75, -1.75, 3.5, -3.5, 2.5, 0.25, -0.25, 0.75, 1.25, 5, -5, 0, -0.0, 0.26, -0.26]
    wq, s, b = quantize_with(lib, torch.tensor([row, row]), 16, 4, "nvfp4")
    assert b is None
    assert wq.tolist() == [[0x004D5B37, 0x9100E621]] * 2
    assert s.tolist() == [[56], [56]]


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_known_answer_mx_modes(lib):
    """mxfp8, w = -1e-3: amax/448 = 2.23e-6, ceil(log2) = -18 (round-to-nearest would
    give -19), code 127 - 18 = 109; -1e-3 / 2^-18 = -262.1 -> E4M3 -256 = 0xF8.
    mxfp4 zeros: scale code 127 (2^0), codes 0."""
    wq, s, _ = quantize_with(lib, torch.full((1, 32), -1e-3), 32, 8, "mxfp8")
    assert s.tolist() == [[109]] and wq.tolist() == [[0xF8F8F8F8] * 8]
    wq, s, _ = quantize_with(lib, torch.zeros(1, 32), 32, 4, "mxfp4")
    assert s.tolist() == [[127]] and wq.tolist() == [[0] * 4]


def quantize_with(lib: str, w: torch.Tensor, gs: int, bits: int, mode: str):
    """Quantize with either package; return torch tensors (uint32 words as int64 lists)."""
    if lib == "torch":
        wq, s, b = tq.quantize(w, gs, bits, mode)
    else:
        mwq, ms, mb = mq.quantize(t2m(w), gs, bits, mode)
        wq, s, b = m2t(mwq), m2t(ms), None if mb is None else m2t(mb)
    assert wq is not None and s is not None
    return wq.to(torch.int64), (s if s.is_floating_point() else s.to(torch.int64)), b


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("mode", "gs", "bits"), FP_FORMATS)
def test_round_trip_exact_on_representable_values(dtype, mode, gs, bits):
    """Format values times a representable scale come back exactly, in both packages."""
    # E2M1: the whole table; E4M3: a spread of values (448 is appended below).
    mags = torch.tensor(FP4_TABLE) if bits == 4 else tq._e4m3_table()[::9]
    maxval = 6.0 if bits == 4 else 448.0
    scale = 2.0**-3 if mode != "nvfp4" else 0.8125  # 0.8125 = E4M3 1.101b * 2^-1
    vals = torch.cat([mags, -mags])[: gs - 1]
    row = torch.cat([vals, torch.zeros(gs - 1 - vals.numel()), torch.tensor([maxval])]) * scale
    w = torch.stack([row, -row]).to(TORCH_DTYPE[dtype])
    wq, s, b = tq.quantize(w, gs, bits, mode)
    back = tq.dequantize(wq, s, b, gs, bits, mode, TORCH_DTYPE[dtype])
    assert torch.equal(back, w)
    mwq, ms, mb = mq.quantize(t2m(w), gs, bits, mode)
    assert torch.equal(m2t(mq.dequantize(mwq, ms, mb, gs, bits, mode, MX_DTYPE[dtype])), w)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
def test_affine_round_trip_exact_on_grid_values(dtype, bits):
    """w = edge + q * 2^-3 with q in [0, 2^b - 1] covering both ends: the scale comes out
    exactly 2^-3 (negated when the edge is the max) and every value comes back."""
    top = 2**bits - 1
    q = torch.arange(64) % (top + 1)
    q[0], q[1] = 0, top
    neg = (q.float() - top) * 0.125  # min = -top/8 is the edge: bias = min
    pos = (top - q.float()) * 0.125  # max = top/8 is the edge: scale negated
    for w in (neg, pos):
        w2 = torch.stack([w, w]).to(TORCH_DTYPE[dtype])
        wq, s, b = tq.quantize(w2, 64, bits, "affine")
        assert torch.equal(tq.dequantize(wq, s, b, 64, bits, "affine"), w2)
        mwq, ms, mb = mq.quantize(t2m(w2), 64, bits, "affine")
        assert torch.equal(m2t(mq.dequantize(mwq, ms, mb, 64, bits, "affine")), w2)


# ---------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize(
    ("mode", "gs", "bits"), [("affine", 32, 3), ("affine", 64, 8), *FP_FORMATS]
)
def test_float64_dequantize_is_the_exact_value_of_the_stored_format(mode, gs, bits):
    """precision="float64" = q * scale + bias (value * scale) in float64 from the SAME
    stored scales, with codes unpacked by an independent Python-integer unpacker."""
    w = weight_rows(64, "bfloat16", seed=3)
    wq, s, b = tq.quantize(w, gs, bits, mode)
    got = tq.dequantize(wq, s, b, gs, bits, mode, precision="float64")
    assert got.dtype == torch.float64
    words = wq.to(torch.int64).tolist()
    for r, row_words in enumerate(words):
        stream = sum(word << (32 * j) for j, word in enumerate(row_words))
        codes = [(stream >> (i * bits)) & ((1 << bits) - 1) for i in range(64)]
        for i, c in enumerate(codes):
            if mode == "affine":
                assert b is not None
                want = c * float(s[r, i // gs]) + float(b[r, i // gs])
            else:
                if bits == 4:
                    value = FP4_TABLE[c & 7] * (-1.0 if c & 8 else 1.0)
                else:
                    value = float(tq._from_e4m3(torch.tensor([c]))[0])
                code = int(s[r, i // gs])
                scale = (
                    float(tq._from_e4m3(torch.tensor([code]))[0])
                    if mode == "nvfp4"
                    else 2.0 ** (code - 127)
                )
                want = value * scale
            assert got[r, i].item() == want, (r, i, c)


def test_affine_dequantize_rounds_twice_in_the_scales_dtype():
    """R(R(q * scale) + bias) in bfloat16 (no FMA); float32 output widens that result."""
    w = weight_rows(64, "bfloat16", seed=11)
    wq, s, b = tq.quantize(w, 64, 4, "affine")
    assert b is not None
    codes = tq._unpack(wq, 4).reshape(w.shape[0], 1, 64).to(torch.bfloat16)
    two = ((codes * s.unsqueeze(-1)) + b.unsqueeze(-1)).reshape(w.shape)
    assert torch.equal(tq.dequantize(wq, s, b, 64, 4, "affine"), two)
    assert torch.equal(tq.dequantize(wq, s, b, 64, 4, "affine", torch.float32), two.float())
    mlx_f32 = mq.dequantize(t2m(wq), t2m(s), t2m(b), 64, 4, "affine", mx.float32)
    assert torch.equal(m2t(mlx_f32), two.float())


@pytest.mark.parametrize("mode", ["nvfp4", "mxfp8"])
def test_fp_dequantize_defaults_to_bfloat16(mode):
    gs, bits = (16, 4) if mode == "nvfp4" else (32, 8)
    w = torch.randn(2, 32)
    wq, s, _ = tq.quantize(w, gs, bits, mode)
    assert tq.dequantize(wq, s, None, gs, bits, mode).dtype == torch.bfloat16
    assert mq.dequantize(t2m(wq), t2m(s), None, gs, bits, mode).dtype == mx.bfloat16


# -------------------------------------------------------------------------------- errors


def _expect_both(exc: type[Exception], where: str, call) -> None:
    """``call(lib, to_lib)`` must raise ``exc`` with a ``[where]`` message in both packages."""
    for lib, to_lib in ((mq, t2m), (tq, lambda t: t)):
        with pytest.raises(exc, match=rf"^\[{where}\] "):
            call(lib, to_lib)


W = torch.ones(2, 64)


@pytest.mark.parametrize(
    ("exc", "kwargs", "shape", "dtype"),
    [
        (ValueError, {"mode": "int4"}, (2, 64), torch.float32),
        (ValueError, {"bits": 7}, (2, 64), torch.float32),
        (ValueError, {"group_size": 16}, (2, 64), torch.float32),  # affine has no group 16
        (ValueError, {"group_size": 32, "mode": "nvfp4"}, (2, 64), torch.float32),
        (ValueError, {"group_size": 32, "bits": 4, "mode": "mxfp8"}, (2, 64), torch.float32),
        (ValueError, {"group_size": 16, "bits": 8, "mode": "nvfp4"}, (2, 64), torch.float32),
        (TypeError, {"bits": 4.0}, (2, 64), torch.float32),
        (ValueError, {}, (64,), torch.float32),  # 1-D
        (ValueError, {"group_size": 32}, (2, 48), torch.float32),  # 48 % 32
        (ValueError, {"group_size": 16, "mode": "nvfp4"}, (1, 16), torch.float32),
        (ValueError, {"group_size": 16, "mode": "nvfp4"}, (3, 16), torch.float32),
        (TypeError, {}, (2, 64), torch.int32),
        (ValueError, {}, (0, 64), torch.float32),  # MLX's own dequantize fails on it
        (ValueError, {"group_size": 16, "mode": "nvfp4"}, (0, 16), torch.float32),
    ],
)
def test_quantize_errors(exc, kwargs, shape, dtype):
    w = torch.ones(shape, dtype=dtype)
    _expect_both(exc, "quantize", lambda lib, to: lib.quantize(to(w), **kwargs))


def test_mlx_itself_fails_on_nvfp4_with_an_odd_number_of_groups():
    """Why check_quantizable rejects (1, 16) for nvfp4: MLX 0.32.4's own error is an
    internal reshape failure, not a message about the input."""
    with pytest.raises(ValueError, match="reshape"):
        mx.eval(mx.quantize(mx.ones((1, 16)), 16, 4, "nvfp4"))
    mx.eval(mx.quantize(mx.ones((2, 16)), 16, 4, "nvfp4"))  # 32 elements: fine


def test_float64_weights_are_rejected_up_front():
    """mx.quantize accepts a float64 weight at graph time and fails only in eval_cpu."""
    with pytest.raises(RuntimeError):
        mx.eval(mx.quantize(mx.ones((2, 64), dtype=mx.float64)))
    _expect_both(TypeError, "quantize", lambda lib, to: lib.quantize(to(W.double())))


def _packed(mode: str = "affine"):
    gs, bits = {"affine": (64, 4), "nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}[mode]
    return tq.quantize(W, gs, bits, mode), gs, bits


@pytest.mark.parametrize(
    ("exc", "case"),
    [
        (ValueError, "fp biases"),
        (ValueError, "affine without biases"),
        (ValueError, "wrong scales shape"),
        (ValueError, "biases shape"),
        (ValueError, "biases dtype"),
        (TypeError, "wq int32"),
        (TypeError, "fp scales float"),
        (TypeError, "affine scales uint8"),
        (ValueError, "wq 1-D"),
        (TypeError, "dtype int"),
        (ValueError, "global scale for affine"),
        (ValueError, "global scale float16"),
        (ValueError, "bits mismatch"),
    ],
)
def test_dequantize_errors(exc, case):
    (wq, s, b), gs, bits = _packed("affine")
    (fwq, fs, _), fgs, fbits = _packed("nvfp4")
    kw: dict = {}
    args: tuple = (wq, s, b, gs, bits, "affine")
    if case == "fp biases":
        args = (fwq, fs, torch.zeros(fs.shape), fgs, fbits, "nvfp4")
    elif case == "affine without biases":
        args = (wq, s, None, gs, bits, "affine")
    elif case == "wrong scales shape":
        args = (wq, s[:, :0], b[:, :0], gs, bits, "affine")
    elif case == "biases shape":
        args = (wq, s, b[:1], gs, bits, "affine")
    elif case == "biases dtype":
        args = (wq, s, b.half(), gs, bits, "affine")
    elif case == "wq int32":
        args = (wq.view(torch.int32), s, b, gs, bits, "affine")
    elif case == "fp scales float":
        args = (fwq, fs.float(), None, fgs, fbits, "nvfp4")
    elif case == "affine scales uint8":
        args = (wq, s.to(torch.uint8), b.to(torch.uint8), gs, bits, "affine")
    elif case == "wq 1-D":
        args = (wq[0], s[0], b[0], gs, bits, "affine")
    elif case == "global scale for affine":
        kw = {"global_scale": torch.tensor(1.0)}
    elif case == "global scale float16":
        args = (fwq, fs, None, fgs, fbits, "nvfp4")
        kw = {"global_scale": torch.tensor(1.0, dtype=torch.float16)}
    elif case == "bits mismatch":
        args = (wq, s, b, gs, 8, "affine")  # 8 words * 32 / 8 = 32 values, not 64
    dtype_arg = {"dtype int": (torch.int32, mx.int32)}.get(case)

    def call(lib, to):
        conv = tuple(to(a) if isinstance(a, torch.Tensor) else a for a in args)
        kws = {k: to(v) for k, v in kw.items()}
        dt = None if dtype_arg is None else dtype_arg[0 if lib is tq else 1]
        return lib.dequantize(*conv, dtype=dt, **kws)

    _expect_both(exc, "dequantize", call)


def test_quantized_matmul_errors():
    (wq, s, b), gs, bits = _packed("affine")

    def bad_width(lib, to):
        return lib.quantized_matmul(to(torch.ones(1, 32)), to(wq), to(s), to(b), True, gs, bits)

    def int_x(lib, to):
        x = torch.ones(1, 64, dtype=torch.int32)
        return lib.quantized_matmul(to(x), to(wq), to(s), to(b), True, gs, bits)

    def fp_biases(lib, to):
        (fwq, fs, _), fgs, fbits = _packed("mxfp4")
        return lib.quantized_matmul(
            to(torch.ones(1, 64)),
            to(fwq),
            to(fs),
            to(torch.zeros(fs.shape)),
            True,
            fgs,
            fbits,
            "mxfp4",
        )

    _expect_both(ValueError, "quantized_matmul", bad_width)
    _expect_both(TypeError, "quantized_matmul", int_x)
    _expect_both(ValueError, "quantized_matmul", fp_biases)


@pytest.mark.parametrize("lib", [mq, tq], ids=["mlx", "torch"])
def test_check_functions(lib):
    lib.check_quantization("X", 64, 4, "affine")
    lib.check_quantizable("X", (8, 64), 64)
    with pytest.raises(
        ValueError, match=r"^\[X\] mode 'affine' supports group_size in \(32, 64, 128\)"
    ):
        lib.check_quantization("X", 16, 4, "affine")
    with pytest.raises(
        ValueError, match=r"^\[X\] mode 'affine' supports bits in \(1, 2, 3, 4, 5, 6, 8\)"
    ):
        lib.check_quantization("X", 64, 7, "affine")
    with pytest.raises(ValueError, match=r"^\[X\] mode must be one of"):
        lib.check_quantization("X", 64, 4, "fp4")
    with pytest.raises(ValueError, match=r"^\[X\] .*at least 2-D"):
        lib.check_quantizable("X", (64,), 64)
    with pytest.raises(ValueError, match=r"^\[X\] .*divisible by group_size 64"):
        lib.check_quantizable("X", (2, 96), 64)


@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (1, 48), (5, 16), (3, 1, 16)])
def test_both_dequantize_refuse_nvfp4_element_counts_mlx_cannot_unpack(shape):
    """mx.dequantize 0.32.4 (CPU) fails on nvfp4 weights whose element count is not a
    multiple of 32 with an internal "[reshape]" error (pinned here, with and without a
    global scale, so we notice when MLX fixes it); both packages refuse them up front
    with the rule quantize already applies (quantize never produces such a weight)."""
    wq = torch.zeros(*shape[:-1], shape[-1] // 8, dtype=torch.int32).view(torch.uint32)
    s = torch.full((*shape[:-1], shape[-1] // 16), 56, dtype=torch.uint8)
    count = int(np.prod(shape))
    for gscale in (None, torch.tensor([2.0])):
        g_mx = None if gscale is None else t2m(gscale)
        with pytest.raises(ValueError, match=r"^\[reshape\] Cannot reshape"):
            mx.eval(mx.dequantize(t2m(wq), t2m(s), None, 16, 4, "nvfp4", global_scale=g_mx))
        pattern = (
            rf"^\[dequantize\] nvfp4 needs the weight's element count to be a multiple of 32 "
            rf".*packed shape {re.escape(str(tuple(wq.shape)))} holds {count} elements"
        )
        for lib, to in ((mq, t2m), (tq, lambda t: t)):
            dt = mx.float32 if lib is mq else torch.float32
            g = None if gscale is None else to(gscale)
            with pytest.raises(ValueError, match=pattern):
                lib.dequantize(to(wq), to(s), None, 16, 4, "nvfp4", dt, global_scale=g)


def test_dequantize_accepts_every_nvfp4_multiple_of_32():
    """(2, 16), (1, 32), (3, 32) and (2, 1, 16): the multiples of 32 still dequantize in
    both packages, bit-identically."""
    g = torch.Generator().manual_seed(9)
    for shape in ((2, 16), (1, 32), (3, 32), (2, 1, 16)):
        wq = torch.randint(0, 2**31, (*shape[:-1], shape[-1] // 8), generator=g).to(torch.uint32)
        s = torch.randint(40, 60, (*shape[:-1], shape[-1] // 16), generator=g).to(torch.uint8)
        got_t = tq.dequantize(wq, s, None, 16, 4, "nvfp4")
        got_m = m2t(mq.dequantize(t2m(wq), t2m(s), None, 16, 4, "nvfp4"))
        assert got_t.shape == shape
        assert_bit_equal(got_t, got_m, f"nvfp4 {shape}")


@pytest.mark.parametrize(
    "transpose",
    [None, 0, 1, "yes", np.bool_(True), 1.0, "array"],
    ids=["None", "0", "1", "str", "np.bool_", "float", "array"],
)
def test_quantized_matmul_requires_a_bool_transpose(transpose):
    """transpose must be a Python bool in both packages: an array used to reach MLX's
    "[convert] Only length-1 arrays" / torch's "Boolean value of Tensor" errors, and None
    / 0 / 1 were silently truth-tested."""
    (wq, s, b), gs, bits = _packed("affine")

    def call(lib, to):
        tr = (
            to(torch.zeros(2, dtype=torch.uint8))
            if isinstance(transpose, str) and transpose == "array"
            else transpose
        )
        return lib.quantized_matmul(to(torch.ones(1, 64)), to(wq), to(s), to(b), tr, gs, bits)

    for lib, to in ((mq, t2m), (tq, lambda t: t)):
        with pytest.raises(TypeError, match=r"^\[quantized_matmul\] transpose must be a bool"):
            call(lib, to)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"group_size": True}, "group_size and bits must be ints"),
        ({"group_size": 64.0}, "group_size and bits must be ints"),
        ({"group_size": "64"}, "group_size and bits must be ints"),
        ({"group_size": None}, "group_size and bits must be ints"),
        ({"bits": True}, "group_size and bits must be ints"),
        ({"bits": 4.0}, "group_size and bits must be ints"),
        ({"bits": np.int64(4)}, "group_size and bits must be ints"),
        ({"mode": None}, "mode must be a str"),
        ({"mode": 4}, "mode must be a str"),
    ],
    ids=lambda v: repr(v),
)
def test_scalar_parameters_have_python_types(kwargs, pattern):
    """group_size and bits must be ints (bools refused), mode a str: TypeError in both
    packages for quantize, dequantize and quantized_matmul."""
    (wq, s, b), gs, bits = _packed("affine")
    fmt = {"group_size": gs, "bits": bits, "mode": "affine", **kwargs}
    calls = {
        "quantize": lambda lib, to: lib.quantize(to(W), **fmt),
        "dequantize": lambda lib, to: lib.dequantize(to(wq), to(s), to(b), **fmt),
        "quantized_matmul": lambda lib, to: lib.quantized_matmul(
            to(torch.ones(1, 64)), to(wq), to(s), to(b), True, **fmt
        ),
    }
    for where, call in calls.items():
        for lib, to in ((mq, t2m), (tq, lambda t: t)):
            with pytest.raises(TypeError, match=rf"^\[{where}\] {pattern}"):
                call(lib, to)


def test_dequantize_refuses_an_array_as_dtype() -> None:
    """An array passed as ``dtype`` is a TypeError in MLX's style in both libraries (the
    thorough fuzz found torch_reference raising an unbracketed "truth value" ValueError)."""
    w = np.linspace(-1, 1, 128, dtype=np.float32).reshape(4, 32)
    wq, scales = mq.quantize(mx.array(w), group_size=32, bits=8, mode="mxfp8")[:2]
    with pytest.raises(TypeError, match=r"^\[dequantize\] dtype must be"):
        mq.dequantize(wq, scales, None, 32, 8, "mxfp8", dtype=mx.zeros((6, 5)))
    twq, tscales = (torch.from_numpy(np.array(a)) for a in (wq, scales))
    with pytest.raises(TypeError, match=r"^\[dequantize\] dtype must be"):
        tq.dequantize(twq, tscales, None, 32, 8, "mxfp8", dtype=np.zeros((6, 5), np.float32))


@pytest.mark.parametrize("record_name", ["quantization.quantized_matmul", "nn.quantized_linear"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_affine_cells_draw_the_cuda_single_group_boundary(record_name: str, dtype: str) -> None:
    """The random affine cases reach MLX 0.32.4's CUDA ``qmm_sm90`` boundary (one group per
    row, a multiple of 4 weight rows, several rows of x, 4 or 8 bits) within the examples of
    a ci cell, and the edge cases every run checks cover all four of its formats."""
    from hypothesis import Phase, find, settings

    from conformance.profiles import EXAMPLES
    from conformance.records.quantized import (
        CUDA_SINGLE_GROUP_FORMATS,
        hits_cuda_single_group_kernel,
    )
    from conformance.registry import REGISTRY

    record = REGISTRY[record_name]
    boundary = find(
        record.cases(dtype, "affine"),
        lambda case: hits_cuda_single_group_kernel(case.arrays["x"].shape, case.arrays["weight"].shape[0],
                                                   case.params),
        settings=settings(max_examples=EXAMPLES["ci"], derandomize=True, database=None, deadline=None,
                          phases=[Phase.generate]),
    )
    assert boundary.params["group_size"] in (64, 128)
    edges = [e.case for e in record.edge_cases
             if e.mode == "affine" and dtype in e.dtypes
             and hits_cuda_single_group_kernel(e.case.arrays["x"].shape, e.case.arrays["weight"].shape[0],
                                               e.case.params)]
    assert {(c.params["group_size"], c.params["bits"]) for c in edges} == set(CUDA_SINGLE_GROUP_FORMATS)
