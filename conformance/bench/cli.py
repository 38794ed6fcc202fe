"""``python -m conformance bench record|compare|report``: thin drivers of pytest-benchmark.

``record`` runs ``tests/benchmarks/test_bench.py`` under pytest-benchmark and saves its
own JSON with ``--benchmark-storage=file://<out> --benchmark-save=<precision>``, i.e.
``<out>/<machine id>/NNNN_<precision>.json`` (default ``<out>``:
``reports/baselines/<backend>-<machine>/``), then renders ``report.md`` and
``report.html`` there. On CUDA it records both precision rows, each in its own process
(MLX reads ``MLX_ENABLE_TF32`` once at start-up): ``tf32`` (``MLX_ENABLE_TF32=1``, PyTorch
``allow_tf32=True``) and ``float32`` (``MLX_ENABLE_TF32=0``, ``allow_tf32=False``).

``compare`` runs the same benchmarks again with ``--benchmark-compare=<newest baseline of
that precision> --benchmark-compare-fail=median:<threshold>%``: pytest-benchmark prints the
comparison and fails the run when a benchmark's median got slower by more than the
threshold (default 30 %: on a shared 2-core machine the decode cells' IQR reaches 10-20 %;
choose lower on a quiet machine). Exit status: pytest's (0 fine, 1 regression or error).

``report`` renders Markdown and HTML from JSON files (or a baseline folder).

Extra arguments after ``--`` go to pytest (``-k``, ``--benchmark-*``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conformance.results import write_text_atomic
from conformance.runinfo import ROOT

BASELINES = ROOT / "reports" / "baselines"
BENCH_TESTS = "tests/benchmarks/test_bench.py"
DEFAULT_THRESHOLD = 30.0


def _backend(device: str) -> str:
    from conformance.bench import machine

    return machine.select_device(device)


def default_dir(device: str) -> Path:
    """``reports/baselines/<backend>-<machine>`` for the back end ``device`` selects."""
    from conformance.bench import machine

    return BASELINES / machine.machine_slug(_backend(device))


def precisions(backend: str, wanted: str) -> list[str]:
    """The precision rows to run: both on CUDA (unless one is asked for), float32 elsewhere."""
    if backend != "cuda":
        return ["float32"]
    return ["tf32", "float32"] if wanted == "both" else [wanted]


def _env(precision: str) -> dict[str, str]:
    return {**os.environ, "MLX_ENABLE_TF32": "1" if precision == "tf32" else "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def pytest_command(args: argparse.Namespace, *extra: str) -> list[str]:
    """The pytest invocation shared by record and compare."""
    return [sys.executable, "-m", "pytest", BENCH_TESTS, "-q", "-p", "no:cacheprovider", "--benchmark-only",
            "--benchmark-sort=name", "--benchmark-columns=median,iqr,stddev,rounds",
            f"--bench-device={args.device}", f"--bench-shapes={args.shapes}", f"--bench-target-s={args.target_s}",
            *extra, *args.pytest_args]


def write_report(files: list[Path], out: Path) -> None:
    """``report.md`` and ``report.html`` in ``out`` from pytest-benchmark JSON ``files``."""
    from conformance.bench.report import load_row, render_html, render_md

    rows = [load_row(f) for f in files]
    write_text_atomic(out / "report.md", render_md(rows))
    write_text_atomic(out / "report.html", render_html(rows))


def command_record(args: argparse.Namespace) -> int:
    """Run the benchmarks once per precision row; save pytest-benchmark JSON and the report."""
    from conformance.bench.report import latest_files

    backend = _backend(args.device)
    out = Path(args.out) if args.out else default_dir(args.device)
    out.mkdir(parents=True, exist_ok=True)
    status = 0
    for precision in precisions(backend, args.precision):
        cmd = pytest_command(args, f"--benchmark-storage=file://{out.resolve()}", f"--benchmark-save={precision}")
        print(f"[bench] {precision}: {' '.join(cmd)}", flush=True)
        status = max(status, subprocess.run(cmd, cwd=ROOT, env=_env(precision), check=False).returncode)
    files = latest_files(out)
    if files:
        write_report(files, out)
        print(f"[bench] saved {', '.join(str(f) for f in files)}; report {out / 'report.html'}")
    return status


def command_compare(args: argparse.Namespace) -> int:
    """Run again and let pytest-benchmark compare with the newest stored baseline."""
    from conformance.bench.report import latest_files

    backend = _backend(args.device)
    base_dir = Path(args.baseline) if args.baseline else default_dir(args.device)
    stored = {f.name.split("_", 1)[1].removesuffix(".json"): f for f in latest_files(base_dir)} \
        if base_dir.is_dir() else {}
    status = 0
    for precision in precisions(backend, args.precision):
        baseline = stored.get(precision)
        if baseline is None:
            print(f"[bench] no {precision} baseline under {base_dir}; record one first: "
                  f"python -m conformance bench record --out {base_dir}", file=sys.stderr)
            return 2
        cmd = pytest_command(args, f"--benchmark-compare={baseline.resolve()}",
                             f"--benchmark-compare-fail=median:{args.threshold:g}%")
        print(f"[bench] {precision} against {baseline}: {' '.join(cmd)}", flush=True)
        status = max(status, subprocess.run(cmd, cwd=ROOT, env=_env(precision), check=False).returncode)
    return status


def command_report(args: argparse.Namespace) -> int:
    """Render the report from JSON files or a baseline folder."""
    from conformance.bench.report import ReportError, latest_files

    files: list[Path] = []
    for given in args.files or [str(default_dir("auto"))]:
        path = Path(given)
        files += latest_files(path) if path.is_dir() else [path]
    if not files:
        print("[bench] no pytest-benchmark JSON files given or found.", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else files[0].parent.parent
    try:
        write_report(files, out)
    except ReportError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"[bench] {out / 'report.md'}, {out / 'report.html'}")
    return 0


def add_parser(sub: Any) -> None:
    """Register ``bench record|compare|report`` on the main CLI's subparsers."""
    bench = sub.add_parser("bench", help="pytest-benchmark baselines: MLX against the idiomatic PyTorch op")
    actions = bench.add_subparsers(dest="action", required=True)
    for name, func, text in (("record", command_record, "run the benchmarks and save a pytest-benchmark baseline"),
                             ("compare", command_compare, "run again; fail past the median threshold")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                       help="MLX device: auto = Metal/CUDA when MLX has it, else the CPU")
        p.add_argument("--shapes", default="auto", choices=("auto", "full", "cpu", "tiny"),
                       help="auto: the CPU shapes on MLX's CPU back end, the full ones on a GPU")
        p.add_argument("--precision", default="both", choices=("both", "tf32", "float32"),
                       help="CUDA only: which float32 precision rows (both by default)")
        p.add_argument("--target-s", type=float, default=0.4, help="seconds of timed rounds per benchmark")
        p.add_argument("pytest_args", nargs="*", help="after --: extra pytest arguments (-k EXPR, ...)")
        if name == "record":
            p.add_argument("--out", default=None, help="baseline folder (default reports/baselines/<backend>-<machine>)")
        else:
            p.add_argument("--baseline", default=None, help="baseline folder (default reports/baselines/<backend>-<machine>)")
            p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                           help="fail when a median is this many percent slower (default 30)")
        p.set_defaults(func=func)
    p = actions.add_parser("report", help="render report.md/report.html from pytest-benchmark JSON files")
    p.add_argument("files", nargs="*", help="JSON files or baseline folders (default this machine's)")
    p.add_argument("--out", default=None, help="output folder (default: the baseline folder)")
    p.set_defaults(func=command_report)
