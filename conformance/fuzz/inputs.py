"""The fuzz's library-neutral inputs and the generic ways to draw and corrupt them.

Records build their fuzz entry points (:class:`conformance.record.FuzzEntry`) from these
pieces: :class:`Arr` (NumPy data + a dtype name), :func:`arr`, :func:`shapes`, :func:`dims`,
and the engine corrupts valid inputs with :func:`mutated`.

Back ends without float64 (MLX's GPU back ends, CUDA and Metal: "float64 is not supported
on the GPU"): :func:`set_float64_supported` (called by the child once it knows MLX's back
end) makes every draw of a float64 array or dtype argument draw another dtype instead, so
float64 inputs are NOT DRAWN there (both libraries see the same input, so the agreement
check stays meaningful). On the CPU float64 is drawn as before (1 dtype in 8).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from conformance.record import FuzzArgs, FuzzEntry, FuzzOutput, FuzzParam

__all__ = [  # what a record needs to declare its entry points, from one place
    "ALL_DTYPES", "EPS_VALUES", "FLOAT_DTYPES", "INT_DTYPES", "MAX_ELEMENTS", "MAX_QUANT_ELEMENTS",
    "Arr", "DType", "Foreign", "FuzzArgs", "FuzzEntry", "FuzzOutput", "FuzzParam",
    "any_arr", "arr", "case_arrays", "constant_array", "describe", "dims", "drawable", "float_dtypes",
    "junk", "make_data", "mutated", "mutated_array", "opt", "same_as", "set_float64_supported",
    "shape_of", "shapes",
]

MAX_ELEMENTS = 64
MAX_QUANT_ELEMENTS = 256
MUTATIONS = (0, 0, 0, 1, 1, 1, 2, 3)
"""How many arguments of a valid input get corrupted (3 in 8 inputs stay valid)."""

FLOAT_DTYPES = ("float32", "float16", "bfloat16")
OTHER_DTYPES = ("int32", "uint32", "uint8", "bool", "float64")
ALL_DTYPES = FLOAT_DTYPES + OTHER_DTYPES
INT_DTYPES = ("int32", "uint32", "uint8")

_FLOAT64 = {"supported": True}


def set_float64_supported(supported: bool) -> None:
    """Whether the back end under test has float64 (see the module docstring)."""
    _FLOAT64["supported"] = supported


def drawable(dtype: str) -> str:
    """``dtype``, or float32 in its place where the back end has no float64."""
    return "float32" if dtype == "float64" and not _FLOAT64["supported"] else dtype


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
    """An array of ``shape`` and ``dtype`` with drawn contents (float64 only where the
    back end has it: :func:`drawable`)."""
    dtype = drawable(dtype)
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
    """One of the floating dtypes every op computes in."""
    return st.sampled_from(FLOAT_DTYPES)


def dims(low: int = 0, high: int = 4) -> st.SearchStrategy[int]:
    """A size in ``low..high``; 0 (when allowed) is drawn about as often as each other size,
    not as often as Hypothesis's bias towards small integers would draw it."""
    return st.sampled_from((*range(max(low, 1), high + 1), *((0,) if low == 0 else ())))


@st.composite
def any_arr(draw: st.DrawFn, dtypes: Sequence[str] = ALL_DTYPES) -> Arr:
    """An array of any shape (rank 0-5, at most :data:`MAX_ELEMENTS`) and dtype."""
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
    """A value of the wrong kind: a :data:`JUNK` scalar, a random array or a NumPy array."""
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


@st.composite
def mutated(
    draw: st.DrawFn, valid: st.SearchStrategy[FuzzArgs], params: Mapping[str, FuzzParam]
) -> FuzzArgs:
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


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``None`` (an optional argument left out) or a draw of ``strategy``."""
    return st.one_of(st.none(), strategy)




def shape_of(v: Any) -> tuple[int, ...]:
    """The shape of an array argument (an ``expect`` raising here means "no defined result")."""
    assert isinstance(v, Arr), f"expected an array argument but got {v!r}"
    return v.shape


def same_as(name: str) -> Any:
    """``expect`` for ops whose one output has the shape of argument ``name``."""

    def expect(a: FuzzArgs) -> list[FuzzOutput]:
        return [FuzzOutput(shape_of(a[name]))]

    return expect


def constant_array(shape: tuple[int, ...], dtype: str, fill: float = 0.0) -> Arr:
    """A constant array (for pinned inputs)."""
    numpy_dtype = (
        np.float32 if dtype in FLOAT_DTYPES else np.dtype("bool" if dtype == "bool" else dtype)
    )
    return Arr(np.full(shape, fill, dtype=numpy_dtype), dtype)


def case_arrays(arrays: Mapping[str, np.ndarray], dtype: str) -> dict[str, Arr]:
    """A record ``Case``'s NumPy arrays as :class:`Arr`: floats in the cell's ``dtype``
    (the library rounds them, as the harness does), integers and bools as they are."""
    out: dict[str, Arr] = {}
    for name, data in arrays.items():
        if data.dtype.kind == "f":
            out[name] = Arr(np.asarray(data, np.float32), drawable(dtype))
        else:
            out[name] = Arr(np.asarray(data), "bool" if data.dtype.kind == "b" else str(data.dtype))
    return out


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
