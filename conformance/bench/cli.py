"""``python -m conformance bench record|compare``.

``record`` times every registry benchmark cell on MLX's back end (Metal on Apple silicon,
CUDA where ``mlx[cuda13]`` is installed, the CPU otherwise; ``--device cpu`` forces the
CPU) and writes ``baseline.json``, ``report.md`` and ``report.html`` (atomically) to
``reports/baselines/<backend>-<machine>/``. It exits 1 when a cell could not be timed
(the baseline is still written, with the error in it).

``compare`` reads that baseline first (missing, corrupt or foreign: a one-line message
and exit 2), runs the same cells again at the baseline's shapes (or reads ``--current``),
measures any cell that regressed once more (each side keeps its faster median), writes
``current.json``, ``comparison.md`` and ``comparison.html`` next to the baseline (or to
``--out``) and exits 1 when a cell still regressed under the rule of
:mod:`conformance.bench.baseline` (25 % and beyond the noise, by default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from conformance.bench.baseline import (
    DEFAULT_THRESHOLD,
    BaselineError,
    compare,
    keep_faster,
    load_baseline,
)
from conformance.results import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent.parent
BASELINES = ROOT / "reports" / "baselines"


def default_dir(device: str) -> Path:
    """``reports/baselines/<backend>-<machine>`` for the back end ``device`` selects."""
    from conformance.bench import machine

    return BASELINES / machine.machine_slug(machine.select_device(device))


def write_run(run: dict[str, Any], out: Path) -> None:
    """``baseline.json``, ``report.md`` and ``report.html``, each written atomically."""
    from conformance.bench.render import render_report_html, render_report_md

    write_json_atomic(out / "baseline.json", run)
    write_text_atomic(out / "report.md", render_report_md(run))
    write_text_atomic(out / "report.html", render_report_html(run))


def _options(args: argparse.Namespace, shapes: str):
    from conformance.bench.runner import Budget, Options

    budget = Budget(target_s=args.target_s, cap_s=max(2.0, 4 * args.target_s))
    return Options(device=args.device, shapes=shapes, records=args.record, budget=budget,
                   raw_torch=not args.no_raw_torch, overhead=not args.no_overhead)


def _errors(run: dict[str, Any]) -> list[str]:
    return [f"{e['key']}: {e['errors']}" for e in run["results"] if e.get("errors")]


def command_record(args: argparse.Namespace) -> int:
    """Run every benchmark cell and write the baseline and its report."""
    from conformance.bench.render import GOAL_RATIO, goal_summary
    from conformance.bench.runner import run

    out = Path(args.out) if args.out else default_dir(args.device)
    result = run(_options(args, args.shapes))
    write_run(result, out)
    within, total, beyond = goal_summary(result)
    print(f"[bench] {within}/{total} cells within {GOAL_RATIO}x of PyTorch; beyond: {', '.join(beyond) or 'none'}")
    print(f"[bench] baseline: {out / 'baseline.json'}; report: {out / 'report.html'}")
    errors = _errors(result)
    for line in errors:
        print(f"[bench] ERROR {line}", file=sys.stderr)
    return 1 if errors else 0


def command_compare(args: argparse.Namespace) -> int:
    """Compare a fresh run (or ``--current``) with the stored baseline."""
    from conformance.bench.render import fmt_time, render_comparison_html, render_comparison_md
    from conformance.bench.runner import run

    try:
        base_path = Path(args.baseline) if args.baseline else default_dir(args.device) / "baseline.json"
        base = load_baseline(base_path)
        options = _options(args, base["settings"]["shapes"])
        current = load_baseline(Path(args.current)) if args.current else run(options)
    except BaselineError as exc:
        print(exc, file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else (base_path if base_path.is_dir() else base_path.parent)
    cmp = compare(base, current, args.threshold, args.min_delta_us * 1e-6)
    if cmp.regressions and not args.current:
        # Measure the regressed cells once more; each side keeps its faster median.
        keys = {key for key, _ in cmp.regressions}
        print(f"[bench] {len(keys)} cell(s) regressed; measuring them again: {', '.join(sorted(keys))}")
        options.keys, options.roofline = keys, current["roofline"]
        keep_faster(current, run(options))
        cmp = compare(base, current, args.threshold, args.min_delta_us * 1e-6)
    if not args.current:
        write_json_atomic(out / "current.json", current)
    write_text_atomic(out / "comparison.md", render_comparison_md(cmp, base, current))
    write_text_atomic(out / "comparison.html", render_comparison_html(cmp, base, current))
    for warning in cmp.warnings:
        print(f"[bench] warning: {warning}")
    for key, change in cmp.regressions:
        print(f"[bench] REGRESSED {key} {change.side}: {fmt_time(change.base_s)} -> {fmt_time(change.new_s)} "
              f"({change.verdict}; noise {fmt_time(change.noise_s)})")
    print(f"[bench] {len(cmp.regressions)} regression(s) in {len(cmp.rows)} cells compared "
          f"(threshold {args.threshold:.0%} and beyond the IQR noise); {out / 'comparison.html'}")
    return 1 if cmp.regressions else 0


def add_parser(sub: Any) -> None:
    """Register ``bench record`` and ``bench compare`` on the main CLI's subparsers."""
    bench = sub.add_parser("bench", help="record or compare performance baselines (MLX vs PyTorch)")
    actions = bench.add_subparsers(dest="action", required=True)
    for name, func, text in (("record", command_record, "time every registry benchmark and write a baseline"),
                             ("compare", command_compare, "run again and compare with the stored baseline")):
        p = actions.add_parser(name, help=text)
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"),
                       help="MLX device: auto = Metal/CUDA when MLX has it, else the CPU")
        p.add_argument("--record", action="append", help="only this registry record (repeatable)")
        p.add_argument("--target-s", type=float, default=0.5,
                       help="seconds of samples per timed call (at least 5 samples; 3 for slow calls)")
        p.add_argument("--no-raw-torch", action="store_true", help="skip the idiomatic PyTorch op column")
        p.add_argument("--no-overhead", action="store_true", help="skip the layer-overhead pairs")
        p.add_argument("--out", default=None, help="output directory (default reports/baselines/<backend>-<machine>)")
        p.set_defaults(func=func)
        if name == "record":
            p.add_argument("--shapes", default="auto", choices=("auto", "full", "cpu", "tiny"),
                           help="auto: the CPU shapes on the CPU back end, the full ones on a GPU")
        else:
            p.add_argument("--baseline", default=None, help="baseline.json or its directory")
            p.add_argument("--current", default=None, help="compare this run JSON instead of running now")
            p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                           help="relative slowdown that fails when also beyond the noise (default 0.25)")
            p.add_argument("--min-delta-us", type=float, default=0.0,
                           help="also ignore slowdowns below this many microseconds (shared machines)")
