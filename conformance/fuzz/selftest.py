"""Entry points that break the contract on purpose, so ``tests/test_fuzz.py`` can prove the
fuzz notices each kind of failure. They join the fuzz's entry points only when the
environment sets ``CONFORMANCE_FUZZ_SELFTEST=1`` (:data:`conformance.fuzz.entries.SELFTEST_ENV`).

- ``selftest.crash`` kills its process with SIGSEGV on a zero-size input (a kernel bug);
- ``selftest.hang`` never returns on a zero-size input (MLX's CPU sum over an empty last
  axis does that in some runs);
- ``selftest.misbehave`` raises undocumented errors and returns wrong shapes.
"""

from __future__ import annotations

import os
import signal
import time
from types import ModuleType
from typing import Any

from hypothesis import strategies as st

from conformance.fuzz.inputs import FLOAT_DTYPES, any_arr, same_as
from conformance.record import FuzzArgs, FuzzEntry


def _has_zero_dim(x: Any) -> bool:
    return hasattr(x, "shape") and 0 in tuple(x.shape)


def _selftest_crash(lib: ModuleType, a: FuzzArgs, kw: dict[str, Any]) -> Any:
    x = a["x"]
    if _has_zero_dim(x):
        os.kill(os.getpid(), signal.SIGSEGV)  # what an MLX kernel bug does to the process
    return x


def _selftest_hang(lib: ModuleType, a: FuzzArgs, kw: dict[str, Any]) -> Any:
    x = a["x"]
    while _has_zero_dim(x):  # what MLX's spinning empty reduction does: never return
        time.sleep(3600)
    return x


def _selftest_misbehave(lib: ModuleType, a: FuzzArgs, kw: dict[str, Any]) -> Any:
    x, how = a["x"], a["how"]
    if how == "runtime":
        raise RuntimeError("an undocumented exception type")
    if how == "unbracketed":
        raise ValueError("a message without the op in brackets")
    if how == "shape":
        return x.reshape(-1)[:0]  # the wrong shape (empty 1-D), whatever x is
    return x


def selftest_entries() -> tuple[FuzzEntry, ...]:
    """The three contract-breaking entry points (see the module docstring); their inputs
    are drawn as they are, not mutated (no ``params``)."""
    x_only = st.fixed_dictionaries({"x": any_arr(FLOAT_DTYPES)})
    misbehaving = st.fixed_dictionaries(
        {
            "x": any_arr(FLOAT_DTYPES),
            "how": st.sampled_from(("runtime", "unbracketed", "shape", "fine")),
        }
    )
    return (
        FuzzEntry("selftest.crash", _selftest_crash, x_only, {}, same_as("x"), ("selftest",)),
        FuzzEntry("selftest.hang", _selftest_hang, x_only, {}, same_as("x"), ("selftest",)),
        FuzzEntry(
            "selftest.misbehave", _selftest_misbehave, misbehaving, {}, same_as("x"), ("selftest",)
        ),
    )
