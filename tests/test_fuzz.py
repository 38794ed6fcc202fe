"""The fuzz test (issue 5): Hypothesis drives arbitrary shapes, dtypes and parameters into
every public entry point of ``mlx_impl`` and ``torch_reference``, in a subprocess.

Each call must return a correctly shaped result or raise ``ValueError`` / ``TypeError`` /
``IndexError`` with a bracketed message naming the op, and never kill the interpreter; the
two libraries must accept and refuse the same inputs, and no call may hang. The entry
points are the registry records' ``entry_points``; ``conformance/fuzz/__init__.py`` explains
the strategy and the crash and hang isolation. The counts (inputs tried per entry point, acceptances,
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
run's total time limit (a single call is bounded by ``fuzz.default_hang_seconds()``)."""
PLANTED_HANG_SECONDS = 3.0
"""The per-call deadline the planted-hang meta-test runs under."""


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
    for h in result["hangs"]:
        lines.append(f"HANG {h['entry']} [{h['library']}]: {h['detail'][:300]}\n    input: {h['input']}")
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
    timeout = 120.0 + SECONDS_PER_INPUT * examples * len(fuzz.entry_points())
    result = fuzz.run_fuzz(examples, profile, timeout_s=timeout)
    write_json_atomic(REPORT, result)
    return result


def test_no_crash(fuzz_result: dict[str, Any]) -> None:
    """Neither library killed the interpreter on any input."""
    assert not fuzz_result["crashes"], _problems(fuzz_result)


def test_no_hang(fuzz_result: dict[str, Any]) -> None:
    """No call of either library ran past the per-call deadline."""
    assert not fuzz_result["hangs"], _problems(fuzz_result)


def test_no_contract_violation(fuzz_result: dict[str, Any]) -> None:
    """Every call returned the documented shape or raised a documented, bracketed error, and
    the two libraries accepted and refused the same inputs."""
    assert not fuzz_result["violations"], _problems(fuzz_result)


def test_every_entry_point_was_tried(fuzz_result: dict[str, Any]) -> None:
    """Each entry point got (nearly) its whole budget, and both libraries ran every input."""
    examples = fuzz_result["examples_per_entry"]
    least = max(1, int(0.9 * examples))  # Hypothesis runs exactly max_examples here; margin only
    entries = fuzz_result["entries"]
    missing = sorted(set(fuzz.entry_points()) - set(entries))
    assert not missing, f"entry points never fuzzed: {missing}\n{_problems(fuzz_result)}"
    abandoned = {
        n: e["abandoned_after_failures"]
        for n, e in entries.items()
        if "abandoned_after_failures" in e
    }
    assert not abandoned, (
        f"entry points abandoned after repeated crashes or hangs (test_no_crash/test_no_hang "
        f"have them): {abandoned}"
    )
    stopped = sorted(n for n, e in entries.items() if e.get("stopped_at_time_budget"))
    assert not stopped, f"entry points stopped at their time budget: {stopped}"
    short = {n: e["inputs"] for n, e in fuzz_result["entries"].items() if e["inputs"] < least}
    assert not short, f"entry points tried fewer than {least} times: {short}"
    for name, e in fuzz_result["entries"].items():
        for lib in ("mlx", "torch"):
            ran = e[lib]["accepted"] + e[lib]["refused"] + e[lib]["violations"]
            assert ran == e["inputs"] - e["crashed"] - e["hung"], (name, lib, e)


def test_inputs_are_a_mix_of_right_and_wrong(fuzz_result: dict[str, Any]) -> None:
    """The strategy is not degenerate: every entry point saw accepted AND refused inputs,
    so both halves of the contract were exercised."""
    for name, e in fuzz_result["entries"].items():
        assert e["mlx"]["accepted"] > 0, f"{name}: no input was ever accepted: {e}"
        assert e["mlx"]["refused"] > 0, f"{name}: no input was ever refused: {e}"


def test_fuzz_covers_every_public_op() -> None:
    """Every public name a conformance record covers has a fuzz entry point, declared by
    the record that covers it."""
    from conformance.registry import BUILTIN_REGISTRY

    uncovered = sorted(
        f"{record.name}: {name}"
        for record in BUILTIN_REGISTRY.values()
        for name in record.api
        if name not in {e.name for e in record.entry_points}
    )
    assert not uncovered, f"public ops without a fuzz entry point in their record: {uncovered}"


EXPECTED_ENTRY_POINTS = 21
"""The entry points fuzzed before the fuzz read the registry (issue 11): none may be lost."""


def _assert_accepts(entry: Any, strategy: Any, libraries: list[Any]) -> None:
    """Both libraries accept 5 inputs of ``strategy`` for ``entry``."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings

    from conformance.fuzz.library import run_one

    @hsettings(max_examples=5, database=None, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(strategy)
    def accepted(args: dict[str, Any]) -> None:
        for lib in libraries:
            outcome = run_one(entry, lib, args)
            assert outcome.status == "accepted", (entry.name, lib.name, outcome)

    accepted()


def test_every_entry_point_is_declared_and_starts_from_its_record() -> None:
    """All 21 entry points come from the registry, and each also draws valid inputs from
    its record's own ``cases`` strategy (``from_case``): those inputs are accepted by both
    libraries, so the map from a record case to the entry's arguments is right."""
    from conformance.fuzz.entries import record_inputs
    from conformance.fuzz.library import Library
    from conformance.registry import BUILTIN_REGISTRY as REGISTRY

    entries = {n: d for n, d in fuzz.entry_points().items() if d.record in REGISTRY}
    assert len(entries) == EXPECTED_ENTRY_POINTS, sorted(entries)
    libraries = [Library("mlx"), Library("torch")]
    for name, driven in entries.items():
        strategy = record_inputs(REGISTRY[driven.record], driven.entry)
        assert strategy is not None, f"{name}: no from_case map to its record's cases"
        _assert_accepts(driven.entry, strategy, libraries)


def test_pinned_inputs_are_kept() -> None:
    """The inputs pinned because they once broke the contract are still declared."""
    entries = fuzz.entry_points()
    pinned = {name: len(d.entry.pinned) for name, d in entries.items() if d.entry.pinned}
    assert pinned == {
        "quantization.quantized_matmul": 7,
        "nn.QuantizedLinear": 3,
        "nn.Linear": 1,
        "nn.Embedding": 3,
        "fast.scaled_dot_product_attention": 2,
        "quantization.dequantize": 2,
        "nn.repeat_kv": 1,
        "fast.layer_norm": 1,
        "fast.rope": 1,
    }, pinned


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
    shape = re.match(r"x=\w+\[([\d, ]*)\]", crashes[0]["input"])
    assert shape is not None and "0" in shape.group(1).split(", "), crashes[0]["input"]
    kinds = {v["kind"] for v in result["violations"] if v["entry"] == "selftest.misbehave"}
    assert "undocumented exception (call)" in kinds, kinds
    assert "message not bracketed" in kinds, kinds
    assert "wrong result" in kinds, kinds
    assert result["entries"]["selftest.misbehave"]["inputs"] == 30
    assert not result["hangs"], result["hangs"]
    assert not result["ok"]


def test_fuzz_reports_a_planted_hang_within_seconds() -> None:
    """Meta-test: an entry point that never returns on a zero-size input (as MLX's CPU sum
    over an empty last axis sometimes does) is reported as a HANG, not a crash, within
    seconds of the call starting, naming that exact input; the child is killed and
    restarted with the input skipped, and the entry points after it still run."""
    env = {**os.environ, fuzz.SELFTEST_ENV: "1"}
    result = fuzz.run_fuzz(
        30,
        "ci",
        entries=("selftest.hang", "selftest.misbehave"),
        env=env,
        libraries=("mlx",),
        max_crashes_per_entry=2,
        hang_s=PLANTED_HANG_SECONDS,
        timeout_s=300.0,
    )
    hangs = result["hangs"]
    assert not result["crashes"], result["crashes"]
    assert len(hangs) == 2, hangs  # two distinct zero-size inputs, then the entry is abandoned
    for hang in hangs:
        assert hang["entry"] == "selftest.hang" and hang["library"] == "mlx", hang
        assert PLANTED_HANG_SECONDS <= hang["seconds"] < PLANTED_HANG_SECONDS + 10.0, hang
        shape = re.match(r"x=\w+\[([\d, ]*)\]", hang["input"])
        assert shape is not None and "0" in shape.group(1).split(", "), hang["input"]
    assert hangs[0]["input"] != hangs[1]["input"], "the first hang's input was not skipped"
    assert result["entries"]["selftest.hang"]["abandoned_after_failures"] == 2
    assert result["entries"]["selftest.misbehave"]["inputs"] == 30  # the run went on
    assert not result["ok"]


def test_gpu_back_ends_have_no_float64_and_do_not_draw_it() -> None:
    """MLX's GPU back ends (CUDA and Metal) have no float64: there the fuzz draws another
    dtype wherever it would draw a float64 array or dtype argument, so no input it builds
    is one MLX cannot even hold; on the CPU float64 is drawn."""
    from hypothesis import given
    from hypothesis import settings as hsettings

    from conformance.fuzz import inputs
    from conformance.fuzz.library import Library, has_float64, mlx_backend

    assert has_float64("cpu")
    assert not has_float64("cuda") and not has_float64("metal") and not has_float64("gpu")
    assert mlx_backend() in ("cpu", "cuda", "metal", "gpu")
    seen: dict[bool, set[str]] = {True: set(), False: set()}

    def dtypes_drawn(supported: bool) -> None:
        inputs.set_float64_supported(supported)

        @hsettings(max_examples=60, database=None, derandomize=True)
        @given(inputs.any_arr())
        def draw(a: Any) -> None:
            seen[supported].add(a.dtype)

        draw()

    try:
        dtypes_drawn(True)
        dtypes_drawn(False)
        assert "float64" in seen[True], seen
        assert "float64" not in seen[False] and "float32" in seen[False], seen
        assert inputs.drawable("float64") == "float32"  # what arr() builds in its place
        mlx = Library("mlx")
        assert str(mlx.convert(inputs.DType("float64"))) == "mlx.core.float32"
    finally:
        inputs.set_float64_supported(has_float64(mlx_backend()))


def test_a_fuzz_hang_reaches_the_report_and_junit() -> None:
    """A hang in ``fuzz.json`` is counted in the report's summary and shows in the JUnit
    XML as an error of its entry point, naming the input, with the command that reruns it."""
    from conformance.junit import junit_cases
    from conformance.report import summary

    hang = {"entry": "nn.LayerNorm", "library": "mlx", "input": "x=float32[5, 1, 2, 0]=[]",
            "seconds": 20.1, "detail": "hang: one call ran past 20 s; the child was killed"}
    report = {"runs": [{"profile": "ci"}], "cells": [], "errors": [], "mutants": [],
              "divergences": [], "crashes": [],
              "fuzz": [{"profile": "ci", "examples_per_entry": 100, "total_inputs": 100,
                        "entries": {"nn.LayerNorm": {"inputs": 100}}, "violations": [],
                        "crashes": [], "hangs": [hang]}]}
    assert summary(report)["fuzz_hangs"] == 1
    (case,) = [c for c in junit_cases(report) if c.suite == "fuzz"]
    assert case.name == "nn.LayerNorm" and case.kind == "error", case
    assert "HANG [mlx]" in case.failure and "x=float32[5, 1, 2, 0]" in case.failure, case.failure
    assert "--entry=nn.LayerNorm" in case.rerun, case.rerun
