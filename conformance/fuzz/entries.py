"""Every entry point the fuzz drives, read from the registry: each record's
``entry_points`` (:class:`conformance.record.FuzzEntry`), plus the self-test entries when
``CONFORMANCE_FUZZ_SELFTEST=1`` (:mod:`conformance.fuzz.selftest`).

An entry point's inputs are its record's valid inputs corrupted by the generic mutations
(:func:`conformance.fuzz.inputs.mutated`). The valid inputs come from two sources: the
entry's own small draws (zero-size dims, odd dtypes: 3 draws in 4), and, where the entry
says how (``from_case``), the record's own Hypothesis strategy ``cases(dtype, mode)`` over
the record's dtypes and modes (1 draw in 4), so the shapes and values the conformance
matrix uses are fuzzed too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hypothesis import strategies as st

from conformance.fuzz.inputs import case_arrays, mutated
from conformance.fuzz.supervisor import SELFTEST_ENV
from conformance.record import Case, FuzzArgs, FuzzEntry, OpRecord

RECORD_CASE_SHARE = 4
"""One valid draw in this many starts from the record's own ``cases`` strategy."""


@dataclass(frozen=True)
class DrivenEntry:
    """An entry point ready to fuzz: its declaration, its record, the input strategy."""

    entry: FuzzEntry
    record: str
    inputs: st.SearchStrategy[FuzzArgs]
    record_case_draws: list[int] = field(default_factory=lambda: [0])
    """How many valid inputs started from the record's ``cases`` (a one-element counter)."""


def record_inputs(record: OpRecord, entry: FuzzEntry) -> st.SearchStrategy[FuzzArgs] | None:
    """Valid inputs drawn by the record's ``cases`` over every (dtype, mode) cell, mapped
    to the entry's arguments by ``entry.from_case``; ``None`` where the entry has no map.
    The case is prepared as the conformance harness prepares it (floats rounded to the
    cell's dtype, the record's derived arrays added, e.g. weights packed by ``mx.quantize``)."""
    from_case = entry.from_case
    if from_case is None:
        return None
    cells = [(dtype, mode) for mode in record.modes for dtype in record.dtypes]

    def prepared(case: Case, dtype: str) -> FuzzArgs:
        from conformance.execute import prepare_inputs

        return from_case(case_arrays(prepare_inputs(record, case, dtype), dtype), case.params)

    def for_cell(cell: tuple[str, str]) -> st.SearchStrategy[FuzzArgs]:
        dtype, mode = cell
        return record.cases(dtype, mode).map(lambda case: prepared(case, dtype))

    return st.sampled_from(cells).flatmap(for_cell)


@st.composite
def _valid(
    draw: st.DrawFn,
    own: st.SearchStrategy[FuzzArgs],
    from_record: st.SearchStrategy[FuzzArgs] | None,
    counter: list[int],
) -> FuzzArgs:
    if from_record is not None and draw(st.integers(0, RECORD_CASE_SHARE - 1)) == 0:
        counter[0] += 1
        return draw(from_record)
    return draw(own)


def drive(record: OpRecord | None, entry: FuzzEntry) -> DrivenEntry:
    """The entry's input strategy: valid inputs with 0-3 arguments corrupted (an entry
    declaring no ``params`` is driven by its valid inputs alone)."""
    from_record = record_inputs(record, entry) if record is not None else None
    counter = [0]
    valid = _valid(entry.valid, from_record, counter)
    inputs = mutated(valid, entry.params) if entry.params else valid
    return DrivenEntry(entry, record.name if record is not None else "", inputs, counter)


def entry_points() -> dict[str, DrivenEntry]:
    """Every public entry point the fuzz drives, by the name a report shows."""
    from conformance.registry import REGISTRY

    found: dict[str, DrivenEntry] = {}
    for record in REGISTRY.values():
        for entry in record.entry_points:
            if entry.name in found:
                raise ValueError(
                    f"[fuzz] entry point {entry.name!r} declared by both "
                    f"{found[entry.name].record!r} and {record.name!r}."
                )
            found[entry.name] = drive(record, entry)
    if os.environ.get(SELFTEST_ENV) == "1":
        from conformance.fuzz.selftest import selftest_entries

        found.update({e.name: drive(None, e) for e in selftest_entries()})
    return found


def entry_names() -> list[str]:
    """The names of :func:`entry_points`, in registry order."""
    return list(entry_points())

