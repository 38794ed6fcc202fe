"""Fuzzing every public entry point of ``mlx_impl`` and ``torch_reference``.

The contract under test (issue 5): whatever it is given, a public call either returns a
result of the documented shape (and a floating dtype where the op computes) or raises
``ValueError``, ``TypeError`` or ``IndexError`` whose message starts with the op's name in
brackets, ``[Op] ...``; it never raises anything else, never kills the interpreter and never
hangs. Both libraries are held to it, and to each other: they must accept and refuse the
same inputs and agree on the result's shape and dtype. Refusing with different exception
types is recorded as a note, not a failure: it is nearly always an input with several faults
that the twins check in a different order (the records' error cases pin single faults' types).

The entry points are the registry's: each record declares its public entry points
(``OpRecord.entry_points``, :class:`conformance.record.FuzzEntry`): the call, a strategy of
valid inputs, how each argument may be corrupted, the expected output shapes and dtypes,
the op names its errors may carry, the inputs pinned because they once broke the contract,
and (``from_case``) how to start from the record's own ``cases`` strategy. The engine here
is generic; adding an op is adding a record.

Hypothesis draws ARBITRARY inputs, mostly wrong and sometimes right: for each entry point a
valid input is drawn and then 0 to 3 mutations are applied (a dtype changed, a dim changed or
zeroed, the rank changed, an argument replaced by junk: ``None``, a string, a NumPy array, a
Python scalar of the wrong type, a boundary value), or every argument is drawn at random
(:mod:`conformance.fuzz.inputs`). Arrays have rank 0-5 and sizes 0-9 (zero-size dims
included), at most 64 elements (quantized weights: 256; the record's own cases: the shapes
the conformance matrix uses), in float32, float16, bfloat16, float64, int32, uint32, uint8 and
bool. float64 is drawn only where MLX's back end has it: on CUDA and Metal (no float64 on the
GPU) float64 inputs are NOT DRAWN (another dtype is drawn in their place), rather than
becoming an expected refusal, so that both libraries keep seeing the same input.

Crash and hang isolation (:mod:`conformance.fuzz.supervisor`): the fuzzing runs in a child
process (``python -m conformance.fuzz``) that names every input in a file before each library
call; the parent reports a dead child's input as a crash, and an input whose call runs past
a per-call deadline (20 s) as a hang, kills the child, and restarts it with that input skipped.

``nn.Embedding(index_policy="trusted")`` is only given in-range indices: that policy's
documented contract is that the caller guarantees them (the record's ``fixup``).

Run it: ``python -m conformance.fuzz --supervise --profile ci --json out.json`` (the parent,
with crash and hang recovery); without ``--supervise`` it runs the child directly.
``tests/test_fuzz.py`` and ``python -m conformance run`` use :func:`run_fuzz`.

Modules: ``inputs`` (neutral inputs, strategies, mutations), ``entries`` (the registry's
entry points), ``library`` (the two libraries, back end, the contract check), ``child``
(the fuzzing process), ``supervisor`` (the parent), ``selftest`` (planted contract breaks).
"""

from __future__ import annotations

from typing import Any

from conformance.fuzz.supervisor import (
    FUZZ_EXAMPLES,
    FUZZ_SECONDS_PER_ENTRY,
    HANG_SECONDS,
    MAX_CRASHES_PER_ENTRY,
    SCHEMA,
    SELFTEST_ENV,
    default_hang_seconds,
    run_fuzz,
    summary_line,
)

__all__ = [
    "FUZZ_EXAMPLES",
    "FUZZ_SECONDS_PER_ENTRY",
    "HANG_SECONDS",
    "MAX_CRASHES_PER_ENTRY",
    "SCHEMA",
    "SELFTEST_ENV",
    "default_hang_seconds",
    "entry_points",
    "run_fuzz",
    "summary_line",
]


def entry_points() -> dict[str, Any]:
    """Every entry point the fuzz drives, by name (:func:`conformance.fuzz.entries.entry_points`)."""
    from conformance.fuzz.entries import entry_points as read_registry

    return read_registry()
