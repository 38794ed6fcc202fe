"""Command line: ``python -m conformance run`` (the main job), ``merge`` and ``bench``
(``record``/``compare`` performance baselines: :mod:`conformance.bench.cli`).

``run`` executes every registry record's conformance cells, error cases and mutation
meta-tests, each record in its own pytest subprocess, so that an MLX abort or a segfault
in a kernel loses nothing but that one test: the subprocess rewrites its partial results
after every test and names the test it is in, and the crash is recorded as a failure.
Then it writes the report (JSON, Markdown, HTML) atomically and exits non-zero when any
cell, error case or mutant failed, or anything crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from conformance.bench import cli as bench_cli
from conformance.model import cli as model_cli
from conformance.model import fixtures, sweep_cli
from conformance.report import SCHEMA, load_report, merge, summary, update_readme, write_report
from conformance.runinfo import ROOT

TUNE_ENV = "CONFORMANCE_TUNE_CPU"
"""Set to 1 to make a pytest session tune MLX's CPU back end (``mlx_impl.cpu_backend``)."""
TEST_FILES = ("tests/test_conformance.py", "tests/test_error_cases.py", "tests/meta/test_mutants.py")


def run_header(profile: str) -> dict[str, Any]:
    """The report header (:func:`conformance.runinfo.run_header`)."""
    from conformance.runinfo import run_header as header

    return header(profile)


def _run_record(name: str, profile: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """One record's tests in a subprocess; returns its partial results (+ crash, if any)."""
    part = work / f"{name}.json"
    part.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-p", "no:cacheprovider",
           f"--hypothesis-profile={profile}", f"--conformance-record={name}", f"--conformance-json={part}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    try:
        partial = json.loads(part.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        partial = {"cells": []}
    crashes = []
    # pytest exits 0 (all passed) or 1 (some failed); anything else (a signal, an internal
    # error) means the process did not finish its own bookkeeping.
    if proc.returncode not in (0, 1):
        tail = (proc.stderr or proc.stdout)[-1500:]
        crashes.append({"test": partial.get("running") or f"record {name}",
                        "detail": f"exit status {proc.returncode}; {tail}"})
    partial["crashes"] = crashes
    partial["returncode"] = proc.returncode
    print(f"  {name}: exit {proc.returncode}, {len(partial.get('cells', []))} cells"
          + (f", CRASH in {crashes[0]['test']}" if crashes else ""), flush=True)
    return partial


def command_run(args: argparse.Namespace) -> int:
    """Run the registry (or ``--record`` subsets) and write the report."""
    from conformance import plugins
    from mlx_impl import cpu_backend

    try:
        # Records modules from outside the project (--records, entry points, the env var);
        # the env var carries them into every subprocess below.
        plugins.add_record_modules(args.records or [])
        from conformance.registry import REGISTRY
    except plugins.PluginError as exc:
        print(exc, file=sys.stderr)
        return 2
    names = args.record or list(REGISTRY)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        print(f"[conformance] unknown records {unknown}; known: {sorted(REGISTRY)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    work = out / "_work"
    work.mkdir(parents=True, exist_ok=True)
    # Subprocesses share the cores: one math thread each keeps them from oversubscribing.
    # Each tunes MLX's CPU back end (cache limit, optimized BLAS) as it starts
    # (tests/conftest.py reads TUNE_ENV); the header below records the same configuration.
    env = {**os.environ, TUNE_ENV: "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    if args.tf32 != "default":  # MLX reads MLX_ENABLE_TF32 in each per-record subprocess
        os.environ["MLX_ENABLE_TF32"] = env["MLX_ENABLE_TF32"] = "1" if args.tf32 == "on" else "0"
    cpu_backend.tune_cpu(blas_threads=1)
    print(f"[conformance] {len(names)} records, profile {args.profile}, {args.jobs} at a time", flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        partials = list(pool.map(lambda n: _run_record(n, args.profile, work, env), names))
    report: dict[str, Any] = {"schema": SCHEMA, "runs": [run_header(args.profile)], "cells": [],
                              "divergences": [], "mutants": [], "errors": [], "crashes": []}
    if plugins.env_modules():  # rerun commands of user records need them (conformance.junit)
        report["runs"][0]["records_modules"] = plugins.env_modules()
    for partial in partials:
        for section in ("cells", "divergences", "mutants", "errors", "crashes"):
            report[section].extend(partial.get(section, []))
    fuzz_ok = _run_fuzz(args, env, out, report)
    models_ok = True
    if args.models if args.models is not None else not args.record:
        # Whole tiny models of every architecture (conformance/model/cli.py: TINY_SUITE).
        models_ok, report["models"] = model_cli.run_tiny_suite(out.parent / "models", env, args.jobs)
    write_report(report, out)
    if args.junitxml:
        from conformance.junit import write_junit

        write_junit(report, Path(args.junitxml))
    s = summary(report)
    print(f"[conformance] {s['cells'] - s['cells_failed']}/{s['cells']} cells conform, "
          f"{s['examples']} examples; mutants killed {s['mutants_killed']}/{s['mutants']}; "
          f"error cases {s['error_cases'] - s['error_cases_failed']}/{s['error_cases']}; "
          f"crashes {s['crashes']}. Report: {out / 'report.html'}")
    failed = (s["cells_failed"] or s["crashes"] or s["mutants_killed"] < s["mutants"]
              or s["error_cases_failed"] or any(p["returncode"] != 0 for p in partials) or not fuzz_ok
              or not models_ok)
    return 1 if failed else 0


def _run_fuzz(args: argparse.Namespace, env: dict[str, str], out: Path, report: dict[str, Any]) -> bool:
    """Fuzz every public entry point in a subprocess (:mod:`conformance.fuzz`); its counts go
    into ``report["fuzz"]`` and ``fuzz.json``. Skipped for ``--record`` subsets unless
    ``--fuzz-examples`` asks. Returns False when the fuzz found a violation or a crash."""
    from conformance.fuzz import FUZZ_EXAMPLES, run_fuzz, summary_line
    from conformance.results import write_json_atomic

    examples = args.fuzz_examples
    if examples is None:
        examples = 0 if args.record else FUZZ_EXAMPLES[args.profile]
    if examples <= 0:
        return True
    print(f"[conformance] fuzzing every public entry point, {examples} inputs each", flush=True)
    result = run_fuzz(examples, args.profile, env=env)
    write_json_atomic(out / "fuzz.json", result)
    report["fuzz"] = [result]
    print(f"[conformance] fuzz: {summary_line(result)}", flush=True)
    return bool(result["ok"])


def command_merge(args: argparse.Namespace) -> int:
    """Merge reports from several machines into one matrix (conformance reports, or
    architecture sweeps: folders holding ``sweep.json``)."""
    sweeps = [sweep_cli.is_sweep_dir(p) for p in args.reports]
    if any(sweeps):
        if not all(sweeps):
            raise SystemExit("[conformance] merge: give only sweep reports or only conformance reports.")
        return sweep_cli.command_merge_sweeps(args.reports, args.out)
    reports = [load_report(Path(p)) for p in args.reports]
    write_report(merge(reports), Path(args.out))
    print(f"[conformance] merged {len(reports)} reports into {args.out}")
    return 0


def command_readme(args: argparse.Namespace) -> int:
    """Copy a report's summary matrix into the README."""
    update_readme(ROOT / "README.md", load_report(Path(args.report)))
    print(f"[conformance] README summary updated from {args.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m conformance``."""
    parser = argparse.ArgumentParser(prog="python -m conformance", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the conformance matrix and write the report")
    run.add_argument("--profile", default="ci", choices=("ci", "dev", "thorough"))
    run.add_argument("--out", default=str(ROOT / "reports" / "conformance"))
    run.add_argument("--record", action="append", help="only this registry record (repeatable)")
    run.add_argument("--records", action="append", metavar="MODULE",
                     help="also register the RECORDS of this module of yours (repeatable; "
                          "see conformance/plugins.py)")
    run.add_argument("--junitxml", metavar="PATH", default=None,
                     help="also write the verdict as JUnit XML (one test case per cell, error "
                          "case, mutant and fuzzed entry point)")
    run.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    run.add_argument("--fuzz-examples", type=int, default=None,
                     help="fuzz inputs per public entry point (default: by profile; 0 skips the fuzz)")
    run.add_argument("--tf32", default="default", choices=("on", "off", "default"),
                     help="MLX's float32 matmul precision on CUDA/Metal: sets MLX_ENABLE_TF32=1/0 for the "
                          "per-record runs (default: leave the environment as it is; MLX's default is on)")
    run.add_argument("--models", action=argparse.BooleanOptionalAction, default=None,
                     help="also run the tiny-model conformance (default: unless --record)")
    run.set_defaults(func=command_run)
    from conformance.repro import add_parser as add_repro_parser

    add_repro_parser(sub)
    mrg = sub.add_parser("merge", help="merge report JSON files (or sweep report folders) from several machines")
    mrg.add_argument("reports", nargs="+")
    mrg.add_argument("--out", required=True)
    mrg.set_defaults(func=command_merge)
    readme = sub.add_parser("readme", help="copy a report's summary matrix into README.md")
    readme.add_argument("--report", default=str(ROOT / "reports" / "conformance" / "conformance.json"))
    readme.set_defaults(func=command_readme)
    bench_cli.add_parser(sub)
    model_cli.add_parser(sub)
    sweep_cli.add_parser(sub)
    fixtures.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))
