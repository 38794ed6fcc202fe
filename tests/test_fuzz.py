"""The fuzz test (issue 5): Hypothesis drives arbitrary shapes, dtypes and parameters into
every public entry point of ``mlx_impl`` and ``torch_reference``, in a subprocess.

Each call must return a correctly shaped result or raise ``ValueError`` / ``TypeError`` /
``IndexError`` with a bracketed message naming the op, and never kill the interpreter; the
two libraries must accept and refuse the same inputs. ``conformance/fuzz.py`` explains the
strategy and the crash isolation. The counts (inputs tried per entry point, acceptances,
refusals, violations, crashes) are written to ``reports/conformance/fuzz.json``.

The budget follows the Hypothesis profile (``--hypothesis-profile``; ``ci`` unless given):
``conformance.fuzz.FUZZ_EXAMPLES`` inputs per entry point.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from conformance import fuzz
from conformance.results import write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "reports" / "conformance" / "fuzz.json"
SECONDS_PER_INPUT = 0.25
"""A generous bound on one input's time (both libraries, a loaded 2-core machine) for the
run's time limit; a run past it is reported as a hang with the input in flight."""


def _budget() -> tuple[str, int]:
    profile = settings.get_current_profile_name()
    profile = profile if profile in fuzz.FUZZ_EXAMPLES else "ci"
    return profile, fuzz.FUZZ_EXAMPLES[profile]


def _problems(result: dict[str, Any]) -> str:
    lines = []
    for c in result["crashes"]:
        lines.append(
            f"CRASH {c['entry']} [{c['library']}]: {c['detail'][:300]}\n    input: {c['input']}"
        )
    for v in result["violations"]:
        lines.append(
            f"VIOLATION {v['entry']} [{v['library']}] {v['kind']} (x{v['count']}): "
            f"{v['exception']} {v['detail'][:300]}\n    input: {v['input'][:600]}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def fuzz_result() -> dict[str, Any]:
    """One fuzz run for the module, written to the report folder whatever its verdict."""
    profile, examples = _budget()
    timeout = 120.0 + SECONDS_PER_INPUT * examples * len(fuzz.ENTRY_POINTS)
    result = fuzz.run_fuzz(examples, profile, timeout_s=timeout)
    write_json_atomic(REPORT, result)
    return result


def test_no_crash(fuzz_result: dict[str, Any]) -> None:
    """Neither library killed (or hung) the interpreter on any input."""
    assert not fuzz_result["crashes"], _problems(fuzz_result)


def test_no_contract_violation(fuzz_result: dict[str, Any]) -> None:
    """Every call returned the documented shape or raised a documented, bracketed error, and
    the two libraries accepted and refused the same inputs."""
    assert not fuzz_result["violations"], _problems(fuzz_result)


def test_every_entry_point_was_tried(fuzz_result: dict[str, Any]) -> None:
    """Each entry point got (nearly) its whole budget, and both libraries ran every input."""
    examples = fuzz_result["examples_per_entry"]
    least = max(1, int(0.9 * examples))  # Hypothesis runs exactly max_examples here; margin only
    entries = fuzz_result["entries"]
    missing = sorted(set(fuzz.ENTRY_POINTS) - set(entries))
    assert not missing, f"entry points never fuzzed: {missing}\n{_problems(fuzz_result)}"
    abandoned = {
        n: e["abandoned_after_crashes"]
        for n, e in entries.items()
        if "abandoned_after_crashes" in e
    }
    assert not abandoned, (
        f"entry points abandoned after repeated crashes (test_no_crash has them): {abandoned}"
    )
    short = {n: e["inputs"] for n, e in fuzz_result["entries"].items() if e["inputs"] < least}
    assert not short, f"entry points tried fewer than {least} times: {short}"
    for name, e in fuzz_result["entries"].items():
        for lib in ("mlx", "torch"):
            ran = e[lib]["accepted"] + e[lib]["refused"] + e[lib]["violations"]
            assert ran == e["inputs"] - e["crashed"], (name, lib, e)


def test_inputs_are_a_mix_of_right_and_wrong(fuzz_result: dict[str, Any]) -> None:
    """The strategy is not degenerate: every entry point saw accepted AND refused inputs,
    so both halves of the contract were exercised."""
    for name, e in fuzz_result["entries"].items():
        assert e["mlx"]["accepted"] > 0, f"{name}: no input was ever accepted: {e}"
        assert e["mlx"]["refused"] > 0, f"{name}: no input was ever refused: {e}"


def test_fuzz_covers_every_public_op() -> None:
    """Every public name a conformance record covers has a fuzz entry point."""
    from conformance.registry import covered_api

    uncovered = sorted(name for name in covered_api() if name not in fuzz.ENTRY_POINTS)
    assert not uncovered, f"public ops without a fuzz entry point: {uncovered}"


def test_fuzz_notices_crashes_and_broken_contracts() -> None:
    """Meta-test: entry points that break the contract on purpose are caught. One kills
    its process with SIGSEGV on a zero-size input: the parent must name that exact input,
    restart the child and finish the run; the other raises undocumented errors and returns
    wrong shapes: each must be reported."""
    env = {**os.environ, fuzz.SELFTEST_ENV: "1"}
    result = fuzz.run_fuzz(
        30,
        "ci",
        entries=("selftest.crash", "selftest.misbehave"),
        env=env,
        libraries=("mlx",),
        max_crashes_per_entry=1,
        timeout_s=300.0,
    )
    crashes = result["crashes"]
    assert len(crashes) == 1, crashes
    assert crashes[0]["entry"] == "selftest.crash" and crashes[0]["library"] == "mlx"
    assert "SIGSEGV" in crashes[0]["detail"]
    shape = re.match(r"x=float\w+\[([\d, ]*)\]", crashes[0]["input"])
    assert shape is not None and "0" in shape.group(1).split(", "), crashes[0]["input"]
    kinds = {v["kind"] for v in result["violations"] if v["entry"] == "selftest.misbehave"}
    assert "undocumented exception (call)" in kinds, kinds
    assert "message not bracketed" in kinds, kinds
    assert "wrong result" in kinds, kinds
    assert result["entries"]["selftest.misbehave"]["inputs"] == 30
    assert not result["ok"]
