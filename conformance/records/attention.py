"""Record for ``fast.scaled_dot_product_attention``: no mask, MLX's bottom-right causal
mask, boolean and additive array masks; GQA; decode (Lq = 1), cached prefill (Lq < Lk),
prefill (Lq = Lk) and Lq > Lk shapes."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import torch
from hypothesis import strategies as st

import torch_reference
from conformance.dtypes import FORMATS
from conformance.fuzz.inputs import (
    FuzzEntry,
    FuzzOutput,
    FuzzParam,
    any_arr,
    arr,
    dims,
    float_dtypes,
    shape_of,
    shapes,
)
from conformance.fuzz.inputs import constant_array as _fuzz_zeros
from conformance.record import BenchCase, Case, EdgeCase, ErrorCase, Mutant, OpRecord
from conformance.strategies import HEAD_DIMS, arrays, fill
from conformance.tolerance import Tolerance, with_matmul_precision

MODES = ("none", "causal", "bool_mask", "additive_mask")

# (Lq, Lk): decode, cached prefill, prefill, and more queries than keys.
SEQ_SHAPES = ((1, 1), (1, 7), (1, 33), (3, 3), (16, 16), (4, 19), (2, 31), (7, 3))


def _sdpa_call(lib, a, p, kw):
    mask = a.get("mask", p.get("mask"))
    return lib.fast.scaled_dot_product_attention(a["q"], a["k"], a["v"], scale=p["scale"], mask=mask, **kw)


@st.composite
def _sdpa_cases(draw, dtype, mode):
    b = draw(st.sampled_from((1, 2)), label="batch")
    hkv = draw(st.sampled_from((1, 2)), label="kv_heads")
    ratio = draw(st.sampled_from((1, 2, 4)), label="gqa_ratio")
    hq = hkv * ratio
    d = draw(st.sampled_from(HEAD_DIMS), label="head_dim")
    lq, lk = draw(st.sampled_from(SEQ_SHAPES), label="(Lq, Lk)")
    scale = draw(st.sampled_from((1.0 / math.sqrt(d), 1.0, 0.125)), label="scale")
    # "large" keeps |q|, |k| <= 8 so logits reach hundreds: far past exp's float32 range,
    # which is what a softmax without max subtraction gets wrong, yet finite in every dtype.
    headroom = FORMATS[dtype].max_finite / 8.0
    profiles = ("normal", "ints", "large", "mixed")
    found = {
        "q": draw(arrays((b, hq, lq, d), dtype, profiles=profiles, headroom=headroom, label="q")),
        "k": draw(arrays((b, hkv, lk, d), dtype, profiles=profiles, headroom=headroom, label="k")),
        "v": draw(arrays((b, hkv, lk, d), dtype, profiles=("normal", "ints", "mixed"), label="v")),
    }
    params: dict[str, object] = {"scale": scale, "mask": None}
    if mode == "causal":
        params["mask"] = "causal"
    elif mode in ("bool_mask", "additive_mask"):
        mb = draw(st.sampled_from((1, b)), label="mask_batch")
        mh = draw(st.sampled_from((1, hq)), label="mask_heads")
        seed = draw(st.integers(0, 2**32 - 1), label="mask_seed")
        rng = np.random.default_rng(seed)
        keep = rng.random((mb, mh, lq, lk)) < 0.7
        keep[..., 0] = True  # every query sees at least one key: fully masked rows are their own edge case
        if mode == "bool_mask":
            found["mask"] = keep
        else:
            bias = rng.standard_normal((mb, mh, lq, lk)).astype(np.float32)
            found["mask"] = np.where(keep, bias, -np.inf).astype(np.float32)
    return Case(found, params)


def _attention_by_hand(a, p, *, top_left=False, stable=True, gqa="block", use_scale=True):
    """Plain-op attention with one planted deviation (for the mutants)."""
    q, k, v = a["q"], a["k"], a["v"]
    hq, hkv = q.shape[1], k.shape[1]
    ratio = hq // hkv
    if ratio > 1:
        if gqa == "block":
            k, v = mx.repeat(k, ratio, axis=1), mx.repeat(v, ratio, axis=1)
        else:  # head h reads kv head h % Hkv
            k, v = mx.concatenate([k] * ratio, axis=1), mx.concatenate([v] * ratio, axis=1)
    scale = p["scale"] if use_scale else 1.0
    scores = ((q * scale) @ mx.swapaxes(k, -1, -2)).astype(mx.float32)
    lq, lk = scores.shape[-2:]
    mask = a.get("mask", p.get("mask"))
    if isinstance(mask, str):
        keep = mx.tri(lq, lk, k=0 if top_left else lk - lq, dtype=mx.bool_)
        scores = mx.where(keep, scores, -mx.inf)
    elif mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    if stable:
        weights = mx.softmax(scores, axis=-1)
    else:
        e = mx.exp(scores)
        weights = e / mx.sum(e, axis=-1, keepdims=True)
    return weights.astype(q.dtype) @ v


def _sdpa_magnitude(a, p):
    """First-order forward-error magnitude: an error d_j in score j changes the output by
    about ``sum_j P_j |v_j| (|d_j| + max |d|)``; float32 score errors are at most
    ``gamma_D * scale * |q|.|k_j|``. So ``M = (P @ |v|) * (1 + 2 * scale * max_j |q|.|k_j|)``
    with P the exact attention weights (``P @ |v|`` is the float64 oracle on ``|v|``)."""
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in a.items()}
    weighted = torch_reference.fast.scaled_dot_product_attention(
        t["q"], t["k"], t["v"].abs(), scale=p["scale"], mask=t.get("mask", p.get("mask")), precision="float64"
    ).numpy()
    q, k = np.abs(a["q"]), np.abs(a["k"])
    k = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    score_mag = abs(p["scale"]) * (q @ np.swapaxes(k, -1, -2)).max(axis=-1, keepdims=True)
    return np.abs(weighted) * (1.0 + 2.0 * score_mag)


_SDPA_TOLERANCE = Tolerance(
    reason=(
        "Two reductions (scores over D, the weighted sum over Lk) and a softmax; libraries "
        "order them differently (MLX's CPU BLAS sums sequentially, fused GPU kernels use an "
        "online softmax). Bound: 2x the peer's error + 2 ulp, or gamma_(D+Lk+8) * "
        "(P @ |v|) * (1 + 2 * scale * max_j |q|.|k_j|) with float32's u (first-order error "
        "of the scores propagated through softmax; 8 for exp, the max, the division)."
    ),
    accumulation_terms=lambda a, p: a["q"].shape[-1] + a["k"].shape[-2] + 8,
)
# Under TF32 (CUDA, M5-class Metal; with_matmul_precision) both products round their inputs
# (q, k for the scores; the weights P and v for the sum) to a 10-bit mantissa: the first-order
# analysis above then carries (1 + u_in)^2 (1 + gamma) - 1 in place of gamma, on the same
# magnitude (the score term covers q.k, the leading 1 covers P @ |v|).


def _bench_sdpa(b, hq, hkv, lq, lk, d, mask):
    return Case({"q": fill((b, hq, lq, d), "normal", "float32", 0),
                 "k": fill((b, hkv, lk, d), "normal", "float32", 1),
                 "v": fill((b, hkv, lk, d), "normal", "float32", 2)},
                {"scale": 1.0 / math.sqrt(d), "mask": mask})


# ---- fuzz entry point (conformance.fuzz) ---------------------------------------------

_ARRAY = FuzzParam(array=True)
_MASK_STRINGS = ("causal", "Causal", "upper", "", "none", "causal ", "lower")
_REAL_VALUES = (10000.0, 1.0, 0.0, -1.0, -10000.0, math.nan, math.inf, 1e-300, 1e300, "10000", None, True, 1j, 5)


@st.composite
def _sdpa_fuzz_valid(draw):
    dt = draw(float_dtypes())
    b, hkv, ratio = draw(dims(0, 2)), draw(dims(1, 2)), draw(dims(1, 2))
    lq, lk, d, dv = draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 4)), draw(dims(0, 4))
    hq = hkv * ratio
    found = {
        "q": draw(arr((b, hq, lq, d), dt)),
        "k": draw(arr((b, hkv, lk, d), dt)),
        "v": draw(arr((b, hkv, lk, dv), dt)),
        "scale": draw(st.sampled_from((1.0 / math.sqrt(max(d, 1)), 1.0, 0.125))),
    }
    kind = draw(st.sampled_from(("none", "causal", "bool", "additive")))
    if kind in ("none", "causal"):
        found["mask"] = None if kind == "none" else "causal"
    else:
        full = (b, hq, lq, lk)
        mshape = tuple(draw(st.sampled_from((1, s))) for s in full)[draw(st.integers(0, 4)):]
        found["mask"] = draw(arr(mshape, "bool" if kind == "bool" else dt))
    found["sinks"] = draw(st.sampled_from((None, None, None, "yes")))
    if found["sinks"] == "yes":
        found["sinks"] = draw(arr((hq,), dt))
    return found


def _sdpa_fuzz_mask_junk(a):
    """Masks of odd shapes and dtypes, and the strings that are not ``"causal"``."""
    return st.one_of(st.sampled_from(_MASK_STRINGS), any_arr(),
                     shapes(max_rank=5, max_elements=32).flatmap(lambda s: arr(s, "bool")))


def _sdpa_fuzz_expect(a):
    b, hq, lq, _ = shape_of(a["q"])
    return [FuzzOutput((b, hq, lq, shape_of(a["v"])[-1]))]


SDPA_FUZZ = FuzzEntry(
    name="fast.scaled_dot_product_attention",
    call=lambda lib, a, kw: lib.fast.scaled_dot_product_attention(
        a["q"], a["k"], a["v"], scale=a["scale"], mask=a["mask"], sinks=a["sinks"], **kw),
    valid=_sdpa_fuzz_valid(),
    params={"q": _ARRAY, "k": _ARRAY, "v": _ARRAY, "sinks": _ARRAY,
            "mask": FuzzParam(array=True, extra=_sdpa_fuzz_mask_junk), "scale": FuzzParam(values=_REAL_VALUES)},
    expect=_sdpa_fuzz_expect,
    where=("scaled_dot_product_attention",),
    from_case=lambda a, p: {"q": a["q"], "k": a["k"], "v": a["v"], "scale": p["scale"],
                            "mask": a.get("mask", p.get("mask")), "sinks": None},
    pinned=(  # no keys at all
        {"q": _fuzz_zeros((1, 2, 2, 3), "float32"), "k": _fuzz_zeros((1, 2, 0, 3), "float32"),
         "v": _fuzz_zeros((1, 2, 0, 3), "float32"), "scale": 1.0, "mask": None, "sinks": None},
        # no query heads beside two kv heads: MLX's kernel fails to broadcast [B, Hq] sinks/mask
        {"q": _fuzz_zeros((1, 0, 1, 3), "float32"), "k": _fuzz_zeros((1, 2, 1, 3), "float32"),
         "v": _fuzz_zeros((1, 2, 1, 3), "float32"), "scale": 1.0, "mask": None, "sinks": None},
    ),
)


SDPA = OpRecord(
    name="fast.scaled_dot_product_attention",
    api=("fast.scaled_dot_product_attention",),
    entry_points=(SDPA_FUZZ,),
    call=_sdpa_call,
    cases=_sdpa_cases,
    modes=MODES,
    tolerance=lambda backend, dtype: with_matmul_precision(_SDPA_TOLERANCE, backend, dtype),
    magnitude=_sdpa_magnitude,
    edge_cases=(
        EdgeCase(Case({"q": np.ones((1, 1, 1, 4), np.float32), "k": np.ones((1, 1, 3, 4), np.float32),
                       "v": np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)},
                      {"scale": 0.5, "mask": "causal"},
                      label="decode: the one query sees every key (bottom-right)"), mode="causal"),
    ),
    errors=(
        ErrorCase("query heads not a multiple of kv heads",
                  Case({"q": np.ones((1, 3, 2, 8), np.float32), "k": np.ones((1, 2, 2, 8), np.float32),
                        "v": np.ones((1, 2, 2, 8), np.float32)}, {"scale": 1.0, "mask": None}), ValueError),
        ErrorCase("q and k head dims differ",
                  Case({"q": np.ones((1, 2, 2, 8), np.float32), "k": np.ones((1, 2, 2, 4), np.float32),
                        "v": np.ones((1, 2, 2, 4), np.float32)}, {"scale": 1.0, "mask": None}), ValueError),
        ErrorCase("unknown mask string",
                  Case({"q": np.ones((1, 2, 2, 8), np.float32), "k": np.ones((1, 2, 2, 8), np.float32),
                        "v": np.ones((1, 2, 2, 8), np.float32)}, {"scale": 1.0, "mask": "upper"}), ValueError),
        ErrorCase("mask does not broadcast",
                  Case({"q": np.ones((1, 2, 2, 8), np.float32), "k": np.ones((1, 2, 3, 8), np.float32),
                        "v": np.ones((1, 2, 3, 8), np.float32), "mask": np.ones((1, 1, 2, 2), bool)},
                       {"scale": 1.0}), ValueError),
        ErrorCase("q not 4-D",
                  Case({"q": np.ones((2, 2, 8), np.float32), "k": np.ones((1, 2, 2, 8), np.float32),
                        "v": np.ones((1, 2, 2, 8), np.float32)}, {"scale": 1.0, "mask": None}), ValueError),
    ),
    mutants=(
        Mutant("top_left_causal", "PyTorch's is_causal alignment (j <= i)",
               lambda lib, a, p, kw: _attention_by_hand(a, p, top_left=True), mode="causal"),
        Mutant("softmax_without_max_subtraction", "exp(scores) / sum(exp(scores))",
               lambda lib, a, p, kw: _attention_by_hand(a, p, stable=False), mode="none"),
        Mutant("gqa_interleaved_heads", "query head h reads kv head h % Hkv",
               lambda lib, a, p, kw: _attention_by_hand(a, p, gqa="interleaved"), mode="none"),
        Mutant("scale_ignored", "scores are q @ k.T unscaled",
               lambda lib, a, p, kw: _attention_by_hand(a, p, use_scale=False), mode="bool_mask"),
    ),
    bench=(
        BenchCase("decode", lambda: _bench_sdpa(1, 32, 8, 1, 2048, 128, None), mode="none",
                  note="one query over a 2048-token cache, 32 q heads / 8 kv heads, D 128"),
        BenchCase("prefill", lambda: _bench_sdpa(1, 32, 8, 2048, 2048, 128, "causal"), mode="causal",
                  note="causal prefill L = 2048, 32 q heads / 8 kv heads, D 128",
                  cpu_make=lambda: _bench_sdpa(1, 32, 8, 256, 256, 128, "causal"), cpu_note="L = 256 on CPU"),
        BenchCase("dit", lambda: _bench_sdpa(1, 24, 24, 4096, 4096, 128, None), mode="none",
                  note="diffusion block: 4096 image tokens, 24 heads x 128",
                  cpu_make=lambda: _bench_sdpa(1, 24, 24, 256, 256, 128, None), cpu_note="L = 256 on CPU"),
    ),
)

RECORDS = (SDPA,)
