"""Record for ``fast.RoPE`` / ``fast.rope``: rotate-half (GPT-NeoX / Hugging Face Llama)
and interleaved (``traditional``) pairing, partial dims, scales, bases, int offsets and
per-row offset arrays, 3-D and 4-D inputs."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from conformance.fuzz.inputs import (
    ALL_DTYPES,
    Arr,
    FuzzEntry,
    FuzzParam,
    arr,
    dims,
    float_dtypes,
    same_as,
)
from conformance.fuzz.inputs import constant_array as _fuzz_zeros
from conformance.record import BenchCase, Case, EdgeCase, ErrorCase, Mutant, OpRecord, constant
from conformance.strategies import SEQ_LENS, arrays, fill
from conformance.tolerance import Tolerance

MODES = ("rotate_half", "interleaved")


def _rope_call(lib, a, p, kw):
    offset = a["offset"] if "offset" in a else p["offset"]
    traditional = p["mode"] == "interleaved"
    if p["form"] == "function":
        return lib.fast.rope(a["x"], p["dims"], traditional=traditional, base=p["base"], scale=p["scale"],
                             offset=offset, **kw)
    layer = lib.fast.RoPE(p["dims"], traditional=traditional, base=p["base"], scale=p["scale"])
    return layer(a["x"], offset=offset, **kw)


@st.composite
def _rope_cases(draw, dtype, mode):
    d = draw(st.sampled_from((2, 8, 64, 80, 128)), label="head_dim")
    dims = draw(st.sampled_from(sorted({d, max(2, d // 2), 2})), label="rotated_dims")
    b = draw(st.sampled_from((1, 2, 3)), label="batch")
    t = draw(st.sampled_from(SEQ_LENS), label="seq")
    shape = (b, t, d) if draw(st.booleans(), label="3-D") else (b, draw(st.sampled_from((1, 4)), label="heads"), t, d)
    found = {"x": draw(arrays(shape, dtype, profiles=("normal", "ints", "mixed", "special"), label="x"))}
    params = {
        "mode": mode,
        "dims": dims,
        "base": draw(st.sampled_from((10000.0, 500000.0, 1e6, 10.0)), label="base"),
        "scale": draw(st.sampled_from((1.0, 0.5, 0.125, 2.0)), label="scale"),
        "form": draw(st.sampled_from(("layer", "function")), label="form"),
        "offset": 0,
    }
    kind = draw(st.sampled_from(("int", "per_row")), label="offset_kind")
    if kind == "int":
        params["offset"] = draw(st.sampled_from((0, 1, 17, 4096)), label="offset")
    else:
        seed = draw(st.integers(0, 2**32 - 1), label="offset_seed")
        found["offset"] = np.random.default_rng(seed).integers(0, 5000, (b,)).astype(np.int32)
    return Case(found, params)


def _rope_by_hand(a, p, *, flip_pairing=False, ignore_offset=False, rotate_all=False, freq_power=2.0):
    """Plain-op RoPE in float32 with one planted deviation (for the mutants)."""
    x = a["x"]
    d = x.shape[-1]
    dims = d if rotate_all else p["dims"]
    t = x.shape[-2]
    offset = a["offset"] if "offset" in a else mx.array(p["offset"])
    if ignore_offset:
        offset = mx.zeros_like(offset)
    pos = mx.arange(t, dtype=mx.float32)
    pos = (offset.astype(mx.float32).reshape(-1, *([1] * (x.ndim - 1))) if offset.ndim else offset) + \
        pos.reshape(t, 1)
    inv = mx.power(p["base"], -freq_power * mx.arange(dims // 2, dtype=mx.float32) / dims)
    angle = pos * p["scale"] * inv
    cos, sin = mx.cos(angle), mx.sin(angle)
    xf = x.astype(mx.float32)
    rot, rest = xf[..., :dims], xf[..., dims:]
    interleaved = (p["mode"] == "interleaved") != flip_pairing
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        y1, y2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
        rot = mx.stack([y1, y2], axis=-1).reshape(rot.shape)
    else:
        x1, x2 = rot[..., : dims // 2], rot[..., dims // 2:]
        rot = mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return mx.concatenate([rot, rest], axis=-1).astype(x.dtype)


def _rope_magnitude(a, p):
    """First-order sensitivity of each output to float32 errors in the angle:
    ``(|x_i| + |x_pair(i)|) * (1 + |theta_i|)`` for rotated features, 0 past ``dims``."""
    x = np.abs(a["x"])
    dims, t = p["dims"], x.shape[-2]
    half = dims // 2
    offset = np.asarray(a["offset"] if "offset" in a else p["offset"], dtype=np.float64)
    positions = np.arange(t, dtype=np.float64)
    if offset.ndim:  # one offset per batch row
        positions = offset.reshape(-1, *([1] * (x.ndim - 1))) + positions.reshape(t, 1)
    else:
        positions = (offset + positions).reshape(t, 1)
    theta = positions * p["scale"] * p["base"] ** (-2.0 * np.arange(half) / dims)
    rot = x[..., :dims]
    if p["mode"] == "interleaved":
        pair_sum = np.repeat(rot[..., 0::2] + rot[..., 1::2], 2, axis=-1)
        angle = np.repeat(np.abs(theta), 2, axis=-1)
    else:
        pair_sum = np.concatenate([rot[..., :half] + rot[..., half:]] * 2, axis=-1)
        angle = np.concatenate([np.abs(theta)] * 2, axis=-1)
    mag = np.zeros(np.broadcast_shapes(x.shape, (*angle.shape[:-1], x.shape[-1])))
    mag[..., :dims] = pair_sum * (1.0 + angle)
    return mag


_ROPE_TOLERANCE = Tolerance(
    reason=(
        "Angles, cos and sin are float32 in both libraries, but MLX's CPU exp/sin/cos are "
        "polynomial approximations (inv_freq up to 7 float32 ulp from PyTorch's, measured), "
        "so at large positions the two carry different angle errors. Bound: 2x the peer's "
        "error + 2 ulp, or gamma_12 * (|x_i| + |x_pair|) * (1 + |theta|) with float32's u "
        "(7 ulp in inv_freq, 2 products for the angle, 2 for cos/sin, 1 for the rotation)."
    ),
    accumulation_terms=lambda a, p: 12,
)

# ---- fuzz entry points (conformance.fuzz) ---------------------------------------------

_DIMS_VALUES = (0, -2, 1, 3, 7, 2, 4, 8, 16, 2**31, 4.0, None, "8", True)
_REAL_VALUES = (10000.0, 1.0, 0.0, -1.0, -10000.0, math.nan, math.inf, 1e-300, 1e300, "10000", None, True, 1j, 5)


@st.composite
def _rope_fuzz_valid(draw):
    dt = draw(float_dtypes())
    b, t, d = draw(dims(0, 2)), draw(dims(0, 3)), 2 * draw(dims(1, 4))
    shape = (b, t, d) if draw(st.booleans()) else (b, draw(dims(0, 2)), t, d)
    offset = draw(st.sampled_from((0, 1, 17, 4096)))
    if draw(st.booleans()):
        offset = draw(arr(draw(st.sampled_from(((b,), (), (1,)))),
                          draw(st.sampled_from(("int32", "int32", "uint32"))), ("small",)))
    return {
        "x": draw(arr(shape, dt)),
        "dims": 2 * draw(st.integers(1, d // 2)),
        "traditional": draw(st.booleans()),
        "base": draw(st.sampled_from((10000.0, 10.0, 1e6))),
        "scale": draw(st.sampled_from((1.0, 0.5, 2.0))),
        "offset": offset,
    }


def _rope_fuzz_offset_junk(a):
    """Negative, float and huge offsets, and offset arrays of the wrong length or dtype."""
    b = a["x"].shape[0] if isinstance(a.get("x"), Arr) and a["x"].ndim else 1
    return st.one_of(
        st.sampled_from((-1, 1.5, 2**31 - 1, 2**31, -(2**31), True, np.int64(3), "0", None)),
        st.sampled_from(((b + 1,), (b, 1), (0,), (2, b))).flatmap(lambda s: arr(s, "int32")),
        st.sampled_from(ALL_DTYPES).flatmap(lambda dt: arr((b,), dt)),
    )


def _rope_fuzz_layer_call(lib, a, kw):
    layer = lib.fast.RoPE(a["dims"], traditional=a["traditional"], base=a["base"], scale=a["scale"])
    return layer(a["x"], offset=a["offset"], **kw)


def _rope_fuzz_fn_call(lib, a, kw):
    return lib.fast.rope(a["x"], a["dims"], traditional=a["traditional"], base=a["base"], scale=a["scale"],
                         offset=a["offset"], **kw)


def _rope_from_case(a, p):
    return {"x": a["x"], "dims": p["dims"], "traditional": p["mode"] == "interleaved", "base": p["base"],
            "scale": p["scale"], "offset": a["offset"] if "offset" in a else p["offset"]}


_ROPE_FUZZ_PARAMS = {
    "x": FuzzParam(array=True),
    "dims": FuzzParam(values=_DIMS_VALUES),
    "traditional": FuzzParam(values=(0, 1, None, "no")),
    "base": FuzzParam(values=_REAL_VALUES),
    "scale": FuzzParam(values=_REAL_VALUES),
    "offset": FuzzParam(array=True, extra=_rope_fuzz_offset_junk),
}
ROPE_FUZZ = (
    FuzzEntry(name="fast.RoPE", call=_rope_fuzz_layer_call, valid=_rope_fuzz_valid(), params=_ROPE_FUZZ_PARAMS,
              expect=same_as("x"), where=("RoPE",), from_case=_rope_from_case),
    FuzzEntry(name="fast.rope", call=_rope_fuzz_fn_call, valid=_rope_fuzz_valid(), params=_ROPE_FUZZ_PARAMS,
              expect=same_as("x"), where=("rope",), from_case=_rope_from_case,
              pinned=({"x": _fuzz_zeros((1, 2, 8), "float32"), "dims": 2, "traditional": False, "base": 1e-300,
                       "scale": 1.0, "offset": 0},)),
)


ROPE = OpRecord(
    name="fast.rope",
    api=("fast.RoPE", "fast.rope"),
    entry_points=ROPE_FUZZ,
    call=_rope_call,
    cases=_rope_cases,
    modes=MODES,
    tolerance=constant(_ROPE_TOLERANCE),
    magnitude=_rope_magnitude,
    edge_cases=(
        EdgeCase(Case({"x": np.arange(8, dtype=np.float32).reshape(1, 1, 8)},
                      {"mode": "rotate_half", "dims": 8, "base": 10000.0, "scale": 1.0, "form": "layer",
                       "offset": 0}, label="position 0 is the identity"), mode="rotate_half"),
        EdgeCase(Case({"x": np.arange(8, dtype=np.float32).reshape(1, 2, 4)},
                      {"mode": "interleaved", "dims": 2, "base": 10000.0, "scale": 1.0, "form": "function",
                       "offset": 5}, label="features past dims pass through"), mode="interleaved"),
    ),
    errors=(
        *(ErrorCase(name, Case({"x": np.ones(shape, np.float32)},
                             {"mode": "rotate_half", "dims": dims, "base": 10000.0, "scale": 1.0,
                              "form": "layer", "offset": offset}), exc)
        for name, shape, dims, offset, exc in (
            ("odd dims", (1, 2, 8), 3, 0, ValueError),
            ("dims above the head dim", (1, 2, 8), 16, 0, ValueError),
            ("2-D input", (2, 8), 8, 0, ValueError),
            ("float offset", (1, 2, 8), 8, 1.5, TypeError),
            ("negative offset", (1, 2, 8), 8, -1, ValueError),
        )),
        ErrorCase("per-row offsets of the wrong length",
                  Case({"x": np.ones((2, 3, 8), np.float32), "offset": np.array([1, 2, 3], np.int32)},
                       {"mode": "rotate_half", "dims": 8, "base": 10000.0, "scale": 1.0, "form": "layer",
                        "offset": 0}), ValueError),
    ),
    mutants=(
        Mutant("flipped_pairing", "pairs (2i, 2i+1) and (i, i + dims/2) swapped",
               lambda lib, a, p, kw: _rope_by_hand(a, p, flip_pairing=True), mode="rotate_half"),
        Mutant("offset_ignored", "positions start at 0 whatever the offset",
               lambda lib, a, p, kw: _rope_by_hand(a, p, ignore_offset=True), mode="interleaved"),
        Mutant("rotates_every_feature", "features past dims are rotated too",
               lambda lib, a, p, kw: _rope_by_hand(a, p, rotate_all=True), mode="rotate_half"),
        Mutant("frequency_exponent", "base^(-i/dims) instead of base^(-2i/dims)",
               lambda lib, a, p, kw: _rope_by_hand(a, p, freq_power=1.0), mode="interleaved"),
    ),
    bench=(
        BenchCase("decode", lambda: Case({"x": fill((1, 32, 1, 128), "normal", "float32", 0)},
                                         {"mode": "rotate_half", "dims": 128, "base": 500000.0, "scale": 1.0,
                                          "form": "layer", "offset": 2047}), mode="rotate_half",
                  note="one token, 32 heads x 128, offset 2047"),
        BenchCase("prefill", lambda: Case({"x": fill((1, 32, 2048, 128), "normal", "float32", 0)},
                                          {"mode": "rotate_half", "dims": 128, "base": 500000.0, "scale": 1.0,
                                           "form": "layer", "offset": 0}), mode="rotate_half",
                  note="2048 tokens, 32 heads x 128"),
    ),
)

RECORDS = (ROPE,)
