"""The fuzzing process (``python -m conformance.fuzz`` without ``--supervise``): drives
each entry point under Hypothesis, through both libraries, recording counts, violations
and notes, and rewriting its JSON as it goes so a crash loses nothing already found.

Before every library call it atomically replaces the ``--current`` file with the entry
point, the library and the full input: that file is the heartbeat the parent
(:mod:`conformance.fuzz.supervisor`) watches. Its content names the input a crash or a
hang happened on, and its age is how long the call in flight has been running.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import settings

from conformance.fuzz import inputs
from conformance.fuzz.entries import DrivenEntry, entry_points
from conformance.fuzz.inputs import describe
from conformance.fuzz.library import Library, Outcome, has_float64, mlx_backend, run_one
from conformance.record import FuzzArgs

CHECKPOINT_EVERY = 20
CHUNK_EXAMPLES = 50
"""With a time budget per entry point, Hypothesis runs this many examples at a time."""
"""The child rewrites its counts every this many inputs, so an entry point abandoned after
crashes still reports how many inputs it tried."""


@dataclass
class EntryStats:
    """Counts for one entry point."""

    inputs: int = 0
    crashed: int = 0
    hung: int = 0
    disagreements: int = 0
    type_mismatches: int = 0
    stopped_at_time_budget: bool = False
    record_case_draws: list[int] = field(default_factory=lambda: [0])
    libraries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def lib(self, name: str) -> dict[str, Any]:
        """One library's counts (created empty)."""
        return self.libraries.setdefault(
            name, {"accepted": 0, "refused": 0, "violations": 0, "refused_by": {}}
        )


class Fuzzer:
    """Runs the entry points under Hypothesis, recording counts and violations.

    ``skip`` maps ``"entry|input"`` to ``"crash"`` or ``"hang"``: inputs that killed or
    hung an earlier child, counted but not run again.
    """

    def __init__(self, current: Path | None, skip: dict[str, str], libraries: Sequence[Library]) -> None:
        self.current = current
        self.skip = skip
        self.libraries = libraries
        self.stats: dict[str, EntryStats] = {}
        self.violations: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []
        self.checkpoint: Callable[[str], None] | None = None
        self._seen: dict[tuple[str, ...], dict[str, Any]] = {}
        self._deadline = float("inf")

    def _mark(self, text: str) -> None:
        """Name the input about to run, atomically: a crash or a hang leaves exactly this
        behind, and the file's age is how long the call has run (``""``: between calls)."""
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

    def check(self, driven: DrivenEntry, args: FuzzArgs) -> None:
        """One input through both libraries, then their agreement."""
        entry = driven.entry
        stats = self.stats.setdefault(entry.name, EntryStats())
        if time.monotonic() > self._deadline:
            stats.stopped_at_time_budget = True  # the rest of Hypothesis's draws run nothing
            return
        if entry.fixup is not None:
            args = entry.fixup(args)
        stats.inputs += 1
        if self.checkpoint is not None and stats.inputs % CHECKPOINT_EVERY == 0:
            self.checkpoint(entry.name)
        text = describe(args)
        skipped = self.skip.get(f"{entry.name}|{text}")
        if skipped is not None:
            if skipped == "hang":
                stats.hung += 1
            else:
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
        self._mark("")  # between calls: the parent's hang clock for a call stops here
        if len(outcomes) == 2:
            self._agreement(entry.name, stats, outcomes["mlx"], outcomes["torch"], args)

    def _agreement(
        self, name: str, stats: EntryStats, m: Outcome, t: Outcome, args: FuzzArgs
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
                name,
                "both",
                f"disagreement: {kind}",
                detail,
                f"{m.exc_type or '-'}/{t.exc_type or '-'}",
                args,
                note=note,
            )

    def fuzz(self, driven: DrivenEntry, examples: int, profile: str, seconds: float | None) -> None:
        """Drive an entry point with its pinned inputs, then ``examples`` Hypothesis inputs
        under ``profile``. With a time budget (``seconds``) the examples run in chunks of
        :data:`CHUNK_EXAMPLES`, each under its own seed (reproducible), and no chunk starts
        once the budget is spent, so the entry point stops within about one chunk's time."""
        self._deadline = float("inf") if seconds is None else time.monotonic() + seconds
        stats = self.stats.setdefault(driven.entry.name, EntryStats())
        stats.record_case_draws = driven.record_case_draws
        for lib in self.libraries:
            stats.lib(lib.name)
        for args in driven.entry.pinned:
            self.check(driven, args)
        if seconds is None:
            self._drive(driven, examples, profile, None)
            return
        chunk = 0
        while chunk * CHUNK_EXAMPLES < examples and time.monotonic() < self._deadline:
            self._drive(driven, min(CHUNK_EXAMPLES, examples - chunk * CHUNK_EXAMPLES), profile, chunk)
            chunk += 1
        if chunk * CHUNK_EXAMPLES < examples:
            stats.stopped_at_time_budget = True

    def _drive(self, driven: DrivenEntry, examples: int, profile: str, chunk: int | None) -> None:
        """``examples`` Hypothesis inputs through :meth:`check` (``chunk``: seeded by it)."""
        from hypothesis import HealthCheck, given, seed

        def drive(args: FuzzArgs) -> None:
            self.check(driven, args)

        base = settings.get_profile(profile)
        run = given(driven.inputs)(drive)
        run = settings(
            base,
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=base.derandomize if chunk is None else False,  # a chunk has its own seed
        )(run)
        if chunk is not None:
            run = seed(chunk)(run)
        run()

    def as_dict(self) -> dict[str, Any]:
        """Counts per entry point, violations and notes (the child's JSON)."""
        entries = {
            name: {
                "inputs": s.inputs,
                "crashed": s.crashed,
                "hung": s.hung,
                "disagreements": s.disagreements,
                "exception_type_mismatches": s.type_mismatches,
                "record_case_draws": s.record_case_draws[0],
                **({"stopped_at_time_budget": True} if s.stopped_at_time_budget else {}),
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
    if hasattr(signal, "SIGUSR1"):  # the parent asks for every thread's stack before killing a hang
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    profiles.register()
    settings.load_profile(args.profile)
    if "mlx" in args.library:
        inputs.set_float64_supported(has_float64(mlx_backend()))
    known = entry_points()
    names = args.entry or list(known)
    unknown = sorted(set(names) - set(known))
    if unknown:
        print(f"[fuzz] unknown entry points {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    skip: dict[str, str] = {}
    if args.skip:
        skip = dict(json.loads(Path(args.skip).read_text(encoding="utf-8")))
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
        fuzzer.fuzz(known[name], args.examples, args.profile, args.entry_seconds)
        done.append(name)
        write(None)
    summary = fuzzer.as_dict()
    total = sum(e["inputs"] for e in summary["entries"].values())
    print(
        f"[fuzz] {total} inputs over {len(done)} entry points, "
        f"{len(summary['violations'])} distinct violations"
    )
    return 1 if summary["violations"] else 0
