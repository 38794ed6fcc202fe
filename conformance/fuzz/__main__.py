"""``python -m conformance.fuzz``: the fuzzing child, or with ``--supervise`` the parent."""

from __future__ import annotations

import argparse
from pathlib import Path

from conformance.fuzz.supervisor import FUZZ_EXAMPLES, run_fuzz, summary_line


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the child or (``--supervise``) the parent."""
    parser = argparse.ArgumentParser(prog="python -m conformance.fuzz",
                                     description="Fuzz every public entry point of both libraries.")
    parser.add_argument("--examples", type=int, default=None, help="Hypothesis examples per entry point")
    parser.add_argument("--profile", default="ci", choices=tuple(FUZZ_EXAMPLES))
    parser.add_argument("--json", default=None, help="write the counts and violations here")
    parser.add_argument("--current", default=None, help="file naming the input in flight (crash isolation)")
    parser.add_argument("--skip", default=None,
                        help="JSON object {'entry|input': 'crash'|'hang'} of inputs not to run again")
    parser.add_argument("--entry", action="append", help="only this entry point (repeatable)")
    parser.add_argument("--library", action="append", choices=("mlx", "torch"), help="default: both")
    parser.add_argument("--entry-seconds", type=float, default=None,
                        help="stop drawing for an entry point after this many seconds (supervised default: by profile)")
    parser.add_argument("--hang-seconds", type=float, default=None,
                        help="with --supervise: one call running this long is a hang "
                             "(default: 20 s on the CPU, 120 s on a GPU back end)")
    parser.add_argument("--supervise", action="store_true",
                        help="run as the parent: crash and hang recovery, merged JSON")
    args = parser.parse_args(argv)
    args.library = args.library or ["mlx", "torch"]
    if args.examples is None:
        args.examples = FUZZ_EXAMPLES[args.profile]
    if not args.supervise:
        from conformance.fuzz.child import child_main

        return child_main(args)
    from conformance.results import write_json_atomic

    result = run_fuzz(args.examples, args.profile, entries=args.entry, libraries=args.library,
                      hang_s=args.hang_seconds, entry_seconds=args.entry_seconds)
    if args.json:
        write_json_atomic(Path(args.json), result)
    print(f"[fuzz] {summary_line(result)}")
    for v in result["violations"]:
        print(f"  VIOLATION {v['entry']} [{v['library']}] {v['kind']} x{v['count']}: {v['exception']} "
              f"{v['detail']}\n    input: {v['input']}")
    for c in result["crashes"]:
        print(f"  CRASH {c['entry']} [{c['library']}]: {c['detail'][:300]}\n    input: {c['input']}")
    for h in result["hangs"]:
        print(f"  HANG {h['entry']} [{h['library']}] after {h['seconds']} s: {h['detail']}\n    input: {h['input']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
