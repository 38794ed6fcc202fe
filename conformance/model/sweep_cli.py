"""``python -m conformance sweep``: judge a candidate (mlx-lm) on a tiny checkpoint of every
architecture both it and transformers implement, and write the report.

    python -m conformance sweep --candidate mlx-lm [--arch llama,qwen2] [--jobs N|auto]
        [--timeout S] [--steps 16] [--out DIR] [--source NAME] [--strict]

It runs ``tests/sweep/test_sweep.py`` (one pytest test per architecture and
configuration) under pytest-xdist (``-n``: a worker that dies is replaced and only its
configuration is lost, recorded as a crash) and pytest-timeout (a configuration past
``--timeout`` is recorded as a timeout), then reads the result files into
``reports/sweep/<candidate>/`` (``sweep.json``, ``report.md``, ``report.html``).
``python -m conformance merge DIR... --out DIR`` joins several sweeps' reports.

Exit status: 0 when every configuration has an outcome the triage explains (or conforms);
1 when some outcome is untriaged, or a configuration crashed, timed out or hit a harness
error; with ``--strict``, 1 unless every configuration conforms (CI's smoke set).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conformance.runinfo import ROOT

TEST_FILE = "tests/sweep/test_sweep.py"
SMOKE_ARCHS = ("llama", "qwen2", "qwen3", "phi3")
"""The fixed handful CI runs (``nox -s sweep_smoke``): fast, dense, common."""


def add_parser(sub: Any) -> None:
    """Register ``sweep`` on ``python -m conformance``'s subparsers."""
    p = sub.add_parser("sweep", help="judge a candidate (mlx-lm) on every architecture it shares with transformers")
    p.add_argument("--candidate", default="mlx-lm",
                   help="what the judge runs: mlx-lm, mlx_impl, or pkg.mod:fn (default mlx-lm)")
    p.add_argument("--arch", default="", help="comma list of model types (default: every one discovered)")
    p.add_argument("--jobs", default="1", help="pytest-xdist workers: a number or 'auto' (default 1)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration before it is a timeout")
    p.add_argument("--steps", type=int, default=16, help="cached decode steps after the 8-token prefill")
    p.add_argument("--out", default=None, help="report folder (default reports/sweep/<candidate>/)")
    p.add_argument("--source", default="", help="a name for this machine in a merged matrix (default: none)")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every configuration conforms")
    p.set_defaults(func=command_sweep)


def _jobs(text: str) -> str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise SystemExit(f"[sweep] --jobs must be a positive number or 'auto' but got {text!r}.")
    return str(n)


def pytest_command(jobs: str, timeout: float, configurations: int) -> list[str]:
    """The pytest command line of a sweep (xdist workers, thread-method timeouts, a worker
    replaced after each crash, as many times as there are configurations)."""
    return [sys.executable, "-m", "pytest", TEST_FILE, "-n", jobs, f"--max-worker-restart={configurations}",
            f"--timeout={timeout:g}", "--timeout-method=thread", "-p", "no:cacheprovider", "-q",
            "--tb=line", "-rN"]


def run_header(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """What the report records about the run."""
    from conformance.model.sweep_run import PROMPT_LEN
    from conformance.runinfo import project_commit

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "commit": project_commit(), "platform": platform.platform(), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "jobs": args.jobs, "timeout": args.timeout,
            "steps": args.steps, "prompt_len": PROMPT_LEN, "seconds": round(seconds, 1),
            "command": "python -m conformance sweep " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["sweep"] else ""}


def command_sweep(args: argparse.Namespace) -> int:
    """Entry of ``python -m conformance sweep``."""
    from conformance.model.sweep_discovery import discover
    from conformance.model.sweep_report import build_report, collect_results, write_sweep_report
    from conformance.model.sweep_run import (
        CONFIGURATIONS,
        ENV_ARCHS,
        ENV_CANDIDATE,
        ENV_RESULTS,
        ENV_STEPS,
        ENV_WORK,
    )
    from conformance.model.sweep_triage import triage

    jobs = _jobs(args.jobs)
    if args.timeout <= 0 or args.steps < 1:
        raise SystemExit("[sweep] --timeout must be positive and --steps at least 1.")
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    discovery = discover(archs or None)
    if not discovery.architectures:
        raise SystemExit("[sweep] no architecture to run.")
    out = Path(args.out) if args.out else ROOT / "reports" / "sweep" / args.candidate.replace(":", "_")
    n = len(discovery.architectures) * len(CONFIGURATIONS)
    print(f"[sweep] {len(discovery.architectures)} architectures x {len(CONFIGURATIONS)} configurations = {n}, "
          f"{jobs} job(s), timeout {args.timeout:g} s each", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="conformance-sweep-") as tmp:
        work = Path(tmp)
        results = work / "results"
        results.mkdir()
        env = {**os.environ, ENV_RESULTS: str(results), ENV_WORK: str(work), ENV_CANDIDATE: args.candidate,
               ENV_ARCHS: ",".join(a.model_type for a in discovery.architectures), ENV_STEPS: str(args.steps),
               "CONFORMANCE_TUNE_CPU": "1"}
        proc = subprocess.run(pytest_command(jobs, args.timeout, n), cwd=ROOT, env=env, check=False)
        found = collect_results(results)
    seconds = time.perf_counter() - started
    missing = n - len(found)
    if missing and proc.returncode not in (0, 1):
        raise SystemExit(f"[sweep] pytest exited {proc.returncode} with {missing} of {n} configurations "
                         "unrun; no report written.")
    report = build_report(found, candidate=args.candidate, run=run_header(args, seconds),
                          discovery=discovery.as_dict(), triage=triage(found), source=args.source)
    write_sweep_report(report, out)
    s = report["summary"]
    print(f"[sweep] {s['architectures']} architectures: {s['verdicts']} verdicts ({s['conforming']} conform, "
          f"{s['departing']} depart), no verdict {s['no_verdict']}; {len(report['triage']['untriaged'])} "
          f"configurations untriaged; {seconds:.0f} s. Report: {out / 'report.html'}", flush=True)
    return exit_status(report, strict=args.strict)


def exit_status(report: dict[str, Any], strict: bool = False) -> int:
    """0 or 1 by the rule in the module docstring."""
    results = report["configurations"]
    if strict:
        return 0 if results and all(r["status"] == "conforms" for r in results) else 1
    broken = any(r["status"] in ("error", "crash", "timeout") for r in results)
    return 1 if broken or report["triage"]["untriaged"] else 0


def is_sweep_dir(path: str) -> bool:
    """Whether ``path`` is a sweep report (a folder with ``sweep.json`` or that file)."""
    p = Path(path)
    return (p / "sweep.json").is_file() or (p.name == "sweep.json" and p.is_file())


def command_merge_sweeps(paths: list[str], out: str) -> int:
    """``python -m conformance merge DIR... --out DIR`` for sweep reports."""
    from conformance.model.sweep_report import load_sweep, merge_sweeps, write_sweep_report

    merged = merge_sweeps([load_sweep(Path(p)) for p in paths])
    write_sweep_report(merged, Path(out))
    s = merged["summary"]
    print(f"[sweep] merged {len(paths)} sweeps into {out}: {s['architectures']} architectures, "
          f"{s['verdicts']} verdicts")
    return 0
