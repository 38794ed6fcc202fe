"""The parent of the fuzz (:func:`run_fuzz`): runs the child (:mod:`conformance.fuzz.child`)
in a subprocess, watches it, and survives what it dies or hangs of.

- **Crash**: the child dies of a signal (an MLX kernel's SIGSEGV/SIGFPE/SIGABRT) or exits
  oddly. The input in flight is read from the ``current`` file the child rewrites before
  every library call; it is recorded under ``crashes`` and skipped in the next child.
- **Hang**: the ``current`` file is also the child's heartbeat. When one library call has
  been in flight for ``hang_s`` seconds (default :func:`default_hang_seconds`), the child is killed
  and that exact input is recorded under ``hangs`` (distinct from crashes), then skipped
  in the next child. A child stuck between calls (input generation) for
  ``IDLE_FACTOR * hang_s`` is a hang too, named as such; so is a child that never starts
  its first call within :data:`STARTUP_SECONDS`.
- **Time limit**: the whole run is bounded by ``timeout_s``; entry points not reached by
  then are recorded as crashes with "not run". For the ``thorough`` profile each entry
  point also gets a time budget (:data:`FUZZ_SECONDS_PER_ENTRY`) after which the child stops
  drawing for it, so that profile's fuzz finishes in bounded time without a false alarm.

After ``max_crashes_per_entry`` crashes or hangs an entry point is abandoned (keeping the
counts of its last checkpoint) and the rest of the budget still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conformance.runinfo import ROOT, exit_text

SCHEMA = "mlx-conformance-fuzz/2"
"""Version 2 added ``hangs`` (and per-entry ``hung``) beside ``crashes``."""

FUZZ_EXAMPLES = {"ci": 100, "dev": 40, "thorough": 1000}
"""Hypothesis examples per entry point for each profile (``ci`` fits the CI budget)."""
FUZZ_SECONDS_PER_ENTRY: dict[str, float | None] = {"ci": None, "dev": None, "thorough": 60.0}
"""A per-entry-point time budget (``None``: run every example). ``thorough`` caps each of
the ~21 entry points at a minute, so its fuzz ends within about half an hour."""
MAX_CRASHES_PER_ENTRY = 3
SELFTEST_ENV = "CONFORMANCE_FUZZ_SELFTEST"
"""Set to 1 to add the contract-breaking self-test entry points (:mod:`conformance.fuzz.selftest`)."""
HANG_SECONDS = 20.0
"""One library call running this long is a hang on MLX's CPU back end. The fuzz's inputs are
small (at most tens of thousands of elements): a healthy call takes milliseconds, even on a
loaded 2-core CPU."""
GPU_HANG_SECONDS = 120.0
"""The same on a GPU back end (CUDA, Metal), where a call's first use of a kernel compiles it
at run time: on an H200 one quantized-matmul call of the fuzz took past 20 s in its first
use (MLX 0.32.4 CUDA, 2026-11-30), and a call may compile several kernels."""


def default_hang_seconds() -> float:
    """``$CONFORMANCE_FUZZ_HANG_SECONDS`` if set, else :data:`HANG_SECONDS` on the CPU and
    :data:`GPU_HANG_SECONDS` on a GPU back end."""
    given = os.environ.get("CONFORMANCE_FUZZ_HANG_SECONDS")
    if given:
        return float(given)
    from conformance.fuzz.library import mlx_backend

    return HANG_SECONDS if mlx_backend() == "cpu" else GPU_HANG_SECONDS


IDLE_FACTOR = 5.0
STARTUP_SECONDS = 300.0
"""Importing MLX, PyTorch and the registry on a loaded machine; past this the child hung."""
POLL_SECONDS = 0.2


def default_timeout(profile: str, entries: int) -> float:
    """The whole run's time limit: 900 s, or the per-entry budgets plus 10 minutes."""
    per_entry = FUZZ_SECONDS_PER_ENTRY.get(profile)
    return 900.0 if per_entry is None else per_entry * entries + 600.0


def _empty_entry(libraries: Sequence[str]) -> dict[str, Any]:
    counts = {"accepted": 0, "refused": 0, "violations": 0, "refused_by": {}}
    return {"inputs": 0, "crashed": 0, "hung": 0, "disagreements": 0,
            "exception_type_mismatches": 0, **{lib: dict(counts) for lib in libraries}}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _watch(
    proc: subprocess.Popen[bytes], current: Path, hang_s: float, deadline: float
) -> tuple[str, float]:
    """Wait for the child to exit, or decide it hung. Returns ``("exited", 0)``,
    ``("hang", seconds)``, ``("idle", seconds)``, ``("startup", seconds)`` or
    ``("time limit", seconds)``; the child is killed in every case but the first."""
    launched = time.time()
    while proc.poll() is None:
        time.sleep(POLL_SECONDS)
        now = time.time()
        verdict = ""
        try:
            stat = current.stat()
            age = now - stat.st_mtime
            in_call = stat.st_size > 0  # the child empties it between calls
            if in_call and age > hang_s:
                verdict = "hang"
            elif not in_call and age > IDLE_FACTOR * hang_s:
                verdict = "idle"
        except FileNotFoundError:
            age = now - launched
            if age > STARTUP_SECONDS:
                verdict = "startup"
        if not verdict and time.monotonic() > deadline:
            verdict, age = "time limit", now - launched
        if verdict:
            _dump_stacks(proc)
            proc.kill()
            proc.wait()
            return verdict, age
    return "exited", 0.0


def _dump_stacks(proc: subprocess.Popen[bytes]) -> None:
    """Ask a stuck child for every thread's Python stack (the child registers faulthandler
    on SIGUSR1), so the hang's report shows where it was stuck; then it is killed."""
    if hasattr(signal, "SIGUSR1"):
        try:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1.0)
        except ProcessLookupError:
            pass


def run_fuzz(
    examples: int,
    profile: str = "ci",
    *,
    entries: Sequence[str] | None = None,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    libraries: Sequence[str] = ("mlx", "torch"),
    max_crashes_per_entry: int = MAX_CRASHES_PER_ENTRY,
    hang_s: float | None = None,
    entry_seconds: float | None = None,
) -> dict[str, Any]:
    """Run the fuzz child, restarting it after a crash or a hang with that input skipped.

    ``entry_seconds`` defaults to the profile's :data:`FUZZ_SECONDS_PER_ENTRY`;
    ``timeout_s`` to :func:`default_timeout`. Returns the merged result: per-entry counts,
    violations, notes, crashes and hangs (each with the exact input in flight), the total
    number of inputs, the elapsed time and ``ok`` (no violation, crash or hang).
    """
    env = dict(env or os.environ)
    if entries is None:
        entries = _entry_names(env)
    pending = list(entries)
    if entry_seconds is None:
        entry_seconds = FUZZ_SECONDS_PER_ENTRY.get(profile)
    if timeout_s is None:
        timeout_s = default_timeout(profile, len(pending))
    if hang_s is None:
        hang_s = default_hang_seconds()
    merged: dict[str, Any] = {
        "schema": SCHEMA,
        "profile": profile,
        "examples_per_entry": examples,
        "seconds_per_entry": entry_seconds,
        "hang_seconds": hang_s,
        "libraries": list(libraries),
        "entries": {},
        "violations": [],
        "notes": [],
        "crashes": [],
        "hangs": [],
    }
    failures_by_entry: dict[str, int] = {}
    skip: dict[str, str] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        work = Path(tmp)
        part, current, skip_file = work / "part.json", work / "current.txt", work / "skip.json"
        out_file, err_file = work / "stdout.txt", work / "stderr.txt"
        while pending:
            for p in (part, current):
                p.unlink(missing_ok=True)
            skip_file.write_text(json.dumps(skip), encoding="utf-8")
            cmd = [
                sys.executable, "-m", "conformance.fuzz",
                "--examples", str(examples), "--profile", profile,
                "--json", str(part), "--current", str(current), "--skip", str(skip_file),
                *(["--entry-seconds", str(entry_seconds)] if entry_seconds is not None else []),
                *(f"--library={lib}" for lib in libraries),
                *(f"--entry={e}" for e in pending),
            ]
            with out_file.open("wb") as out, err_file.open("wb") as err:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
                verdict, seconds = _watch(proc, current, hang_s, started + timeout_s)
            code = proc.returncode
            tail = _stderr_excerpt(_read(err_file) or _read(out_file))
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
            if verdict == "exited" and code in (0, 1):
                if pending:  # exited normally yet did not finish: treat as a crash of the next one
                    merged["crashes"].append({"entry": pending[0], "library": "?", "input": "",
                                              "detail": f"child exited {code} early; {tail}"})
                    pending.pop(0)
                break
            culprit = _read(current).split("\n", 2)
            in_call = len(culprit) > 2 and verdict in ("exited", "hang")
            entry = culprit[0] if in_call else (partial.get("in_progress") or (pending or ["?"])[0])
            library = culprit[1] if in_call else "?"
            text = culprit[2].rstrip("\n") if in_call else ""
            if verdict == "time limit":
                merged["crashes"].append({"entry": entry, "library": library, "input": text,
                                          "detail": f"time limit: {timeout_s:.0f} s total spent; {tail}"})
                merged["crashes"] += [{"entry": n, "library": "?", "input": "",
                                       "detail": "not run: the time limit was spent"}
                                      for n in pending if n != entry]
                break
            if verdict == "exited":
                merged["crashes"].append({"entry": entry, "library": library, "input": text,
                                          "detail": f"{exit_text(code)}; {tail}"})
            else:
                what = {"hang": f"one call ran past {hang_s:g} s",
                        "idle": f"stuck {seconds:.0f} s between library calls (input generation?)",
                        "startup": f"no call started within {STARTUP_SECONDS:g} s of launch"}[verdict]
                merged["hangs"].append({"entry": entry, "library": library, "input": text,
                                        "seconds": round(seconds, 1),
                                        "detail": f"hang: {what}; the child was killed; its stacks: {tail}"})
            failures_by_entry[entry] = failures_by_entry.get(entry, 0) + 1
            if text:
                skip[f"{entry}|{text}"] = "crash" if verdict == "exited" else "hang"
            if (failures_by_entry[entry] >= max_crashes_per_entry or not text) and entry in pending:
                pending.remove(entry)  # give up on it, keeping the counts of its last checkpoint
                last = partial.get("entries", {}).get(entry)
                if last is None or partial.get("in_progress") != entry:
                    last = _empty_entry(libraries)
                merged["entries"][entry] = {**last, "abandoned_after_failures": failures_by_entry[entry]}
                for section in ("violations", "notes"):  # the child saved each one as found
                    merged[section] += [v for v in partial.get(section, []) if v["entry"] == entry]
    per_entry = merged["entries"]
    merged["total_inputs"] = sum(e["inputs"] for e in per_entry.values())
    merged["elapsed_s"] = round(time.monotonic() - started, 2)
    merged["ok"] = not merged["violations"] and not merged["crashes"] and not merged["hangs"]
    return merged


def _entry_names(env: Mapping[str, str]) -> list[str]:
    """The entry points the child will know (the self-test ones only under its variable)."""
    from conformance.fuzz.entries import entry_names

    saved = os.environ.get(SELFTEST_ENV)
    try:
        if env.get(SELFTEST_ENV) is None:
            os.environ.pop(SELFTEST_ENV, None)
        else:
            os.environ[SELFTEST_ENV] = env[SELFTEST_ENV]
        return entry_names()
    finally:
        if saved is None:
            os.environ.pop(SELFTEST_ENV, None)
        else:
            os.environ[SELFTEST_ENV] = saved


def _stderr_excerpt(text: str) -> str:
    """The useful part of a dead or stuck child's stderr: faulthandler's dump (after a fatal
    signal, or on the parent's SIGUSR1 for a hang) starts with the innermost frames, so keep
    its head; otherwise the tail (a Python traceback's end)."""
    for marker in ("Fatal Python error", "Current thread 0x", "Thread 0x"):
        start = text.find(marker)
        if start >= 0:
            return text[start : start + 1500]
    return text[-2000:]


def summary_line(result: Mapping[str, Any]) -> str:
    """One line for logs: inputs, entry points, violations, crashes, hangs."""
    return (
        f"{result['total_inputs']} inputs over {len(result['entries'])} entry points "
        f"({result['examples_per_entry']} Hypothesis examples each, profile {result['profile']}); "
        f"{len(result['violations'])} distinct violations, {len(result['crashes'])} crashes, "
        f"{len(result.get('hangs', []))} hangs"
    )
