"""The conformance record of the user's DyT layer: what ``python -m conformance run`` needs.

Registered by the entry point in ``pyproject.toml`` (group ``mlx_conformance.records``) or
named with ``--records user_layers.records``. The harness then checks, in float32, float16
and bfloat16: MLX's DyT against the PyTorch reference in the same dtype (the peer) and in
float64 (the oracle), under :data:`DYT_TOLERANCE`; that both refuse every error case with a
bracketed message; that every mutant is caught; and it benchmarks the layer.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from hypothesis import strategies as st

from conformance.plugins import library_call
from conformance.record import BenchCase, Case, ErrorCase, Mutant, OpRecord, constant
from conformance.strategies import SMALL_FEATURES, arrays
from conformance.tolerance import Tolerance
from user_layers import mlx_layers, torch_layers

VALUE_PROFILES = ("normal", "ints", "mixed", "tiny", "subnormal", "large", "special")
PARAM_PROFILES = ("normal", "ints", "mixed")


def _mlx_dyt(a, p):
    return mlx_layers.DyT(a["alpha"], a["weight"], a["bias"])(a["x"])


def _torch_dyt(a, p, kw):
    return torch_layers.DyT(a["alpha"], a["weight"], a["bias"])(a["x"], **kw)


@st.composite
def dyt_cases(draw, dtype, mode):
    """Rows of widths that hit kernel tails (and one long row), values from subnormal to
    near overflow with NaN/inf planted, and parameters of ordinary and integer values."""
    d = draw(st.sampled_from((*SMALL_FEATURES, 4099)), label="features")
    lead = draw(st.sampled_from(((), (1,), (3,), (2, 3))), label="rows")
    return Case({
        "x": draw(arrays((*lead, d), dtype, profiles=VALUE_PROFILES, label="x")),
        "alpha": draw(arrays((1,), dtype, profiles=PARAM_PROFILES, label="alpha")),
        "weight": draw(arrays((d,), dtype, profiles=PARAM_PROFILES, label="weight")),
        "bias": draw(arrays((d,), dtype, profiles=PARAM_PROFILES, label="bias")),
    })


DYT_TOLERANCE = Tolerance(
    reason=(
        "Elementwise: alpha * x, tanh, the weight multiply and the bias add each round once "
        "to the output dtype, at the same points in MLX and the PyTorch peer. MLX's CPU "
        "tanh is within 2 float32 ulps of the correctly rounded value (measured 1.97 over "
        "2.2e5 points in [-20, 20] and 1e-30..10), PyTorch's within 0.51; the default bound "
        "(2x the peer's error + 2 ulps of the output) covers that difference."
    ),
)


def _ones(*shape):
    return np.ones(shape, np.float32)


def _bench_case():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 128, 4096)).astype(np.float32)
    return Case({"x": x, "alpha": np.full(1, 0.5, np.float32), "weight": _ones(4096), "bias": _ones(4096)})


DYT = OpRecord(
    name="user_layers.dyt",
    api=("user_layers.DyT",),
    call=library_call(_mlx_dyt, _torch_dyt),
    cases=dyt_cases,
    tolerance=constant(DYT_TOLERANCE),
    errors=(
        ErrorCase("input width differs from the weight",
                  Case({"x": _ones(2, 4), "alpha": _ones(1), "weight": _ones(3), "bias": _ones(3)}),
                  ValueError),
        ErrorCase("alpha is not one value",
                  Case({"x": _ones(2, 4), "alpha": _ones(2), "weight": _ones(4), "bias": _ones(4)}),
                  ValueError),
        ErrorCase("integer input",
                  Case({"x": np.ones((2, 4), np.int32), "alpha": _ones(1), "weight": _ones(4),
                        "bias": _ones(4)}),
                  TypeError),
    ),
    mutants=(
        Mutant("alpha_ignored", "tanh(x): the learned scale is dropped",
               lambda lib, a, p, kw: a["weight"] * mx.tanh(a["x"]) + a["bias"]),
        Mutant("bias_inside_tanh", "weight * tanh(alpha * x + bias)",
               lambda lib, a, p, kw: a["weight"] * mx.tanh(a["alpha"] * a["x"] + a["bias"])),
        Mutant("hard_clip", "tanh replaced by clipping to [-1, 1] (its linearisation)",
               lambda lib, a, p, kw: a["weight"] * mx.clip(a["alpha"] * a["x"], -1.0, 1.0) + a["bias"]),
    ),
    bench=(BenchCase("hidden_4096", _bench_case, note="one 128-token chunk of a 4096-wide model"),),
    notes="A user's layer registered from outside the project (tests/plugin_example).",
)


RECORDS = (DYT,)
