"""Fuzzing every public entry point of ``mlx_impl`` and ``torch_reference``.

The contract under test (issue 5): whatever it is given, a public call either returns a
result of the documented shape (and a floating dtype where the op computes) or raises
``ValueError``, ``TypeError`` or ``IndexError`` whose message starts with the op's name in
brackets, ``[Op] ...``; it never raises anything else and never kills the interpreter.
Both libraries are held to it, and to each other: they must accept and refuse the same
inputs and agree on the result's shape and dtype. Refusing with different exception types
is recorded as a note, not a failure: it is nearly always an input with several faults that
the twins check in a different order (the records' error cases pin single faults' types).

Hypothesis draws ARBITRARY inputs, mostly wrong and sometimes right: for each entry
point a valid input (consistent shapes, supported formats) is drawn and then 0 to 3
mutations are applied (a dtype changed, a dim changed or zeroed, the rank changed, an
argument replaced by junk: ``None``, a string, a NumPy array, a Python scalar of the wrong
type, a boundary value), or every argument is drawn at random. Arrays have rank 0-5 and
sizes 0-9 (zero-size dims included), at most :data:`MAX_ELEMENTS` elements (quantized
weights need a whole group of 32 to 128 values, so those get :data:`MAX_QUANT_ELEMENTS`),
in float32, float16, bfloat16, float64, int32, uint32, uint8 and bool. Before the
Hypothesis examples, each entry point also gets its :data:`PINNED` inputs: the ones that
once broke the contract, so those classes stay caught whatever Hypothesis draws.

Crash isolation: the fuzzing runs in a child process (``python -m conformance.fuzz``).
Before every library call the child atomically replaces a small file with the entry
point, the library and the full input; if MLX segfaults, aborts or hangs, the parent
(:func:`run_fuzz`) reports that exact input as a crash, then restarts the child with the
crashing input on a skip list so the rest of the budget still runs.

``nn.Embedding(index_policy="trusted")`` is only given in-range indices: that policy's
documented contract is that the caller guarantees them, and out-of-range indices are
undefined behaviour there by design (``"check"`` and ``"clip"`` get every index).

Run it: ``python -m conformance.fuzz --examples 60 --profile ci --json out.json`` runs the
child directly (no crash recovery); ``python -m conformance.fuzz --supervise ...`` runs it
under the parent. ``tests/test_fuzz.py`` and ``python -m conformance run`` use
:func:`run_fuzz`.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

SCHEMA = "mlx-conformance-fuzz/1"
ROOT = Path(__file__).resolve().parent.parent

FUZZ_EXAMPLES = {"ci": 100, "dev": 40, "thorough": 1000}
"""Hypothesis examples per entry point for each profile (``ci`` fits the CI budget)."""

MAX_ELEMENTS = 64
MAX_QUANT_ELEMENTS = 256
MAX_CRASHES_PER_ENTRY = 3
CHECKPOINT_EVERY = 20
"""The child rewrites its counts every this many inputs, so an entry point abandoned after
crashes still reports how many inputs it tried."""
SELFTEST_ENV = "CONFORMANCE_FUZZ_SELFTEST"

MUTATIONS = (0, 0, 0, 1, 1, 1, 2, 3)
"""How many arguments of a valid input get corrupted (3 in 8 inputs stay valid)."""
GROUPS_PER_ROW = (1, 2, 1, 2, 1, 0)
"""Quantization groups per row: 0 (an empty weight) in 1 draw of 6."""

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
OTHER_DTYPES = ("int32", "uint32", "uint8", "bool", "float64")
ALL_DTYPES = FLOAT_DTYPES + OTHER_DTYPES
INT_DTYPES = ("int32", "uint32", "uint8")
DOCUMENTED_ERRORS = (ValueError, TypeError, IndexError)
QUANT_MODES = ("affine", "nvfp4", "mxfp4", "mxfp8")
FP_FORMATS = {"nvfp4": (16, 4), "mxfp4": (32, 4), "mxfp8": (32, 8)}


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, eq=False)
class Arr:
    """A library-neutral array: NumPy data (floats as float32, or float64) and a dtype name."""

    data: np.ndarray
    dtype: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def __repr__(self) -> str:
        head = f"{self.dtype}{list(self.shape)}"
        if self.data.size <= MAX_QUANT_ELEMENTS:  # every array the strategies draw: exact
            return f"{head}={_values(self.data)}"
        digest = hashlib.sha1(np.ascontiguousarray(self.data).tobytes()).hexdigest()[:10]
        return f"{head}#sha1:{digest}"


@dataclass(frozen=True)
class DType:
    """A dtype argument (``dequantize(dtype=...)``): ``mx.<name>`` or ``torch.<name>``."""

    name: str

    def __repr__(self) -> str:
        return f"<dtype {self.name}>"


@dataclass(frozen=True, eq=False)
class Foreign:
    """A NumPy array passed where a library array is expected (must be refused)."""

    data: np.ndarray

    def __repr__(self) -> str:
        return f"numpy.{self.data.dtype}{list(self.data.shape)}"


def _values(data: np.ndarray) -> str:
    flat = data.reshape(-1)
    if data.dtype.kind == "f":
        return "[" + ",".join(f"{float(v):g}" for v in flat) + "]"
    return "[" + ",".join(str(int(v)) for v in flat) + "]"


def describe(args: Mapping[str, Any]) -> str:
    """Every argument, exactly enough to rebuild the input (values of small arrays)."""
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def make_data(shape: Sequence[int], dtype: str, seed: int, profile: str) -> np.ndarray:
    """Deterministic contents: small half-integers (exact in every float dtype), with
    NaN/inf/-0 planted for ``special``; integers small, extreme (``wide``) or full-width
    random words (``bits``, for packed weights and scale codes)."""
    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in shape)
    if dtype == "bool":
        return rng.random(size) < 0.5
    if dtype in INT_DTYPES:
        info = np.iinfo(np.dtype(dtype))
        if profile == "bits":
            return rng.integers(
                int(info.min), int(info.max), size, dtype=np.dtype(dtype), endpoint=True
            )
        if profile == "wide":
            pool = sorted(
                {
                    int(info.min),
                    int(info.max),
                    0,
                    1,
                    2**31 - 1 if info.max >= 2**31 - 1 else 255,
                    -1 if info.min < 0 else 7,
                    100,
                    255,
                }
            )
            pool = [p for p in pool if info.min <= p <= info.max]
            return rng.choice(np.array(pool, dtype=np.int64), size).astype(dtype)
        return rng.integers(0, 8, size).astype(dtype)
    out = rng.integers(-8, 9, size).astype(np.float64) / 2.0
    if profile == "special" and out.size:
        specials = np.array([np.nan, np.inf, -np.inf, -0.0, 65536.0, 1e-30])
        mask = rng.random(size) < 0.3
        out = np.where(mask, rng.choice(specials, size), out)
    return out.astype(np.float64 if dtype == "float64" else np.float32)


# --------------------------------------------------------------------------- strategies


@st.composite
def arr(draw: st.DrawFn, shape: Sequence[int], dtype: str, profiles: Sequence[str] = ()) -> Arr:
    """An array of ``shape`` and ``dtype`` with drawn contents."""
    if not profiles:
        profiles = ("bits",) if dtype == "uint32" else ("small", "small", "wide", "special")
    profile = draw(st.sampled_from(tuple(profiles)))
    seed = draw(st.integers(0, 2**16))
    return Arr(make_data(shape, dtype, seed, profile), dtype)


@st.composite
def shapes(
    draw: st.DrawFn, min_rank: int = 0, max_rank: int = 5, max_elements: int = MAX_ELEMENTS
) -> tuple[int, ...]:
    """Rank ``min_rank..max_rank``, dims 0-9, at most ``max_elements`` elements."""
    rank = draw(st.integers(min_rank, max_rank))
    dims: list[int] = []
    for _ in range(rank):
        prod = math.prod(dims) if dims else 1
        high = min(9, max_elements // max(prod, 1))
        dims.append(draw(st.sampled_from((*range(1, high + 1), 0))))
    return tuple(dims)


def float_dtypes() -> st.SearchStrategy[str]:
    return st.sampled_from(FLOAT_DTYPES)


def dims(low: int = 0, high: int = 4) -> st.SearchStrategy[int]:
    """A size in ``low..high``; 0 (when allowed) is drawn about as often as each other size,
    not as often as Hypothesis's bias towards small integers would draw it."""
    return st.sampled_from((*range(max(low, 1), high + 1), *((0,) if low == 0 else ())))


@st.composite
def any_arr(draw: st.DrawFn, dtypes: Sequence[str] = ALL_DTYPES) -> Arr:
    shape = draw(shapes())
    return draw(arr(shape, draw(st.sampled_from(tuple(dtypes)))))


JUNK: tuple[Any, ...] = (
    None,
    "x",
    "",
    "causal",
    0,
    1,
    -1,
    3,
    2**31 - 1,
    2**31,
    -(2**31),
    2**63,
    1.5,
    -0.5,
    0.0,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    1j,
    [1.0, 2.0],
    (2,),
    {"a": 1},
    b"x",
    np.int64(2),
    np.float32(0.5),
    np.bool_(True),
)
"""Values of the wrong type or at a boundary, tried wherever any argument goes."""


@st.composite
def junk(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(("scalar", "scalar", "array", "numpy")))
    if kind == "scalar":
        return draw(st.sampled_from(JUNK))
    if kind == "array":
        return draw(any_arr())
    return Foreign(
        make_data(draw(shapes(max_rank=3)), "float32", draw(st.integers(0, 99)), "small")
    )


@st.composite
def mutated_array(draw: st.DrawFn, value: Any) -> Any:
    """A plausible corruption of an array argument."""
    if not isinstance(value, Arr):
        return draw(st.one_of(any_arr(), junk()))
    how = draw(
        st.sampled_from(("dtype", "dim", "zero_dim", "rank_up", "rank_down", "random", "junk"))
    )
    shape = list(value.shape)
    if how == "dtype":
        return draw(arr(value.shape, draw(st.sampled_from(ALL_DTYPES))))
    if how in ("dim", "zero_dim") and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = 0 if how == "zero_dim" else draw(st.integers(0, 9))
    elif how == "rank_up" or (how in ("dim", "zero_dim") and not shape):
        shape.insert(draw(st.integers(0, len(shape))), draw(st.integers(0, 3)))
    elif how == "rank_down" and shape:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif how == "random":
        return draw(any_arr())
    elif how == "junk":
        return draw(junk())
    if math.prod(shape) > MAX_QUANT_ELEMENTS:
        return draw(any_arr())
    return draw(arr(tuple(shape), value.dtype))


@dataclass(frozen=True)
class Param:
    """How to corrupt one argument: as an array, or by the given interesting values."""

    array: bool = False
    values: tuple[Any, ...] = ()
    extra: Callable[[dict[str, Any]], st.SearchStrategy[Any]] | None = None


@st.composite
def mutated(
    draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]], params: Mapping[str, Param]
) -> dict[str, Any]:
    """A valid input with 0-3 arguments corrupted, or (1 in 8) every argument random."""
    args = dict(draw(valid))
    names = sorted(params)
    if draw(st.integers(0, 7)) == 0:
        for name in names:
            args[name] = draw(
                st.one_of(any_arr(), junk(), st.sampled_from(params[name].values or (None,)))
            )
        return args
    for _ in range(draw(st.sampled_from(MUTATIONS))):
        name = draw(st.sampled_from(names))
        p = params[name]
        choices: list[st.SearchStrategy[Any]] = [junk()]
        if p.array:
            choices += [mutated_array(args[name])] * 4
        if p.values:
            choices += [st.sampled_from(p.values)] * 4
        if p.extra is not None:
            choices += [p.extra(args)] * 3
        args[name] = draw(st.one_of(*choices))
    return args


def _opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


# --------------------------------------------------------------------------- expected shapes


@dataclass(frozen=True)
class Out:
    """What one output must be: its shape, and ``"floating"``, a dtype name, or ``None``
    for an output that must be ``None`` (the biases of an fp quantization)."""

    shape: tuple[int, ...] | None
    dtype: str | None = "floating"


def _shape(v: Any) -> tuple[int, ...]:
    assert isinstance(v, Arr), f"expected an array argument but got {v!r}"
    return v.shape


def _same_as(name: str) -> Callable[[dict[str, Any]], list[Out]]:
    return lambda a: [Out(_shape(a[name]))]


# --------------------------------------------------------------------------- entry points


Call = Callable[[ModuleType, dict[str, Any], dict[str, Any]], Any]


@dataclass(frozen=True)
class EntryPoint:
    """One public entry point: how to call it on either library, what it is fed, what a
    success must look like, and the op names its error messages may carry in brackets."""

    name: str
    call: Call
    inputs: st.SearchStrategy[dict[str, Any]]
    expect: Callable[[dict[str, Any]], list[Out]]
    where: tuple[str, ...]
    fixup: Callable[[dict[str, Any]], dict[str, Any]] | None = None


EPS_VALUES = (
    0.0,
    1e-5,
    1.0,
    -1e-5,
    math.nan,
    math.inf,
    "1e-5",
    None,
    np.float32(1e-6),
    1,
    True,
    1e300,
)


# ---- linear family


@st.composite
def _linear_valid(draw: st.DrawFn) -> dict[str, Any]:
    dt = draw(float_dtypes())
    n, k = draw(dims(0, 4)), draw(dims(0, 5))
    lead = draw(shapes(max_rank=3, max_elements=12))
    xdt = draw(st.sampled_from((dt, dt, dt, *FLOAT_DTYPES)))
    return {
        "weight": draw(arr((n, k), dt)),
        "bias": draw(_opt(arr((n,), dt))),
        "x": draw(arr((*lead, k), xdt)),
    }


def _linear_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.Linear(a["weight"], a["bias"])(a["x"], **kw)


def _linear_expect(a: dict[str, Any]) -> list[Out]:
    return [Out((*_shape(a["x"])[:-1], _shape(a["weight"])[0]))]


@st.composite
def _multi_linear_valid(draw: st.DrawFn) -> dict[str, Any]:
    dt = draw(float_dtypes())
    h, n, k, b, seq = (
        draw(dims(0, 3)),
        draw(dims(0, 3)),
        draw(dims(0, 3)),
        draw(dims(0, 2)),
        draw(dims(0, 3)),
    )
    return {"weight": draw(arr((h, n, k), dt)), "x": draw(arr((b, h, seq, k), dt))}


def _multi_linear_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.MultiLinear(a["weight"])(a["x"], **kw)


def _multi_linear_expect(a: dict[str, Any]) -> list[Out]:
    b, h, seq, _ = _shape(a["x"])
    return [Out((b, h, seq, _shape(a["weight"])[1]))]


# ---- quantization family


GROUP_VALUES = (16, 32, 64, 128, 0, -32, 8, 33, 256, 64.0, None, "64", True)
BITS_VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 0, -4, 9, 16, 32, 4.0, None, "4", True)
MODE_VALUES = (*QUANT_MODES, "int4", "AFFINE", "", "fp8", None, 4, "nvfp4 ")


@st.composite
def _format(draw: st.DrawFn) -> tuple[int, int, str]:
    mode = draw(st.sampled_from(QUANT_MODES))
    if mode == "affine":
        return (
            draw(st.sampled_from((32, 32, 64, 128))),
            draw(st.sampled_from((1, 2, 3, 4, 5, 6, 8))),
            mode,
        )
    group, bits = FP_FORMATS[mode]
    return group, bits, mode


def _rows_for(k: int, mode: str, draw: st.DrawFn) -> int:
    most = max(1, MAX_QUANT_ELEMENTS // max(k, 1))
    n = draw(dims(0, min(4, most)))
    if mode == "nvfp4" and draw(st.booleans()):
        n = 2 * (n // 2)  # MLX's CPU nvfp4 packer needs a multiple of 32 elements
    return n


@st.composite
def _packed(
    draw: st.DrawFn, dt: str, group: int, bits: int, mode: str, rows: int, cols: int
) -> dict[str, Any]:
    """Random packed words and scale codes for a ``[rows, cols]`` weight (any bits decode)."""
    wq = draw(arr((rows, cols * bits // 32), "uint32", ("bits",)))
    if mode == "affine":
        scales = draw(arr((rows, cols // group), dt, ("small",)))
        biases = draw(arr((rows, cols // group), dt, ("small",)))
    else:
        scales, biases = draw(arr((rows, cols // group), "uint8", ("bits", "small"))), None
    return {"wq": wq, "scales": scales, "qbiases": biases}


FMT_PARAMS = {
    "group_size": Param(values=GROUP_VALUES),
    "bits": Param(values=BITS_VALUES),
    "mode": Param(values=MODE_VALUES),
}


def _fmt(a: Mapping[str, Any]) -> dict[str, Any]:
    return {"group_size": a["group_size"], "bits": a["bits"], "mode": a["mode"]}


@st.composite
def _quantize_valid(draw: st.DrawFn) -> dict[str, Any]:
    group, bits, mode = draw(_format())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    lead = draw(st.sampled_from(((), (), (), (1,), (2,))))
    if math.prod(lead) * n * k > MAX_QUANT_ELEMENTS:
        lead = ()
    gs = None
    if mode == "nvfp4" and draw(st.booleans()):
        gs = draw(arr(draw(st.sampled_from(((), (1,)))), "float32", ("small",)))
    return {
        "w": draw(arr((*lead, n, k), draw(float_dtypes()))),
        "group_size": group,
        "bits": bits,
        "mode": mode,
        "global_scale": gs,
    }


def _quantize_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.quantization.quantize(
        a["w"], a["group_size"], a["bits"], a["mode"], global_scale=a["global_scale"], **kw
    )


def _quantize_expect(a: dict[str, Any]) -> list[Out]:
    s = _shape(a["w"])
    k, group, bits = s[-1], int(a["group_size"]), int(a["bits"])
    grouped = (*s[:-1], k // group)
    affine = a["mode"] == "affine"
    return [
        Out((*s[:-1], k * bits // 32), "uint32"),
        Out(grouped, "floating" if affine else "uint8"),
        Out(grouped if affine else None, "floating" if affine else None),
    ]


@st.composite
def _dequantize_valid(draw: st.DrawFn) -> dict[str, Any]:
    group, bits, mode = draw(_format())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    found = draw(_packed(draw(float_dtypes()), group, bits, mode, n, k))
    gs = None
    if mode == "nvfp4" and draw(st.integers(0, 3)) == 0:
        gs = draw(arr((1,), "float32", ("small",)))
    dtype = draw(st.sampled_from((None, None, *(DType(d) for d in FLOAT_DTYPES))))
    return {
        **found,
        "group_size": group,
        "bits": bits,
        "mode": mode,
        "dtype": dtype,
        "global_scale": gs,
    }


def _dequantize_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.quantization.dequantize(
        a["wq"],
        a["scales"],
        a["qbiases"],
        a["group_size"],
        a["bits"],
        a["mode"],
        a["dtype"],
        global_scale=a["global_scale"],
        **kw,
    )


def _dequantize_expect(a: dict[str, Any]) -> list[Out]:
    s = _shape(a["wq"])
    return [Out((*s[:-1], s[-1] * 32 // int(a["bits"])))]


@st.composite
def _qmm_valid(draw: st.DrawFn) -> dict[str, Any]:
    group, bits, mode = draw(_format())
    dt = draw(float_dtypes())
    transpose = draw(st.sampled_from((True, True, False)))
    grouped = group * draw(st.sampled_from(GROUPS_PER_ROW))  # the unpacked (grouped) axis
    other = _rows_for(grouped, mode, draw)
    found = draw(_packed(dt, group, bits, mode, other, grouped))
    inner = grouped if transpose else other  # x @ W with W [K, N]: the packed rows are K
    lead = draw(st.sampled_from(((), (1,), (2,), (2, 1), (0,))))
    if math.prod(lead) * inner > MAX_QUANT_ELEMENTS:
        lead = (1,)
    x = draw(arr((*lead, inner), draw(st.sampled_from((dt, dt, *FLOAT_DTYPES)))))
    return {
        "x": x,
        **found,
        "transpose": transpose,
        "group_size": group,
        "bits": bits,
        "mode": mode,
    }


def _qmm_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.quantization.quantized_matmul(
        a["x"],
        a["wq"],
        a["scales"],
        a["qbiases"],
        a["transpose"],
        a["group_size"],
        a["bits"],
        a["mode"],
        **kw,
    )


def _qmm_expect(a: dict[str, Any]) -> list[Out]:
    x, w = _shape(a["x"]), _shape(a["wq"])
    n = w[-2] if a["transpose"] else w[-1] * 32 // int(a["bits"])
    batch = tuple(np.broadcast_shapes(x[:-2], w[:-2]))
    return [Out((*batch, *x[-2:-1], n))]


@st.composite
def _qlinear_valid(draw: st.DrawFn) -> dict[str, Any]:
    found = draw(_qmm_valid())
    found.pop("transpose")
    if found["x"].shape[-1] != found["scales"].shape[-1] * found["group_size"]:
        k = found["scales"].shape[-1] * found["group_size"]
        found["x"] = draw(arr((1, k), found["x"].dtype))
    n = found["wq"].shape[0]
    found["bias"] = draw(_opt(arr((n,), draw(float_dtypes()))))
    return found


def _qlinear_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    layer = lib.nn.QuantizedLinear(
        a["wq"], a["scales"], a["qbiases"], a["bias"], a["group_size"], a["bits"], a["mode"]
    )
    return layer(a["x"], **kw)


def _qlinear_expect(a: dict[str, Any]) -> list[Out]:
    return [Out((*_shape(a["x"])[:-1], _shape(a["wq"])[0]))]


@st.composite
def _from_float_valid(draw: st.DrawFn) -> dict[str, Any]:
    group, bits, mode = draw(_format())
    dt = draw(float_dtypes())
    k = group * draw(st.sampled_from(GROUPS_PER_ROW))
    n = _rows_for(k, mode, draw)
    lead = draw(st.sampled_from(((), (1,), (2,))))
    return {
        "weight": draw(arr((n, k), dt)),
        "bias": draw(_opt(arr((n,), dt))),
        "group_size": group,
        "bits": bits,
        "mode": mode,
        "x": draw(arr((*lead, k), dt)),
    }


def _from_float_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    layer = lib.nn.QuantizedLinear.from_float(
        a["weight"], a["bias"], a["group_size"], a["bits"], a["mode"]
    )
    return layer(a["x"], **kw)


def _to_quantized_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    layer = lib.nn.Linear(a["weight"], a["bias"]).to_quantized(
        a["group_size"], a["bits"], a["mode"]
    )
    return layer(a["x"], **kw)


# ---- norms


@st.composite
def _rows(draw: st.DrawFn, *, weight: str, bias: str) -> dict[str, Any]:
    """``x [..., D]`` with a ``[D]`` weight/bias: ``"yes"``, ``"no"`` or ``"optional"``."""
    dt = draw(float_dtypes())
    d = draw(dims(0, 6))
    lead = draw(shapes(max_rank=3, max_elements=10))
    found: dict[str, Any] = {"x": draw(arr((*lead, d), dt))}
    for name, rule in (("weight", weight), ("bias", bias)):
        if rule == "yes" or (rule == "optional" and draw(st.booleans())):
            found[name] = draw(arr((d,), draw(st.sampled_from((dt, dt, *FLOAT_DTYPES)))))
        elif rule == "optional":
            found[name] = None
    return found


@st.composite
def _nn_rms_valid(draw: st.DrawFn) -> dict[str, Any]:
    found = draw(_rows(weight="yes", bias="no"))
    return {
        **found,
        "stored_eps": draw(st.sampled_from((1e-5, 1e-6, 1.0))),
        "eps": draw(st.sampled_from((0.0, 1e-5, 1e-2))),
    }


def _nn_rms_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.RMSNorm(a["weight"], eps=a["stored_eps"])(a["x"], eps=a["eps"], **kw)


@st.composite
def _nn_ln_valid(draw: st.DrawFn) -> dict[str, Any]:
    found = draw(_rows(weight="yes", bias="optional"))
    return {**found, "eps": draw(st.sampled_from((0.0, 1e-5, 1e-2)))}


def _nn_ln_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.LayerNorm(a["weight"], a["bias"], eps=a["eps"])(a["x"], **kw)


@st.composite
def _fast_rms_valid(draw: st.DrawFn) -> dict[str, Any]:
    found = draw(_rows(weight="optional", bias="no"))
    return {**found, "eps": draw(st.sampled_from((0.0, 1e-5, 1e-2)))}


def _fast_rms_layer_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.RMSNorm(a["weight"])(a["x"], a["eps"], **kw)


def _fast_rms_fn_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.rms_norm(a["x"], a["weight"], a["eps"], **kw)


@st.composite
def _fast_ln_valid(draw: st.DrawFn) -> dict[str, Any]:
    found = draw(_rows(weight="optional", bias="optional"))
    return {**found, "eps": draw(st.sampled_from((0.0, 1e-5, 1e-2)))}


def _fast_ln_layer_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.LayerNorm(a["weight"], a["bias"])(a["x"], a["eps"], **kw)


def _fast_ln_fn_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.layer_norm(a["x"], a["weight"], a["bias"], a["eps"], **kw)


# ---- gather and masks


POLICIES = ("check", "clip", "trusted")


@st.composite
def _embedding_valid(draw: st.DrawFn) -> dict[str, Any]:
    n, d = draw(dims(0, 6)), draw(dims(0, 4))
    policy = draw(st.sampled_from(POLICIES))
    ishape = draw(shapes(max_rank=3, max_elements=12))
    idt = draw(st.sampled_from(INT_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.integers(0, max(n, 1), ishape)
    if policy != "trusted" and draw(st.booleans()) and values.size:
        bad = draw(st.sampled_from((n, n + 1, -1, -n - 1, 2**31 - 1, -(2**31), 255, 2**32 - 1)))
        values.reshape(-1)[draw(st.integers(0, values.size - 1))] = bad
    info = np.iinfo(np.dtype(idt))
    indices = Arr(np.clip(values, info.min, info.max).astype(idt), idt)
    return {
        "weight": draw(arr((n, d), draw(float_dtypes()))),
        "index_policy": policy,
        "indices": indices,
    }


def _embedding_fixup(a: dict[str, Any]) -> dict[str, Any]:
    """``trusted`` promises in-range indices: keep that promise (see the module docstring)."""
    w, idx = a.get("weight"), a.get("indices")
    if (
        a.get("index_policy") != "trusted"
        or not isinstance(idx, Arr)
        or idx.dtype not in INT_DTYPES
    ):
        return a
    n = w.shape[0] if isinstance(w, Arr) and w.ndim == 2 else 0
    if n == 0:
        values = np.zeros((0,), idx.data.dtype)  # no row is a valid index: only an empty lookup is
    else:
        values = np.mod(idx.data.astype(np.int64), n).astype(idx.data.dtype)
    return {**a, "indices": Arr(values, idx.dtype)}


def _embedding_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.Embedding(a["weight"], index_policy=a["index_policy"])(a["indices"], **kw)


def _embedding_expect(a: dict[str, Any]) -> list[Out]:
    assert _shape(a["weight"])[0] > 0 or a["indices"].data.size == 0, (
        "no row to look up in an empty table"
    )
    return [Out((*_shape(a["indices"]), _shape(a["weight"])[1]), a["weight"].dtype)]


@st.composite
def _repeat_kv_valid(draw: st.DrawFn) -> dict[str, Any]:
    shape = (draw(dims(0, 2)), draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 3)))
    return {
        "x": draw(arr(shape, draw(st.sampled_from(ALL_DTYPES)))),
        "repeats": draw(st.integers(1, 4)),
    }


def _repeat_kv_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.repeat_kv(a["x"], a["repeats"], **kw)


def _repeat_kv_expect(a: dict[str, Any]) -> list[Out]:
    b, h, s, d = _shape(a["x"])
    return [Out((b, h * int(a["repeats"]), s, d), a["x"].dtype)]


@st.composite
def _square_scores(draw: st.DrawFn) -> dict[str, Any]:
    s = draw(dims(0, 4))
    return {"scores": draw(arr((draw(dims(0, 2)), draw(dims(0, 2)), s, s), draw(float_dtypes())))}


def _causal_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.apply_causal_mask(a["scores"], **kw)


@st.composite
def _offset_scores(draw: st.DrawFn) -> dict[str, Any]:
    lq = draw(dims(0, 3))
    lk = lq + draw(dims(0, 3))
    scores = draw(arr((draw(dims(0, 2)), draw(dims(0, 2)), lq, lk), draw(float_dtypes())))
    return {"scores": scores, "offset": draw(st.integers(0, lk - lq))}


def _causal_offset_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.nn.apply_causal_mask_with_offset(a["scores"], a["offset"], **kw)


# ---- attention


MASK_STRINGS = ("causal", "Causal", "upper", "", "none", "causal ", "lower")


@st.composite
def _sdpa_valid(draw: st.DrawFn) -> dict[str, Any]:
    dt = draw(float_dtypes())
    b, hkv, ratio = draw(dims(0, 2)), draw(dims(1, 2)), draw(dims(1, 2))
    lq, lk, d, dv = draw(dims(0, 3)), draw(dims(0, 3)), draw(dims(0, 4)), draw(dims(0, 4))
    hq = hkv * ratio
    found: dict[str, Any] = {
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
        mshape = tuple(draw(st.sampled_from((1, s))) for s in full)[draw(st.integers(0, 4)) :]
        found["mask"] = draw(arr(mshape, "bool" if kind == "bool" else dt))
    found["sinks"] = draw(st.sampled_from((None, None, None, "yes")))
    if found["sinks"] == "yes":
        found["sinks"] = draw(arr((hq,), dt))
    return found


def _sdpa_mask_junk(a: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Masks of odd shapes and dtypes, and the strings that are not ``"causal"``."""
    return st.one_of(
        st.sampled_from(MASK_STRINGS),
        any_arr(),
        shapes(max_rank=5, max_elements=32).flatmap(lambda s: arr(s, "bool")),
    )


def _sdpa_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.scaled_dot_product_attention(
        a["q"], a["k"], a["v"], scale=a["scale"], mask=a["mask"], sinks=a["sinks"], **kw
    )


def _sdpa_expect(a: dict[str, Any]) -> list[Out]:
    b, hq, lq, _ = _shape(a["q"])
    return [Out((b, hq, lq, _shape(a["v"])[-1]))]


# ---- rope


@st.composite
def _rope_valid(draw: st.DrawFn) -> dict[str, Any]:
    dt = draw(float_dtypes())
    b, t, d = draw(dims(0, 2)), draw(dims(0, 3)), 2 * draw(dims(1, 4))
    shape = (b, t, d) if draw(st.booleans()) else (b, draw(dims(0, 2)), t, d)
    offset: Any = draw(st.sampled_from((0, 1, 17, 4096)))
    if draw(st.booleans()):
        offset = draw(
            arr(
                draw(st.sampled_from(((b,), (), (1,)))),
                draw(st.sampled_from(("int32", "int32", "uint32"))),
                ("small",),
            )
        )
    return {
        "x": draw(arr(shape, dt)),
        "dims": 2 * draw(st.integers(1, d // 2)),
        "traditional": draw(st.booleans()),
        "base": draw(st.sampled_from((10000.0, 10.0, 1e6))),
        "scale": draw(st.sampled_from((1.0, 0.5, 2.0))),
        "offset": offset,
    }


def _rope_offset_junk(a: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Negative, float and huge offsets, and offset arrays of the wrong length or dtype."""
    b = a["x"].shape[0] if isinstance(a.get("x"), Arr) and a["x"].ndim else 1
    return st.one_of(
        st.sampled_from((-1, 1.5, 2**31 - 1, 2**31, -(2**31), True, np.int64(3), "0", None)),
        st.sampled_from(((b + 1,), (b, 1), (0,), (2, b))).flatmap(lambda s: arr(s, "int32")),
        st.sampled_from(ALL_DTYPES).flatmap(lambda dt: arr((b,), dt)),
    )


def _rope_layer_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    layer = lib.fast.RoPE(a["dims"], traditional=a["traditional"], base=a["base"], scale=a["scale"])
    return layer(a["x"], offset=a["offset"], **kw)


def _rope_fn_call(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    return lib.fast.rope(
        a["x"],
        a["dims"],
        traditional=a["traditional"],
        base=a["base"],
        scale=a["scale"],
        offset=a["offset"],
        **kw,
    )


DIMS_VALUES = (0, -2, 1, 3, 7, 2, 4, 8, 16, 2**31, 4.0, None, "8", True)
REAL_VALUES = (
    10000.0,
    1.0,
    0.0,
    -1.0,
    -10000.0,
    math.nan,
    math.inf,
    1e-300,
    1e300,
    "10000",
    None,
    True,
    1j,
    5,
)


# ---- the table


def _entry(
    name: str,
    call: Call,
    valid: st.SearchStrategy[dict[str, Any]],
    params: Mapping[str, Param],
    expect: Callable[[dict[str, Any]], list[Out]],
    where: Sequence[str],
    fixup: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> EntryPoint:
    return EntryPoint(name, call, mutated(valid, params), expect, tuple(where), fixup)


A = Param(array=True)
_NORM_PARAMS = {"x": A, "weight": A, "eps": Param(values=EPS_VALUES)}
_QUANT_ARRAYS = {"wq": A, "scales": A, "qbiases": A}

ENTRY_POINTS: dict[str, EntryPoint] = {
    e.name: e
    for e in (
        _entry(
            "nn.Linear",
            _linear_call,
            _linear_valid(),
            {"x": A, "weight": A, "bias": A},
            _linear_expect,
            ("Linear",),
        ),
        _entry(
            "nn.Linear.to_quantized",
            _to_quantized_call,
            _from_float_valid(),
            {"x": A, "weight": A, "bias": A, **FMT_PARAMS},
            _linear_expect,
            ("Linear", "QuantizedLinear", "quantize"),
        ),
        _entry(
            "nn.QuantizedLinear",
            _qlinear_call,
            _qlinear_valid(),
            {"x": A, "bias": A, **_QUANT_ARRAYS, **FMT_PARAMS},
            _qlinear_expect,
            ("QuantizedLinear",),
        ),
        _entry(
            "nn.QuantizedLinear.from_float",
            _from_float_call,
            _from_float_valid(),
            {"x": A, "weight": A, "bias": A, **FMT_PARAMS},
            _linear_expect,
            ("QuantizedLinear", "quantize"),
        ),
        _entry(
            "nn.RMSNorm",
            _nn_rms_call,
            _nn_rms_valid(),
            {**_NORM_PARAMS, "stored_eps": Param(values=EPS_VALUES)},
            _same_as("x"),
            ("RMSNorm",),
        ),
        _entry(
            "nn.LayerNorm",
            _nn_ln_call,
            _nn_ln_valid(),
            {**_NORM_PARAMS, "bias": A},
            _same_as("x"),
            ("LayerNorm",),
        ),
        _entry(
            "nn.Embedding",
            _embedding_call,
            _embedding_valid(),
            {
                "weight": A,
                "indices": A,
                "index_policy": Param(values=(*POLICIES, "wrap", "", "CHECK", None, 0, True)),
            },
            _embedding_expect,
            ("Embedding",),
            _embedding_fixup,
        ),
        _entry(
            "nn.MultiLinear",
            _multi_linear_call,
            _multi_linear_valid(),
            {"x": A, "weight": A},
            _multi_linear_expect,
            ("MultiLinear",),
        ),
        _entry(
            "nn.repeat_kv",
            _repeat_kv_call,
            _repeat_kv_valid(),
            {
                "x": A,
                "repeats": Param(values=(0, -1, 1, 2, 2**31, 2.0, True, None, "2", np.int32(2))),
            },
            _repeat_kv_expect,
            ("repeat_kv",),
        ),
        _entry(
            "nn.apply_causal_mask",
            _causal_call,
            _square_scores(),
            {"scores": A},
            _same_as("scores"),
            ("apply_causal_mask",),
        ),
        _entry(
            "nn.apply_causal_mask_with_offset",
            _causal_offset_call,
            _offset_scores(),
            {
                "scores": A,
                "offset": Param(
                    values=(0, 1, -1, 5, 2**31 - 1, 2**63, 1.0, True, None, "0", np.int64(1))
                ),
            },
            _same_as("scores"),
            ("apply_causal_mask_with_offset",),
        ),
        _entry(
            "fast.scaled_dot_product_attention",
            _sdpa_call,
            _sdpa_valid(),
            {
                "q": A,
                "k": A,
                "v": A,
                "sinks": A,
                "mask": Param(array=True, extra=_sdpa_mask_junk),
                "scale": Param(values=REAL_VALUES),
            },
            _sdpa_expect,
            ("scaled_dot_product_attention",),
        ),
        _entry(
            "fast.RMSNorm",
            _fast_rms_layer_call,
            _fast_rms_valid(),
            _NORM_PARAMS,
            _same_as("x"),
            ("RMSNorm",),
        ),
        _entry(
            "fast.rms_norm",
            _fast_rms_fn_call,
            _fast_rms_valid(),
            _NORM_PARAMS,
            _same_as("x"),
            ("rms_norm",),
        ),
        _entry(
            "fast.LayerNorm",
            _fast_ln_layer_call,
            _fast_ln_valid(),
            {**_NORM_PARAMS, "bias": A},
            _same_as("x"),
            ("LayerNorm",),
        ),
        _entry(
            "fast.layer_norm",
            _fast_ln_fn_call,
            _fast_ln_valid(),
            {**_NORM_PARAMS, "bias": A},
            _same_as("x"),
            ("layer_norm",),
        ),
        *(
            _entry(
                name,
                call,
                _rope_valid(),
                {
                    "x": A,
                    "dims": Param(values=DIMS_VALUES),
                    "traditional": Param(values=(0, 1, None, "no")),
                    "base": Param(values=REAL_VALUES),
                    "scale": Param(values=REAL_VALUES),
                    "offset": Param(array=True, extra=_rope_offset_junk),
                },
                _same_as("x"),
                (where,),
            )
            for name, call, where in (
                ("fast.RoPE", _rope_layer_call, "RoPE"),
                ("fast.rope", _rope_fn_call, "rope"),
            )
        ),
        _entry(
            "quantization.quantize",
            _quantize_call,
            _quantize_valid(),
            {"w": A, "global_scale": A, **FMT_PARAMS},
            _quantize_expect,
            ("quantize",),
        ),
        _entry(
            "quantization.dequantize",
            _dequantize_call,
            _dequantize_valid(),
            {
                **_QUANT_ARRAYS,
                "global_scale": A,
                **FMT_PARAMS,
                "dtype": Param(values=(*(DType(d) for d in ALL_DTYPES), "float32", None, 0)),
            },
            _dequantize_expect,
            ("dequantize",),
        ),
        _entry(
            "quantization.quantized_matmul",
            _qmm_call,
            _qmm_valid(),
            {
                "x": A,
                **_QUANT_ARRAYS,
                **FMT_PARAMS,
                "transpose": Param(values=(True, False, None, 0, 1, "yes")),
            },
            _qmm_expect,
            ("quantized_matmul",),
        ),
    )
}
"""Every public entry point the fuzz drives, by the name a report shows."""


def _zeros(shape: tuple[int, ...], dtype: str, fill: float = 0.0) -> Arr:
    """A constant array (for the pinned inputs below)."""
    numpy_dtype = (
        np.float32 if dtype in FLOAT_DTYPES else np.dtype("bool" if dtype == "bool" else dtype)
    )
    return Arr(np.full(shape, fill, dtype=numpy_dtype), dtype)


def _affine_packed(rows: int, k: int) -> dict[str, Any]:
    return {
        "wq": _zeros((rows, k // 8), "uint32"),
        "scales": _zeros((rows, k // 32), "float32", 1.0),
        "qbiases": _zeros((rows, k // 32), "float32"),
    }


_QMM_FMT = {"group_size": 32, "bits": 4, "mode": "affine"}

PINNED: dict[str, tuple[dict[str, Any], ...]] = {
    "quantization.quantized_matmul": (
        {  # an array as ``transpose``: MLX's "[convert]" error / torch's RuntimeError
            "x": _zeros((1, 32), "float32"),
            **_affine_packed(2, 32),
            "transpose": _zeros((2,), "uint8"),
            **_QMM_FMT,
        },
        # mx.quantized_matmul 0.32.4 on CPU dies of SIGFPE when M, N or K is 0, in every mode.
        {"x": _zeros((0, 32), "float32"), **_affine_packed(2, 32), "transpose": True, **_QMM_FMT},
        {"x": _zeros((2, 32), "float32"), **_affine_packed(0, 32), "transpose": True, **_QMM_FMT},
        {
            "x": _zeros((2, 0), "float32"),
            "wq": _zeros((3, 0), "uint32"),
            "scales": _zeros((3, 0), "uint8"),
            "qbiases": None,
            "transpose": True,
            "group_size": 32,
            "bits": 8,
            "mode": "mxfp8",
        },
    ),
    "nn.QuantizedLinear": (
        {
            "x": _zeros((0, 32), "float32"),
            "wq": _zeros((2, 4), "uint32"),
            "scales": _zeros((2, 1), "uint8"),
            "qbiases": None,
            "bias": None,
            "group_size": 32,
            "bits": 4,
            "mode": "mxfp4",
        },
    ),
    "nn.Linear": (  # mx.addmm cannot reshape an empty batch with K = 0
        {
            "weight": _zeros((3, 0), "float16"),
            "bias": _zeros((3,), "float16"),
            "x": _zeros((7, 0, 0), "bfloat16"),
        },
    ),
    "nn.Embedding": (
        {
            "weight": _zeros((0, 3), "float32"),
            "index_policy": "clip",
            "indices": _zeros((2,), "int32"),
        },
        {
            "weight": _zeros((2, 5), "float32"),
            "index_policy": Foreign(np.zeros(3, np.float32)),
            "indices": _zeros((2,), "int32"),
        },
        {
            "weight": _zeros((3, 2), "float32"),
            "index_policy": "check",
            "indices": Arr(np.array([2**31 - 1, -1], np.int32), "int32"),
        },
    ),
    "fast.scaled_dot_product_attention": (  # no keys at all
        {
            "q": _zeros((1, 2, 2, 3), "float32"),
            "k": _zeros((1, 2, 0, 3), "float32"),
            "v": _zeros((1, 2, 0, 3), "float32"),
            "scale": 1.0,
            "mask": None,
            "sinks": None,
        },
    ),
    "quantization.dequantize": (  # nvfp4 with 16 elements (MLX's CPU path wants multiples of 32)
        {
            "wq": _zeros((1, 2), "uint32"),
            "scales": _zeros((1, 1), "uint8"),
            "qbiases": None,
            "group_size": 16,
            "bits": 4,
            "mode": "nvfp4",
            "dtype": None,
            "global_scale": None,
        },
    ),
    "nn.repeat_kv": ({"x": _zeros((2, 1, 0, 0), "float32"), "repeats": 2**31},),
    "fast.layer_norm": (  # float32 bias, bfloat16 x, no weight: which dtype comes out?
        {
            "x": _zeros((2, 4), "bfloat16"),
            "weight": None,
            "bias": _zeros((4,), "float32"),
            "eps": 1e-5,
        },
    ),
    "fast.rope": (
        {
            "x": _zeros((1, 2, 8), "float32"),
            "dims": 2,
            "traditional": False,
            "base": 1e-300,
            "scale": 1.0,
            "offset": 0,
        },
    ),
}
"""Inputs every run checks before the Hypothesis examples: each once broke the contract
(crashed the interpreter, or raised the wrong error) in one of the libraries, so the fuzz
keeps catching that class whatever sequence Hypothesis draws."""


def _selftest_crash(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    x = a["x"]
    if hasattr(x, "shape") and 0 in tuple(x.shape):
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)  # what an MLX kernel bug does to the process
    return x


def _selftest_misbehave(lib: ModuleType, a: dict[str, Any], kw: dict[str, Any]) -> Any:
    x, how = a["x"], a["how"]
    if how == "runtime":
        raise RuntimeError("an undocumented exception type")
    if how == "unbracketed":
        raise ValueError("a message without the op in brackets")
    if how == "shape":
        return x.reshape(-1)[:0]  # the wrong shape (empty 1-D), whatever x is
    return x


def selftest_entries() -> dict[str, EntryPoint]:
    """Entry points that break the contract on purpose, so ``tests/test_fuzz.py`` can prove
    the fuzz notices: one kills its process on a zero-size input, one raises undocumented
    errors and returns wrong shapes. Added to :data:`ENTRY_POINTS` only when the
    environment sets ``CONFORMANCE_FUZZ_SELFTEST=1``."""
    x_only = st.fixed_dictionaries({"x": any_arr(FLOAT_DTYPES)})
    misbehaving = st.fixed_dictionaries(
        {
            "x": any_arr(FLOAT_DTYPES),
            "how": st.sampled_from(("runtime", "unbracketed", "shape", "fine")),
        }
    )
    return {
        "selftest.crash": EntryPoint(
            "selftest.crash", _selftest_crash, x_only, _same_as("x"), ("selftest",)
        ),
        "selftest.misbehave": EntryPoint(
            "selftest.misbehave", _selftest_misbehave, misbehaving, _same_as("x"), ("selftest",)
        ),
    }


if os.environ.get(SELFTEST_ENV) == "1":
    ENTRY_POINTS.update(selftest_entries())


# --------------------------------------------------------------------------- the libraries


class Library:
    """One library under test: conversion of neutral inputs and the contract checks."""

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "mlx":
            import mlx.core as mx

            import mlx_impl

            self.module: ModuleType = mlx_impl
            self.kw: dict[str, Any] = {}
            self._mx = mx
            self._dtypes: dict[str, Any] = {
                d: getattr(mx, "bool_" if d == "bool" else d) for d in ALL_DTYPES
            }
        else:
            import torch

            import torch_reference

            self.module = torch_reference
            self.kw = {"precision": "native"}
            self._torch = torch
            self._dtypes = {d: getattr(torch, d) for d in ALL_DTYPES}

    def convert(self, value: Any) -> Any:
        """Neutral -> library: ``Arr`` to an array, ``DType`` to a dtype, the rest as is."""
        if isinstance(value, Arr):
            if self.name == "mlx":
                return self._mx.array(value.data).astype(self._dtypes[value.dtype])
            # np.array, not np.ascontiguousarray: the latter turns a 0-D array into 1-D.
            data = self._torch.from_numpy(np.array(value.data, order="C"))
            return data.to(self._dtypes[value.dtype])
        if isinstance(value, DType):
            return self._dtypes[value.name]
        if isinstance(value, Foreign):
            return value.data
        return value

    def is_array(self, value: Any) -> bool:
        if self.name == "mlx":
            return isinstance(value, self._mx.array)
        return isinstance(value, self._torch.Tensor)

    def dtype_name(self, value: Any) -> str:
        text = str(value.dtype)
        return text.removeprefix("mlx.core.").removeprefix("torch.").replace("bool_", "bool")

    def is_floating(self, value: Any) -> bool:
        return self.dtype_name(value) in (*FLOAT_DTYPES, "float64")

    def materialise(self, outputs: Sequence[Any]) -> None:
        """Force the computation (MLX is lazy: most kernel failures surface here)."""
        if self.name == "mlx":
            self._mx.eval(*[o for o in outputs if self.is_array(o)])


@dataclass
class Outcome:
    """What one library did with one input."""

    status: str  # "accepted", "refused" or "violation"
    exc_type: str = ""
    detail: str = ""
    shapes: tuple[Any, ...] = ()
    dtypes: tuple[str, ...] = ()
    kind: str = ""


_BRACKET = re.compile(r"^\[([^\]\n]+)\]\s")


def run_one(entry: EntryPoint, lib: Library, args: dict[str, Any]) -> Outcome:
    """Call ``entry`` on ``lib`` and judge the result against the contract."""
    converted = {k: lib.convert(v) for k, v in args.items()}
    stage = "call"
    try:
        out = entry.call(lib.module, converted, dict(lib.kw))
        outputs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        stage = "eval"
        lib.materialise(outputs)
    except DOCUMENTED_ERRORS as exc:
        msg = str(exc)
        if stage == "eval":
            return Outcome(
                "violation",
                type(exc).__name__,
                msg[:400],
                kind="raised while evaluating (not validated)",
            )
        m = _BRACKET.match(msg)
        if m is None:
            return Outcome("violation", type(exc).__name__, msg[:400], kind="message not bracketed")
        if m.group(1) not in entry.where:
            return Outcome(
                "violation",
                type(exc).__name__,
                msg[:400],
                kind=f"bracket names {m.group(1)!r}, not {'/'.join(entry.where)}",
            )
        return Outcome("refused", type(exc).__name__, msg[:200])
    except Exception as exc:
        return Outcome(
            "violation",
            type(exc).__name__,
            str(exc)[:400],
            kind=f"undocumented exception ({stage})",
        )
    try:
        expected = entry.expect(args)
    except Exception as exc:  # the input makes no sense, yet the call succeeded
        return Outcome(
            "violation",
            "",
            f"{type(exc).__name__}: {exc}",
            kind="accepted an input with no defined result",
        )
    got_shapes = tuple(
        tuple(int(d) for d in o.shape) if lib.is_array(o) else repr(o)[:40] for o in outputs
    )
    got_dtypes = tuple(lib.dtype_name(o) if lib.is_array(o) else type(o).__name__ for o in outputs)
    problems = []
    if len(outputs) != len(expected):
        problems.append(f"{len(outputs)} outputs, expected {len(expected)}")
    for i, (o, want) in enumerate(zip(outputs, expected, strict=False)):
        if want.dtype is None:
            if o is not None:
                problems.append(f"output {i} should be None but is {got_dtypes[i]}")
            continue
        if not lib.is_array(o):
            problems.append(f"output {i} is a {type(o).__name__}, not an array")
            continue
        if got_shapes[i] != want.shape:
            problems.append(f"output {i} has shape {got_shapes[i]}, expected {want.shape}")
        if want.dtype == "floating" and not lib.is_floating(o):
            problems.append(f"output {i} has dtype {got_dtypes[i]}, expected a floating dtype")
        elif want.dtype not in ("floating", None) and got_dtypes[i] != want.dtype:
            problems.append(f"output {i} has dtype {got_dtypes[i]}, expected {want.dtype}")
    if problems:
        return Outcome(
            "violation", "", "; ".join(problems), got_shapes, got_dtypes, kind="wrong result"
        )
    return Outcome("accepted", shapes=got_shapes, dtypes=got_dtypes)


# --------------------------------------------------------------------------- the child


@dataclass
class EntryStats:
    """Counts for one entry point."""

    inputs: int = 0
    crashed: int = 0
    disagreements: int = 0
    type_mismatches: int = 0
    libraries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lib(self, name: str) -> dict[str, Any]:
        return self.libraries.setdefault(
            name, {"accepted": 0, "refused": 0, "violations": 0, "refused_by": {}}
        )


class Fuzzer:
    """Runs the entry points under Hypothesis, recording counts and violations."""

    def __init__(self, current: Path | None, skip: set[str], libraries: Sequence[Library]) -> None:
        self.current = current
        self.skip = skip
        self.libraries = libraries
        self.stats: dict[str, EntryStats] = {}
        self.violations: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.checkpoint: Callable[[str], None] | None = None
        self._seen: dict[tuple[str, ...], dict[str, Any]] = {}

    def _mark(self, text: str) -> None:
        """Name the input about to run, atomically: a crash leaves exactly this behind."""
        if self.current is None:
            return
        tmp = self.current.with_name(self.current.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, text.encode("utf-8", "replace"))
        finally:
            os.close(fd)
        os.replace(tmp, self.current)

    def _violation(
        self,
        entry: str,
        library: str,
        kind: str,
        outcome_detail: str,
        exc_type: str,
        args: dict[str, Any],
        *,
        note: bool = False,
    ) -> None:
        """Record a problem once per (entry, library, kind, exception), counting repeats;
        ``note`` files it under the notes, which do not fail the run."""
        # Grouped by the message's shape too (digits masked), so distinct root causes that
        # share an exception type stay distinct entries.
        key = (entry, library, kind, exc_type, re.sub(r"\d+", "N", outcome_detail)[:60])
        found = self._seen.get(key)
        if found is not None:
            found["count"] += 1
            return
        record = {
            "entry": entry,
            "library": library,
            "kind": kind,
            "exception": exc_type,
            "detail": outcome_detail,
            "input": describe(args),
            "count": 1,
        }
        self._seen[key] = record
        (self.notes if note else self.violations).append(record)
        if self.checkpoint is not None:
            self.checkpoint(entry)  # saved at once: a crash later in this entry must not lose it

    def check(self, entry: EntryPoint, args: dict[str, Any]) -> None:
        """One input through both libraries, then their agreement."""
        if entry.fixup is not None:
            args = entry.fixup(args)
        stats = self.stats.setdefault(entry.name, EntryStats())
        stats.inputs += 1
        if self.checkpoint is not None and stats.inputs % CHECKPOINT_EVERY == 0:
            self.checkpoint(entry.name)
        text = describe(args)
        if f"{entry.name}|{text}" in self.skip:
            stats.crashed += 1
            return
        outcomes: dict[str, Outcome] = {}
        for lib in self.libraries:
            self._mark(f"{entry.name}\n{lib.name}\n{text}\n")
            outcome = run_one(entry, lib, args)
            outcomes[lib.name] = outcome
            counts = stats.lib(lib.name)
            if outcome.status == "accepted":
                counts["accepted"] += 1
            elif outcome.status == "refused":
                counts["refused"] += 1
                counts["refused_by"][outcome.exc_type] = (
                    counts["refused_by"].get(outcome.exc_type, 0) + 1
                )
            else:
                counts["violations"] += 1
                self._violation(
                    entry.name, lib.name, outcome.kind, outcome.detail, outcome.exc_type, args
                )
        if len(outcomes) == 2:
            self._agreement(entry, stats, outcomes["mlx"], outcomes["torch"], args)

    def _agreement(
        self, entry: EntryPoint, stats: EntryStats, m: Outcome, t: Outcome, args: dict[str, Any]
    ) -> None:
        if "violation" in (m.status, t.status):
            return  # already reported on its own
        kind, note = "", False
        if m.status != t.status:
            kind = f"mlx {m.status}, torch {t.status}"
            detail = f"mlx: {m.exc_type} {m.detail or m.shapes} | torch: {t.exc_type} {t.detail or t.shapes}"
        elif m.status == "refused" and m.exc_type != t.exc_type:
            # Usually an input with several faults that the twins check in another order: a
            # note, not a failure (the records' error cases pin single faults' types).
            kind, note = "different exception types", True
            detail = f"mlx: {m.exc_type} {m.detail} | torch: {t.exc_type} {t.detail}"
        elif m.status == "accepted" and (m.shapes != t.shapes or m.dtypes != t.dtypes):
            kind = "different results"
            detail = f"mlx: {m.shapes} {m.dtypes} | torch: {t.shapes} {t.dtypes}"
        if kind:
            if note:
                stats.type_mismatches += 1
            else:
                stats.disagreements += 1
            self._violation(
                entry.name,
                "both",
                f"disagreement: {kind}",
                detail,
                f"{m.exc_type or '-'}/{t.exc_type or '-'}",
                args,
                note=note,
            )

    def fuzz(self, entry: EntryPoint, examples: int, profile: str) -> None:
        """Drive ``entry`` with ``examples`` Hypothesis inputs under ``profile``."""
        from hypothesis import HealthCheck, given

        stats = self.stats.setdefault(entry.name, EntryStats())
        for lib in self.libraries:
            stats.lib(lib.name)
        for args in PINNED.get(entry.name, ()):
            self.check(entry, args)

        @settings(
            settings.get_profile(profile),
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(entry.inputs)
        def drive(args: dict[str, Any]) -> None:
            self.check(entry, args)

        drive()

    def as_dict(self) -> dict[str, Any]:
        entries = {
            name: {
                "inputs": s.inputs,
                "crashed": s.crashed,
                "disagreements": s.disagreements,
                "exception_type_mismatches": s.type_mismatches,
                **s.libraries,
            }
            for name, s in self.stats.items()
        }
        return {"entries": entries, "violations": self.violations, "notes": self.notes}


def child_main(args: argparse.Namespace) -> int:
    """The fuzzing process: every requested entry point, results written after each."""
    from conformance import profiles
    from conformance.results import write_json_atomic

    # A fatal signal (an MLX kernel's SIGSEGV/SIGFPE/SIGABRT) prints the Python stack to
    # stderr, which the parent puts in the crash report next to the input in flight.
    faulthandler.enable()
    profiles.register()
    settings.load_profile(args.profile)
    names = args.entry or list(ENTRY_POINTS)
    unknown = sorted(set(names) - set(ENTRY_POINTS))
    if unknown:
        print(
            f"[fuzz] unknown entry points {unknown}; known: {sorted(ENTRY_POINTS)}", file=sys.stderr
        )
        return 2
    skip: set[str] = set()
    if args.skip:
        skip = set(json.loads(Path(args.skip).read_text(encoding="utf-8")))
    libraries = [Library(name) for name in args.library]
    fuzzer = Fuzzer(Path(args.current) if args.current else None, skip, libraries)
    done: list[str] = []
    started = time.monotonic()

    def write(in_progress: str | None) -> None:
        if args.json:
            payload = {**fuzzer.as_dict(), "completed": done, "in_progress": in_progress}
            write_json_atomic(
                Path(args.json), {**payload, "elapsed_s": round(time.monotonic() - started, 2)}
            )

    fuzzer.checkpoint = write
    for name in names:
        fuzzer.fuzz(ENTRY_POINTS[name], args.examples, args.profile)
        done.append(name)
        write(None)
    summary = fuzzer.as_dict()
    total = sum(e["inputs"] for e in summary["entries"].values())
    print(
        f"[fuzz] {total} inputs over {len(done)} entry points, {len(summary['violations'])} distinct violations"
    )
    return 1 if summary["violations"] else 0


# --------------------------------------------------------------------------- the parent


def run_fuzz(
    examples: int,
    profile: str = "ci",
    *,
    entries: Sequence[str] | None = None,
    timeout_s: float = 900.0,
    env: Mapping[str, str] | None = None,
    libraries: Sequence[str] = ("mlx", "torch"),
    max_crashes_per_entry: int = MAX_CRASHES_PER_ENTRY,
) -> dict[str, Any]:
    """Run the fuzz child (restarting it after a crash, with the killer input skipped).

    Returns the merged result: per-entry counts, violations, crashes (each with the exact
    input in flight), the total number of inputs, and ``ok``.
    """
    pending = list(entries or ENTRY_POINTS)
    merged: dict[str, Any] = {
        "schema": SCHEMA,
        "profile": profile,
        "examples_per_entry": examples,
        "libraries": list(libraries),
        "entries": {},
        "violations": [],
        "notes": [],
        "crashes": [],
    }
    crashes_by_entry: dict[str, int] = {}
    skip: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        while pending:
            part, current, skip_file = work / "part.json", work / "current.txt", work / "skip.json"
            for p in (part, current):
                p.unlink(missing_ok=True)
            skip_file.write_text(json.dumps(skip), encoding="utf-8")
            cmd = [
                sys.executable,
                "-m",
                "conformance.fuzz",
                "--examples",
                str(examples),
                "--profile",
                profile,
                "--json",
                str(part),
                "--current",
                str(current),
                "--skip",
                str(skip_file),
                *(f"--library={lib}" for lib in libraries),
                *(f"--entry={e}" for e in pending),
            ]
            left = max(1.0, timeout_s - (time.monotonic() - started))
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=ROOT,
                    env=dict(env or os.environ),
                    capture_output=True,
                    text=True,
                    timeout=left,
                    check=False,
                )
                code, tail = proc.returncode, _stderr_excerpt(proc.stderr or proc.stdout)
            except subprocess.TimeoutExpired as exc:
                code = None
                err = (
                    exc.stderr.decode(errors="replace")
                    if isinstance(exc.stderr, bytes)
                    else (exc.stderr or "")
                )
                tail = f"timed out after {timeout_s:.0f} s total; {err[-1500:]}"
            try:
                partial = json.loads(part.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError):
                partial = {"entries": {}, "violations": [], "completed": []}
            completed = partial.get("completed", [])
            for name in completed:
                merged["entries"][name] = partial["entries"][name]
            for section in ("violations", "notes"):
                merged[section] += [v for v in partial.get(section, []) if v["entry"] in completed]
            pending = [e for e in pending if e not in completed]
            if code in (0, 1):
                if pending:  # exited normally yet did not finish: treat as a crash of the next one
                    merged["crashes"].append(
                        {
                            "entry": pending[0],
                            "library": "?",
                            "input": "",
                            "detail": f"child exited {code} early; {tail}",
                        }
                    )
                    pending.pop(0)
                break
            culprit = current.read_text(encoding="utf-8").split("\n", 2) if current.exists() else []
            entry = culprit[0] if culprit else (pending[0] if pending else "?")
            text = culprit[2].rstrip("\n") if len(culprit) > 2 else ""
            why = "hang (killed at the time limit)" if code is None else _signal_text(code)
            merged["crashes"].append(
                {
                    "entry": entry,
                    "library": culprit[1] if len(culprit) > 1 else "?",
                    "input": text,
                    "detail": f"{why}; {tail}",
                }
            )
            if code is None:
                for name in pending:  # out of time: the rest never ran
                    merged["crashes"].append(
                        {
                            "entry": name,
                            "library": "?",
                            "input": "",
                            "detail": "not run: the time limit was spent",
                        }
                    )
                break
            crashes_by_entry[entry] = crashes_by_entry.get(entry, 0) + 1
            skip.append(f"{entry}|{text}")
            if crashes_by_entry[entry] >= max_crashes_per_entry and entry in pending:
                pending.remove(entry)  # give up on it, keeping the counts of its last checkpoint
                last = partial.get("entries", {}).get(entry)
                if last is None or partial.get("in_progress") != entry:
                    last = {"inputs": 0, "disagreements": 0, "exception_type_mismatches": 0}
                    last.update({lib: EntryStats().lib(lib) for lib in libraries})
                merged["entries"][entry] = {
                    **last,
                    "crashed": crashes_by_entry[entry],
                    "abandoned_after_crashes": crashes_by_entry[entry],
                }
                for section in ("violations", "notes"):  # the child saved each one as found
                    merged[section] += [v for v in partial.get(section, []) if v["entry"] == entry]
    per_entry = merged["entries"]
    merged["total_inputs"] = sum(e["inputs"] for e in per_entry.values())
    merged["elapsed_s"] = round(time.monotonic() - started, 2)
    merged["ok"] = not merged["violations"] and not merged["crashes"]
    return merged


def _stderr_excerpt(text: str) -> str:
    """The useful part of a dead child's stderr: faulthandler's dump starts with the
    innermost frames, so keep its head; otherwise the tail (a Python traceback's end)."""
    start = text.find("Fatal Python error")
    if start >= 0:
        return text[start : start + 1500]
    return text[-2000:]


def _signal_text(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def summary_line(result: Mapping[str, Any]) -> str:
    """One line for logs: inputs, entry points, violations, crashes."""
    return (
        f"{result['total_inputs']} inputs over {len(result['entries'])} entry points "
        f"({result['examples_per_entry']} Hypothesis examples each, profile {result['profile']}); "
        f"{len(result['violations'])} distinct violations, {len(result['crashes'])} crashes"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m conformance.fuzz``: the child, or with ``--supervise`` the parent."""
    parser = argparse.ArgumentParser(
        prog="python -m conformance.fuzz", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--examples", type=int, default=None, help="Hypothesis examples per entry point"
    )
    parser.add_argument("--profile", default="ci", choices=tuple(FUZZ_EXAMPLES))
    parser.add_argument("--json", default=None, help="write the counts and violations here")
    parser.add_argument(
        "--current", default=None, help="file naming the input in flight (crash isolation)"
    )
    parser.add_argument(
        "--skip", default=None, help="JSON list of 'entry|input' to skip (inputs that crashed)"
    )
    parser.add_argument("--entry", action="append", help="only this entry point (repeatable)")
    parser.add_argument(
        "--library", action="append", choices=("mlx", "torch"), help="default: both"
    )
    parser.add_argument(
        "--supervise", action="store_true", help="run as the parent: crash recovery, merged JSON"
    )
    args = parser.parse_args(argv)
    args.library = args.library or ["mlx", "torch"]
    if args.examples is None:
        args.examples = FUZZ_EXAMPLES[args.profile]
    if not args.supervise:
        return child_main(args)
    from conformance.results import write_json_atomic

    result = run_fuzz(args.examples, args.profile, entries=args.entry, libraries=args.library)
    if args.json:
        write_json_atomic(Path(args.json), result)
    print(f"[fuzz] {summary_line(result)}")
    for v in result["violations"]:
        print(
            f"  VIOLATION {v['entry']} [{v['library']}] {v['kind']} x{v['count']}: {v['exception']} "
            f"{v['detail']}\n    input: {v['input']}"
        )
    for c in result["crashes"]:
        print(
            f"  CRASH {c['entry']} [{c['library']}]: {c['detail'][:300]}\n    input: {c['input']}"
        )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
