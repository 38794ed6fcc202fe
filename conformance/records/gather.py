"""Records for the exact data-movement layers: ``nn.Embedding``, ``nn.repeat_kv`` and the
causal masks. No arithmetic rounds here, so MLX must be bit-identical to the peer."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from conformance.fuzz.inputs import (
    ALL_DTYPES,
    INT_DTYPES,
    Arr,
    Foreign,
    FuzzEntry,
    FuzzOutput,
    FuzzParam,
    arr,
    dims,
    float_dtypes,
    same_as,
    shape_of,
    shapes,
)
from conformance.fuzz.inputs import constant_array as _fuzz_zeros
from conformance.record import BenchCase, Case, EdgeCase, ErrorCase, Mutant, OpRecord, constant
from conformance.strategies import arrays, fill, index_array
from conformance.tolerance import EXACT

# ---- nn.Embedding -------------------------------------------------------------------


def _embedding_call(lib, a, p, kw):
    return lib.nn.Embedding(a["weight"], index_policy=p.get("index_policy", "check"))(a["indices"], **kw)


@st.composite
def _embedding_cases(draw, dtype, mode):
    n = draw(st.sampled_from((1, 2, 7, 64, 257)), label="num_embeddings")
    d = draw(st.sampled_from((1, 3, 32, 33)), label="embedding_dim")
    shape = draw(st.sampled_from(((1,), (5,), (1, 1), (2, 7), (3, 2, 4))), label="indices_shape")
    seed = draw(st.integers(0, 2**32 - 1), label="indices_seed")
    weight = draw(arrays((n, d), dtype, profiles=("normal", "special", "mixed"), label="weight"))
    indices = index_array(shape, n, seed)
    if draw(st.booleans(), label="touch_last_row"):
        indices.reshape(-1)[-1] = n - 1  # the last valid row is where off-by-one bugs live
    policy = draw(st.sampled_from(("check", "clip", "trusted")), label="index_policy")
    return Case({"weight": weight, "indices": indices}, {"index_policy": policy})


def _mutant_off_by_one(lib, a, p, kw):
    w = a["weight"]
    return mx.take(w, mx.minimum(a["indices"] + 1, w.shape[0] - 1), axis=0)


def _mutant_reversed_rows(lib, a, p, kw):
    return mx.take(a["weight"][::-1], a["indices"], axis=0)


_W = np.arange(12, dtype=np.float32).reshape(4, 3)

# ---- fuzz entry point (conformance.fuzz) ----

_ARRAY = FuzzParam(array=True)
_POLICIES = ("check", "clip", "trusted")


@st.composite
def _embedding_fuzz_valid(draw):
    n, d = draw(dims(0, 6)), draw(dims(0, 4))
    policy = draw(st.sampled_from(_POLICIES))
    ishape = draw(shapes(max_rank=3, max_elements=12))
    idt = draw(st.sampled_from(INT_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.integers(0, max(n, 1), ishape)
    if policy != "trusted" and draw(st.booleans()) and values.size:
        bad = draw(st.sampled_from((n, n + 1, -1, -n - 1, 2**31 - 1, -(2**31), 255, 2**32 - 1)))
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = bad
    info = np.iinfo(np.dtype(idt))
    indices = Arr(np.clip(values, info.min, info.max).astype(idt), idt)
    return {"weight": draw(arr((n, d), draw(float_dtypes()))), "index_policy": policy, "indices": indices}


def _embedding_fuzz_fixup(a):
    """``trusted`` promises in-range indices (the caller guarantees them; out-of-range ones
    are undefined behaviour by design): keep that promise. ``check``/``clip`` get any index."""
    w, idx = a.get("weight"), a.get("indices")
    if a.get("index_policy") != "trusted" or not isinstance(idx, Arr) or idx.dtype not in INT_DTYPES:
        return a
    n = w.shape[0] if isinstance(w, Arr) and w.ndim == 2 else 0
    if n == 0:
        values = np.zeros((0,), idx.data.dtype)  # no row is a valid index: only an empty lookup is
    else:
        values = np.mod(idx.data.astype(np.int64), n).astype(idx.data.dtype)
    return {**a, "indices": Arr(values, idx.dtype)}


def _embedding_fuzz_expect(a):
    assert shape_of(a["weight"])[0] > 0 or a["indices"].data.size == 0, "no row to look up in an empty table"
    return [FuzzOutput((*shape_of(a["indices"]), shape_of(a["weight"])[1]), a["weight"].dtype)]


EMBEDDING_FUZZ = FuzzEntry(
    name="nn.Embedding",
    call=lambda lib, a, kw: lib.nn.Embedding(a["weight"], index_policy=a["index_policy"])(a["indices"], **kw),
    valid=_embedding_fuzz_valid(),
    params={"weight": _ARRAY, "indices": _ARRAY,
            "index_policy": FuzzParam(values=(*_POLICIES, "wrap", "", "CHECK", None, 0, True))},
    expect=_embedding_fuzz_expect,
    where=("Embedding",),
    from_case=lambda a, p: {"weight": a["weight"], "index_policy": p["index_policy"], "indices": a["indices"]},
    fixup=_embedding_fuzz_fixup,
    pinned=(
        {"weight": _fuzz_zeros((0, 3), "float32"), "index_policy": "clip", "indices": _fuzz_zeros((2,), "int32")},
        {"weight": _fuzz_zeros((2, 5), "float32"), "index_policy": Foreign(np.zeros(3, np.float32)),
         "indices": _fuzz_zeros((2,), "int32")},
        {"weight": _fuzz_zeros((3, 2), "float32"), "index_policy": "check",
         "indices": Arr(np.array([2**31 - 1, -1], np.int32), "int32")},
    ),
)


EMBEDDING = OpRecord(
    name="nn.embedding",
    api=("nn.Embedding",),
    entry_points=(EMBEDDING_FUZZ,),
    call=_embedding_call,
    cases=_embedding_cases,
    tolerance=constant(EXACT),
    edge_cases=(
        EdgeCase(Case({"weight": _W, "indices": np.array([3, 0, 3], np.int32)}, label="rows by index")),
        EdgeCase(Case({"weight": _W, "indices": np.array([9, -2], np.int32)}, {"index_policy": "clip"},
                      label="clip mode clamps into [0, n-1]")),
    ),
    errors=(
        ErrorCase("index == num_embeddings",
                  Case({"weight": _W, "indices": np.array([4], np.int32)}), IndexError),
        ErrorCase("negative index",
                  Case({"weight": _W, "indices": np.array([-1], np.int32)}), IndexError),
        ErrorCase("index 2**31 - 1 (crashed the interpreter through mx.take)",
                  Case({"weight": _W, "indices": np.array([2**31 - 1], np.int32)}), IndexError),
        ErrorCase("float indices",
                  Case({"weight": _W, "indices": np.array([1.0], np.float32)}), TypeError),
        ErrorCase("unknown index policy",
                  Case({"weight": _W, "indices": np.array([1], np.int32)}, {"index_policy": "wrap"}),
                  ValueError),
    ),
    mutants=(
        Mutant("off_by_one", "reads row i + 1", _mutant_off_by_one),
        Mutant("reversed_rows", "reads the table upside down", _mutant_reversed_rows),
    ),
    bench=(
        BenchCase("decode", lambda: Case({"weight": fill((32000, 4096), "normal", "float32", 0),
                                          "indices": index_array((1, 1), 32000, 1)}),
                  note="vocab 32000 x 4096, one token"),
        BenchCase("prefill", lambda: Case({"weight": fill((32000, 4096), "normal", "float32", 0),
                                           "indices": index_array((1, 2048), 32000, 1)}),
                  note="vocab 32000 x 4096, 2048 tokens"),
    ),
)


# ---- nn.repeat_kv -------------------------------------------------------------------

def _repeat_kv_call(lib, a, p, kw):
    return lib.nn.repeat_kv(a["x"], p["repeats"], **kw)


@st.composite
def _repeat_kv_cases(draw, dtype, mode):
    b = draw(st.sampled_from((1, 2)), label="batch")
    kv = draw(st.sampled_from((1, 2, 4)), label="kv_heads")
    s = draw(st.sampled_from((1, 3, 16)), label="seq")
    d = draw(st.sampled_from((1, 8, 64)), label="head_dim")
    repeats = draw(st.sampled_from((1, 2, 4, 8)), label="repeats")
    return Case({"x": draw(arrays((b, kv, s, d), dtype, profiles=("normal", "special"), label="x"))},
                {"repeats": repeats})


def _mutant_tiled(lib, a, p, kw):
    return mx.concatenate([a["x"]] * p["repeats"], axis=1)  # kv0, kv1, kv0, kv1: wrong order


def _mutant_repeat_seq(lib, a, p, kw):
    x = a["x"]
    y = mx.repeat(x, p["repeats"], axis=2)
    return y.reshape(x.shape[0], x.shape[1] * p["repeats"], x.shape[2], x.shape[3])


# ---- fuzz entry point (conformance.fuzz) ----

@st.composite
def _repeat_kv_fuzz_valid(draw):
    shape = (draw(dims(0, 2)), draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 3)))
    return {"x": draw(arr(shape, draw(st.sampled_from(ALL_DTYPES)))), "repeats": draw(st.integers(1, 4))}


def _repeat_kv_fuzz_expect(a):
    b, h, s, d = shape_of(a["x"])
    return [FuzzOutput((b, h * int(a["repeats"]), s, d), a["x"].dtype)]


REPEAT_KV_FUZZ = FuzzEntry(
    name="nn.repeat_kv",
    call=lambda lib, a, kw: lib.nn.repeat_kv(a["x"], a["repeats"], **kw),
    valid=_repeat_kv_fuzz_valid(),
    params={"x": _ARRAY, "repeats": FuzzParam(values=(0, -1, 1, 2, 2**31, 2.0, True, None, "2", np.int32(2)))},
    expect=_repeat_kv_fuzz_expect,
    where=("repeat_kv",),
    from_case=lambda a, p: {"x": a["x"], "repeats": p["repeats"]},
    pinned=({"x": _fuzz_zeros((2, 1, 0, 0), "float32"), "repeats": 2**31},),
)


REPEAT_KV = OpRecord(
    name="nn.repeat_kv",
    api=("nn.repeat_kv",),
    entry_points=(REPEAT_KV_FUZZ,),
    call=_repeat_kv_call,
    cases=_repeat_kv_cases,
    tolerance=constant(EXACT),
    edge_cases=(
        EdgeCase(Case({"x": np.arange(4, dtype=np.float32).reshape(1, 2, 1, 2)}, {"repeats": 2},
                      label="kv0, kv0, kv1, kv1")),
    ),
    errors=(
        ErrorCase("repeats 0", Case({"x": np.ones((1, 2, 3, 4), np.float32)}, {"repeats": 0}), ValueError),
        ErrorCase("x not 4-D", Case({"x": np.ones((2, 3, 4), np.float32)}, {"repeats": 2}), ValueError),
        ErrorCase("repeats not an int", Case({"x": np.ones((1, 2, 3, 4), np.float32)}, {"repeats": 2.0}),
                  TypeError),
    ),
    mutants=(
        Mutant("tiled", "heads tiled (kv0, kv1, kv0, kv1) instead of repeated", _mutant_tiled),
        Mutant("repeated_along_sequence", "repeated along the sequence axis, then reshaped",
               _mutant_repeat_seq),
    ),
    bench=(
        BenchCase("prefill", lambda: Case({"x": fill((1, 8, 2048, 128), "normal", "float32", 0)},
                                          {"repeats": 4}),
                  note="8 kv heads -> 32 query heads, L = 2048, head dim 128"),
    ),
)


# ---- nn.apply_causal_mask / nn.apply_causal_mask_with_offset ------------------------

def _mask_call(lib, a, p, kw):
    if p["offset"] is None:
        return lib.nn.apply_causal_mask(a["scores"], **kw)
    return lib.nn.apply_causal_mask_with_offset(a["scores"], p["offset"], **kw)


@st.composite
def _mask_cases(draw, dtype, mode):
    b = draw(st.sampled_from((1, 2)), label="batch")
    h = draw(st.sampled_from((1, 3)), label="heads")
    lq = draw(st.sampled_from((1, 2, 5, 16)), label="Lq")
    if mode == "square":
        lk, offset = lq, None
    else:
        offset = draw(st.sampled_from((0, 1, 3, 17)), label="offset(cache_len)")
        lk = lq + offset
    scores = draw(arrays((b, h, lq, lk), dtype, profiles=("normal", "special", "large"), label="scores"))
    return Case({"scores": scores}, {"offset": offset})


def _mutant_upper_triangle(lib, a, p, kw):
    s = a["scores"]
    lq, lk = s.shape[-2:]
    keep = mx.triu(mx.ones((lq, lk), dtype=mx.bool_), k=0)
    return mx.where(keep, s, mx.array(-1e9, dtype=s.dtype))


def _mutant_mask_off_by_one(lib, a, p, kw):
    s = a["scores"]
    lq, lk = s.shape[-2:]
    keep = mx.tri(lq, lk, k=(p["offset"] or 0) - 1, dtype=mx.bool_)
    return mx.where(keep, s, mx.array(-1e9, dtype=s.dtype))


def _mutant_top_left(lib, a, p, kw):
    # Ollama's fallback: offset 0 uses the square mask, wrong when Lk > Lq.
    s = a["scores"]
    lq, lk = s.shape[-2:]
    keep = mx.tri(lq, lk, k=0, dtype=mx.bool_)
    return mx.where(keep, s, mx.array(-1e9, dtype=s.dtype))


def _mutant_float32_fill(lib, a, p, kw):
    # The original's promotion: a float32 -1e9 array turns half-precision scores float32.
    s = a["scores"]
    lq, lk = s.shape[-2:]
    keep = mx.tri(lq, lk, k=p["offset"] or 0, dtype=mx.bool_)
    return mx.where(keep, s, mx.array(-1e9, dtype=mx.float32))


# ---- fuzz entry points (conformance.fuzz) ----

@st.composite
def _square_scores_fuzz(draw):
    s = draw(dims(0, 4))
    return {"scores": draw(arr((draw(dims(0, 2)), draw(dims(0, 2)), s, s), draw(float_dtypes())))}


@st.composite
def _offset_scores_fuzz(draw):
    lq = draw(dims(0, 3))
    lk = lq + draw(dims(0, 3))
    scores = draw(arr((draw(dims(0, 2)), draw(dims(0, 2)), lq, lk), draw(float_dtypes())))
    return {"scores": scores, "offset": draw(st.integers(0, lk - lq))}


def _square_from_case(a, p):
    """The record's scores, cut to their first ``Lq`` keys (square) for the offset mode."""
    s = a["scores"]
    return {"scores": Arr(np.ascontiguousarray(s.data[..., : s.shape[-2]]), s.dtype)}


CAUSAL_MASK_FUZZ = (
    FuzzEntry(
        name="nn.apply_causal_mask",
        call=lambda lib, a, kw: lib.nn.apply_causal_mask(a["scores"], **kw),
        valid=_square_scores_fuzz(),
        params={"scores": _ARRAY},
        expect=same_as("scores"),
        where=("apply_causal_mask",),
        from_case=_square_from_case,
    ),
    FuzzEntry(
        name="nn.apply_causal_mask_with_offset",
        call=lambda lib, a, kw: lib.nn.apply_causal_mask_with_offset(a["scores"], a["offset"], **kw),
        valid=_offset_scores_fuzz(),
        params={"scores": _ARRAY,
                "offset": FuzzParam(values=(0, 1, -1, 5, 2**31 - 1, 2**63, 1.0, True, None, "0", np.int64(1)))},
        expect=same_as("scores"),
        where=("apply_causal_mask_with_offset",),
        from_case=lambda a, p: {"scores": a["scores"], "offset": p["offset"] or 0},
    ),
)


CAUSAL_MASK = OpRecord(
    name="nn.causal_mask",
    api=("nn.apply_causal_mask", "nn.apply_causal_mask_with_offset"),
    entry_points=CAUSAL_MASK_FUZZ,
    call=_mask_call,
    cases=_mask_cases,
    modes=("square", "offset"),
    tolerance=constant(EXACT),
    edge_cases=(
        EdgeCase(Case({"scores": np.zeros((1, 1, 2, 5), np.float32)}, {"offset": 3},
                      label="decode-style 2x5, offset 3: row 0 sees keys 0..3"), mode="offset"),
        EdgeCase(Case({"scores": np.zeros((1, 1, 2, 5), np.float32)}, {"offset": 0},
                      label="offset 0 with Lk > Lq (the original's broken fallback)"), mode="offset"),
    ),
    errors=(
        ErrorCase("non-square scores", Case({"scores": np.zeros((1, 1, 2, 3), np.float32)}, {"offset": None}),
                  ValueError),
        ErrorCase("negative offset", Case({"scores": np.zeros((1, 1, 2, 3), np.float32)}, {"offset": -1}),
                  ValueError),
        ErrorCase("scores not 4-D", Case({"scores": np.zeros((2, 2), np.float32)}, {"offset": None}),
                  ValueError),
    ),
    mutants=(
        Mutant("upper_triangle", "keeps the future instead of the past", _mutant_upper_triangle,
               mode="square"),
        Mutant("off_by_one", "hides the diagonal", _mutant_mask_off_by_one, mode="offset"),
        Mutant("top_left_alignment", "ignores the offset (top-left alignment)", _mutant_top_left,
               mode="offset"),
        Mutant("float32_fill", "fills with a float32 array, promoting half precision",
               _mutant_float32_fill, mode="offset", dtype="float16"),
    ),
    bench=(
        BenchCase("prefill", lambda: Case({"scores": fill((1, 32, 512, 512), "normal", "float32", 0)},
                                          {"offset": None}), mode="square",
                  note="32 heads, L = 512 (scores are L^2: 2048 would be 512 MiB)"),
    ),
)

RECORDS = (EMBEDDING, REPEAT_KV, CAUSAL_MASK)
