"""Records for the float projections: ``nn.Linear`` and ``nn.MultiLinear``."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from conformance.fuzz.inputs import (
    FLOAT_DTYPES,
    FuzzEntry,
    FuzzOutput,
    FuzzParam,
    arr,
    dims,
    float_dtypes,
    opt,
    shape_of,
    shapes,
)
from conformance.fuzz.inputs import constant_array as _fuzz_zeros
from conformance.record import BenchCase, Case, EdgeCase, ErrorCase, Mutant, OpRecord
from conformance.strategies import SMALL_FEATURES, arrays, batch_shape, fill, massive_activations
from conformance.tolerance import Tolerance, with_matmul_precision

# Dot products grow with K: keep "large" values K-fold away from overflow so a result
# that overflows is the op's real answer, not an artefact of the draw.
PROFILES = ("normal", "ints", "mixed", "tiny", "large", "special")


MATMUL_TOLERANCE = Tolerance(
    reason=(
        "A K-term dot product per output: BLAS libraries sum in different orders, so MLX may "
        "differ from the oracle by 2x PyTorch's error + 2 ulp, or by the worst case of a "
        "float32 K-term sum, gamma_K * (|x| @ |W|.T + |b|) (Higham §3.1), whichever is larger."
    ),
    accumulation_terms=lambda a, p: a["x"].shape[-1] + 1,
)


def _matmul_tolerance(backend: str, dtype: str) -> Tolerance:
    """MATMUL_TOLERANCE, with the TF32 input rounding admitted where MLX runs float32
    matmuls at TF32 (CUDA and M5-class Metal under MLX_ENABLE_TF32, see tolerance.py)."""
    return with_matmul_precision(MATMUL_TOLERANCE, backend, dtype)


def _linear_magnitude(a, p):
    mag = np.abs(a["x"]) @ np.abs(a["weight"]).T
    return mag + np.abs(a["bias"]) if "bias" in a else mag


def _multi_linear_magnitude(a, p):
    return np.abs(a["x"]) @ np.swapaxes(np.abs(a["weight"]), -1, -2)


def _linear_call(lib, a, p, kw):
    return lib.nn.Linear(a["weight"], a.get("bias"))(a["x"], **kw)


@st.composite
def _linear_cases(draw, dtype, mode):
    k = draw(st.sampled_from(SMALL_FEATURES), label="in_features")
    n = draw(st.sampled_from((1, 2, 5, 16, 33)), label="out_features")
    lead = draw(batch_shape(), label="batch")
    headroom = 4.0 * k
    found = {
        "x": draw(arrays((*lead, k), dtype, profiles=PROFILES, headroom=headroom ** 0.5, label="x")),
        "weight": draw(arrays((n, k), dtype, profiles=PROFILES, headroom=headroom ** 0.5, label="weight")),
    }
    if draw(st.booleans(), label="has_bias"):
        found["bias"] = draw(arrays((n,), dtype, profiles=PROFILES, label="bias"))
    return Case(found)


def _mutant_dropped_bias(lib, a, p, kw):
    return a["x"] @ a["weight"].T


def _mutant_half_accumulation(lib, a, p, kw):
    # An accidental downcast: the product computed in float16 whatever the input dtype.
    y = a["x"].astype(mx.float16) @ a["weight"].T.astype(mx.float16)
    y = y.astype(a["x"].dtype)
    return y + a["bias"] if "bias" in a else y


MASSIVE_DOWN_PROJ = Case(
    {"x": massive_activations((4, 1536), 11, ratio=200.0),
     "weight": (0.02 * fill((16, 1536), "normal", "float32", 12)).astype(np.float32)},
    label="a down projection's input (K = 1536): 3 channels 200x the rest, row 0 2000x (SmolLM2-135M's "
          "act(gate) * up reaches 2036x its median: conformance/strategies.py MASSIVE_RATIO)",
)
"""What a trained model's down projection reads; float32 and bfloat16 (float16's range is
the model's own concern: a 2000x channel times K-term sums)."""


def _bench_linear(m: int, k: int, n: int) -> Case:
    return Case({"x": fill((m, k), "normal", "float32", 0), "weight": fill((n, k), "normal", "float32", 1),
                 "bias": fill((n,), "normal", "float32", 2)})

# ---- fuzz entry points (conformance.fuzz) -------------------------------------------

_ARRAY = FuzzParam(array=True)


@st.composite
def _linear_fuzz_valid(draw):
    dt = draw(float_dtypes())
    n, k = draw(dims(0, 4)), draw(dims(0, 5))
    lead = draw(shapes(max_rank=3, max_elements=12))
    xdt = draw(st.sampled_from((dt, dt, dt, *FLOAT_DTYPES)))
    return {"weight": draw(arr((n, k), dt)), "bias": draw(opt(arr((n,), dt))), "x": draw(arr((*lead, k), xdt))}


def _linear_fuzz_call(lib, a, kw):
    return lib.nn.Linear(a["weight"], a["bias"])(a["x"], **kw)


def linear_fuzz_expect(a):
    """``x [..., K]`` through ``weight [N, K]`` gives ``[..., N]``."""
    return [FuzzOutput((*shape_of(a["x"])[:-1], shape_of(a["weight"])[0]))]


LINEAR_FUZZ = FuzzEntry(
    name="nn.Linear",
    call=_linear_fuzz_call,
    valid=_linear_fuzz_valid(),
    params={"x": _ARRAY, "weight": _ARRAY, "bias": _ARRAY},
    expect=linear_fuzz_expect,
    where=("Linear",),
    from_case=lambda a, p: {"weight": a["weight"], "bias": a.get("bias"), "x": a["x"]},
    pinned=(  # mx.addmm cannot reshape an empty batch with K = 0
        {"weight": _fuzz_zeros((3, 0), "float16"), "bias": _fuzz_zeros((3,), "float16"),
         "x": _fuzz_zeros((7, 0, 0), "bfloat16")},
    ),
)


LINEAR = OpRecord(
    name="nn.linear",
    api=("nn.Linear",),
    entry_points=(LINEAR_FUZZ,),
    call=_linear_call,
    cases=_linear_cases,
    tolerance=_matmul_tolerance,
    magnitude=_linear_magnitude,
    edge_cases=(
        EdgeCase(Case({"x": np.ones(3, np.float32),
                       "weight": np.array([[1, 2, 3], [4, 5, 6]], np.float32)}, label="known answer [6, 15]")),
        EdgeCase(MASSIVE_DOWN_PROJ, dtypes=("float32", "bfloat16")),
        EdgeCase(Case({"x": np.ones(3, np.float32),
                       "weight": np.array([[1, 2, 3], [4, 5, 6]], np.float32),
                       "bias": np.array([10, 20], np.float32)}, label="known answer with bias [16, 35]")),
    ),
    errors=(
        ErrorCase("input width differs from in_features",
                  Case({"x": np.ones((2, 4), np.float32), "weight": np.ones((3, 5), np.float32)}), ValueError),
        ErrorCase("bias length differs from out_features",
                  Case({"x": np.ones((2, 5), np.float32), "weight": np.ones((3, 5), np.float32),
                        "bias": np.ones(4, np.float32)}), ValueError),
        ErrorCase("weight is 1-D",
                  Case({"x": np.ones((2, 5), np.float32), "weight": np.ones(5, np.float32)}), ValueError),
        ErrorCase("integer input",
                  Case({"x": np.ones((2, 5), np.int32), "weight": np.ones((3, 5), np.float32)}), TypeError),
    ),
    mutants=(
        Mutant("dropped_bias", "the bias is never added", _mutant_dropped_bias),
        Mutant("half_accumulation", "the product is computed in float16", _mutant_half_accumulation),
    ),
    bench=(
        BenchCase("decode", lambda: _bench_linear(1, 4096, 4096), note="LLM decode, M = 1"),
        BenchCase("prefill", lambda: _bench_linear(2048, 4096, 4096), note="LLM prefill, hidden 4096",
                  cpu_make=lambda: _bench_linear(32, 4096, 4096), cpu_note="M = 32 on CPU"),
        BenchCase("dit", lambda: _bench_linear(4096, 3072, 3072), note="diffusion block, 4096 tokens x 3072",
                  cpu_make=lambda: _bench_linear(32, 3072, 3072), cpu_note="M = 32 on CPU"),
    ),
)


def _multi_linear_call(lib, a, p, kw):
    return lib.nn.MultiLinear(a["weight"])(a["x"], **kw)


@st.composite
def _multi_linear_cases(draw, dtype, mode):
    b = draw(st.sampled_from((1, 2)), label="batch")
    h = draw(st.sampled_from((1, 2, 4)), label="heads")
    seq = draw(st.sampled_from((1, 3, 16)), label="seq")
    k = draw(st.sampled_from(SMALL_FEATURES), label="in_features")
    n = draw(st.sampled_from((1, 3, 16, 33)), label="out_features")
    return Case({
        "x": draw(arrays((b, h, seq, k), dtype, profiles=PROFILES, headroom=(4.0 * k) ** 0.5, label="x")),
        "weight": draw(arrays((h, n, k), dtype, profiles=PROFILES, headroom=(4.0 * k) ** 0.5, label="weight")),
    })


def _mutant_first_head_only(lib, a, p, kw):
    return a["x"] @ mx.swapaxes(a["weight"][:1], -1, -2)


def _mutant_weight_not_transposed(lib, a, p, kw):
    # Reads weight as [heads, in, out]: wrong values when square, a crash otherwise.
    w = a["weight"]
    return a["x"] @ w.reshape(w.shape[0], w.shape[2], w.shape[1])

@st.composite
def _multi_linear_fuzz_valid(draw):
    dt = draw(float_dtypes())
    h, n, k, b, seq = draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 2)), draw(dims(0, 3))
    return {"weight": draw(arr((h, n, k), dt)), "x": draw(arr((b, h, seq, k), dt))}


def _multi_linear_fuzz_expect(a):
    b, h, seq, _ = shape_of(a["x"])
    return [FuzzOutput((b, h, seq, shape_of(a["weight"])[1]))]


MULTI_LINEAR_FUZZ = FuzzEntry(
    name="nn.MultiLinear",
    call=lambda lib, a, kw: lib.nn.MultiLinear(a["weight"])(a["x"], **kw),
    valid=_multi_linear_fuzz_valid(),
    params={"x": _ARRAY, "weight": _ARRAY},
    expect=_multi_linear_fuzz_expect,
    where=("MultiLinear",),
    from_case=lambda a, p: {"weight": a["weight"], "x": a["x"]},
)


MULTI_LINEAR = OpRecord(
    name="nn.multi_linear",
    api=("nn.MultiLinear",),
    entry_points=(MULTI_LINEAR_FUZZ,),
    call=_multi_linear_call,
    cases=_multi_linear_cases,
    tolerance=_matmul_tolerance,
    magnitude=_multi_linear_magnitude,
    errors=(
        ErrorCase("heads differ",
                  Case({"x": np.ones((1, 3, 2, 4), np.float32), "weight": np.ones((2, 5, 4), np.float32)}),
                  ValueError),
        ErrorCase("in_features differ",
                  Case({"x": np.ones((1, 2, 2, 3), np.float32), "weight": np.ones((2, 5, 4), np.float32)}),
                  ValueError),
    ),
    mutants=(
        Mutant("first_head_only", "every head uses head 0's weight", _mutant_first_head_only),
        Mutant("weight_not_transposed", "weight read as [heads, in, out]", _mutant_weight_not_transposed),
    ),
    bench=(
        BenchCase("decode", lambda: Case({"x": fill((1, 32, 1, 128), "normal", "float32", 0),
                                          "weight": fill((32, 512, 128), "normal", "float32", 1)}),
                  note="per-head projection at decode (32 heads, 128 -> 512)"),
    ),
)

RECORDS = (LINEAR, MULTI_LINEAR)
