"""What one registry record holds: everything the harness knows about one op or layer.

A record's ``call`` is written ONCE for both libraries: ``mlx_impl`` and
``torch_reference`` share names and signatures, so ``call(lib, arrays, params, kw)``
works with ``lib`` either package; ``kw`` is ``{}`` for MLX and carries
``precision="native" | "float64"`` for PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from hypothesis import strategies as st

from conformance.dtypes import TEST_DTYPES
from conformance.tolerance import Tolerance

Arrays = Mapping[str, Any]
Params = Mapping[str, Any]
Call = Callable[[ModuleType, Arrays, Params, Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Case:
    """One input: NumPy arrays (floats are rounded to the test dtype by the harness;
    integer arrays are passed as they are) and plain Python parameters."""

    arrays: Mapping[str, np.ndarray]
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def describe(self) -> str:
        """Shapes and parameters, short enough for a failure message."""
        shapes = ", ".join(f"{k}{list(v.shape)}:{v.dtype}" for k, v in self.arrays.items())
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        head = f"{self.label}: " if self.label else ""
        return f"{head}arrays({shapes}) params({params})"


@dataclass(frozen=True)
class EdgeCase:
    """A fixed input every run checks, for the dtypes and mode it names."""

    case: Case
    mode: str = "default"
    dtypes: tuple[str, ...] = TEST_DTYPES


@dataclass(frozen=True)
class ErrorCase:
    """A bad input both libraries must refuse with ``raises`` and a bracketed message."""

    name: str
    case: Case
    raises: type[Exception]
    dtype: str = "float32"


@dataclass(frozen=True)
class Mutant:
    """A deliberately wrong MLX implementation the harness must flag (a meta-test).

    ``call`` has the record's ``call`` signature and is run with ``lib = mlx_impl``.
    """

    name: str
    bug: str
    call: Call
    mode: str = "default"
    dtype: str = "float32"


@dataclass(frozen=True)
class BenchCase:
    """A benchmark input at a shape the layer serves (``make`` builds it, seeded).

    ``cpu_make`` builds a smaller input for MLX's CPU back end where the full shape would
    take minutes per call (``cpu_note`` says what shrank); reports name the shape that ran.
    """

    name: str
    make: Callable[[], Case]
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    mode: str = "default"
    note: str = ""
    cpu_make: Callable[[], Case] | None = None
    cpu_note: str = ""


@dataclass(frozen=True)
class ExpectedDivergence:
    """A known disagreement that is MLX's (a bug or undocumented behaviour of MLX itself),
    not ``mlx_impl``'s. Hypothesis skips inputs for which ``applies`` is true; the
    ``reproducer`` must keep failing, so the entry is removed once MLX is fixed.
    ``applies(case, dtype, backend)`` decides for every mode; ``mode`` is the reproducer's.
    """

    name: str
    reason: str
    reference: str
    reproducer: Case
    dtype: str
    applies: Callable[[Case, str, str], bool]
    mode: str = "default"
    backends: tuple[str, ...] = ("cpu", "metal", "cuda")
    """The back ends where MLX diverges; elsewhere the reproducer is not expected to."""
    mlx_call: Call | None = None
    """The raw MLX call the reproducer runs, where ``mlx_impl`` guards against the bug (its
    own call then gives the right answer, but MLX must still be shown to diverge)."""


@dataclass(frozen=True)
class OpRecord:
    """One op or layer. See the module docstring for ``call``.

    Args:
        name: registry key, e.g. ``"fast.rope"``.
        api: the public names of ``mlx_impl`` (and ``torch_reference``) it covers.
        call: invokes the op on either library.
        cases: ``(dtype, mode) -> strategy of Case``.
        tolerance: ``(backend, dtype) -> Tolerance``; most records use a constant.
        dtypes, modes: the conformance matrix's rows for this op.
        derive: adds arrays computed from the rounded inputs (e.g. packed weights made by
            ``mx.quantize``) so both libraries see identical derived data.
        magnitude: float64 ``|x| @ |w|.T``-like magnitudes for accumulation bounds.
        edge_cases, errors, mutants, bench, divergences: see their classes.
    """

    name: str
    api: tuple[str, ...]
    call: Call
    cases: Callable[[str, str], st.SearchStrategy[Case]]
    tolerance: Callable[[str, str], Tolerance]
    dtypes: tuple[str, ...] = TEST_DTYPES
    modes: tuple[str, ...] = ("default",)
    derive: Callable[[Arrays, Params, str], dict[str, np.ndarray]] | None = None
    magnitude: Callable[[Arrays, Params], np.ndarray] | None = None
    edge_cases: tuple[EdgeCase, ...] = ()
    errors: tuple[ErrorCase, ...] = ()
    mutants: tuple[Mutant, ...] = ()
    bench: tuple[BenchCase, ...] = ()
    divergences: tuple[ExpectedDivergence, ...] = ()
    notes: str = ""


def constant(tolerance: Tolerance) -> Callable[[str, str], Tolerance]:
    """A tolerance that is the same on every back end and dtype."""
    return lambda backend, dtype: tolerance
