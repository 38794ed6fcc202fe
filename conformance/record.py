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


FuzzArgs = dict[str, Any]
"""A fuzz input: argument name -> value (``conformance.fuzz.inputs.Arr`` for arrays, plain
Python values for the rest), library-neutral until the engine converts it."""
FuzzCall = Callable[[ModuleType, FuzzArgs, dict[str, Any]], Any]
"""``call(lib, args, kw)``: one public entry point called on ``lib`` (either package)."""


@dataclass(frozen=True)
class FuzzParam:
    """How the fuzz may corrupt one argument: as an array (``array``), by interesting
    ``values`` (wrong types, boundaries), and by an ``extra`` strategy built from the rest
    of the input (e.g. offset arrays one row too long)."""

    array: bool = False
    values: tuple[Any, ...] = ()
    extra: Callable[[FuzzArgs], st.SearchStrategy[Any]] | None = None


@dataclass(frozen=True)
class FuzzOutput:
    """What one output of an accepted call must be: its ``shape``, and ``"floating"``, a
    dtype name, or ``None`` for an output that must itself be ``None``."""

    shape: tuple[int, ...] | None
    dtype: str | None = "floating"


@dataclass(frozen=True)
class FuzzEntry:
    """One public entry point (a function, a layer constructor + call, a method) as the
    fuzz drives it (:mod:`conformance.fuzz`).

    Args:
        name: the public name a report shows, e.g. ``"nn.Linear"``.
        call: ``call(lib, args, kw)`` on either library.
        valid: a strategy of VALID inputs (consistent shapes, supported formats), small and
            with zero-size dims; the engine corrupts 0-3 arguments of each.
        params: every argument's :class:`FuzzParam` (the ones the engine may corrupt).
        expect: ``expect(args) -> [FuzzOutput]`` for an accepted input; raising means
            "this input has no defined result", so accepting it is a violation.
        where: the op names an error message may carry in brackets, ``[Linear] ...``.
        from_case: maps a record ``Case`` (arrays as ``Arr`` in a cell dtype, and params)
            to this entry's arguments, so the fuzz also starts from the record's own
            Hypothesis strategy; ``None`` where the record's case needs derived data.
        fixup: applied to every input before the call (keeps a documented precondition,
            e.g. ``index_policy="trusted"`` only ever sees in-range indices).
        pinned: inputs every run checks first (each once broke the contract).
    """

    name: str
    call: FuzzCall
    valid: st.SearchStrategy[FuzzArgs]
    params: Mapping[str, FuzzParam]
    expect: Callable[[FuzzArgs], list[FuzzOutput]]
    where: tuple[str, ...]
    from_case: Callable[[Mapping[str, Any], Mapping[str, Any]], FuzzArgs] | None = None
    fixup: Callable[[FuzzArgs], FuzzArgs] | None = None
    pinned: tuple[FuzzArgs, ...] = ()


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
        entry_points: the public entry points this record's op is reached by, as the
            fuzz drives them (:class:`FuzzEntry`).
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
    entry_points: tuple[FuzzEntry, ...] = ()


def constant(tolerance: Tolerance) -> Callable[[str, str], Tolerance]:
    """A tolerance that is the same on every back end and dtype."""
    return lambda backend, dtype: tolerance
