"""JUnit XML from a conformance run, the format CI services display.

One ``<testcase>`` per conformance cell, error case, mutant, expected divergence, crash and
fuzzed entry point, grouped in one ``<testsuite>`` each; every failing one carries the
failure text and the command that reruns it. Written by ``python -m conformance run
--junitxml PATH`` from the run's report dict, or from a saved report with
``python -m conformance.junit REPORT.json OUT.xml``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.plugins import RECORDS_ENV
from conformance.results import write_text_atomic

__all__ = ["JUnitCase", "junit_cases", "junit_xml", "main", "write_junit"]

# XML 1.0 cannot hold most control characters; failure texts may quote raw inputs.
_XML_ILLEGAL = {c: "?" for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20))}


@dataclass(frozen=True)
class JUnitCase:
    """One test case: its suite, class and name, and when it failed, why and how to rerun it.

    ``kind`` is ``"failure"`` (a check said no) or ``"error"`` (a crash: nothing was judged).
    """

    suite: str
    classname: str
    name: str
    failure: str = ""
    rerun: str = ""
    kind: str = "failure"


def _pytest(nodeid: str, profile: str) -> str:
    return f"python -m pytest {shlex.quote(nodeid)} --hypothesis-profile={profile}"


def _cells(report: Mapping[str, Any], profile: str) -> Iterable[JUnitCase]:
    for cell in report.get("cells", []):
        name = f"{cell['op']}-{cell['dtype']}-{cell['mode']}"
        failed = cell.get("status") != "pass"
        text = ""
        if failed:
            text = (
                f"{cell['op']} [{cell['dtype']}, {cell['mode']}] does not conform: "
                f"{cell.get('failures', 0)} of {cell.get('examples', 0)} examples and "
                f"{cell.get('edge_failures', 0)} of {cell.get('edge_cases', 0)} edge cases "
                f"failed.\n{cell.get('first_failure', '')}"
            )
        rerun = cell.get("reproduce") or _pytest(f"tests/test_conformance.py::test_conforms[{name}]", profile)
        yield JUnitCase("cells", f"conformance.cells.{cell['op']}", name, text, rerun)


def _error_cases(report: Mapping[str, Any], profile: str) -> Iterable[JUnitCase]:
    for error in report.get("errors", []):
        name = f"{error['op']}-{error['case']}"
        text = "" if error.get("ok") else (
            f"{error['op']} / {error['case']}: both libraries must raise {error.get('raises')} "
            "with a bracketed message.\n" + "\n".join(error.get("problems", []))
        )
        rerun = _pytest(f"tests/test_error_cases.py::test_both_libraries_refuse[{name}]", profile)
        yield JUnitCase("error_cases", f"conformance.error_cases.{error['op']}", name, text, rerun)


def _mutants(report: Mapping[str, Any], profile: str) -> Iterable[JUnitCase]:
    for mutant in report.get("mutants", []):
        name = f"{mutant['op']}-{mutant['mutant']}"
        text = "" if mutant.get("killed") else (
            f"mutant '{mutant['mutant']}' of {mutant['op']} ({mutant.get('bug', '')}) survived "
            f"{mutant.get('examples_tried', '?')} examples [{mutant.get('dtype')}, "
            f"{mutant.get('mode')}]: the harness cannot see this bug."
        )
        rerun = _pytest(f"tests/meta/test_mutants.py::test_mutant_is_killed[{name}]", profile)
        yield JUnitCase("mutants", f"conformance.mutants.{mutant['op']}", name, text, rerun)


def _divergences(report: Mapping[str, Any], profile: str) -> Iterable[JUnitCase]:
    for div in report.get("divergences", []):
        name = f"{div['op']}-{div['name']}"
        text = "" if div.get("still_diverges", True) else (
            f"expected divergence {div['name']} of {div['op']} no longer reproduces: MLX "
            f"changed; remove the entry.\n{div.get('observed', '')}"
        )
        rerun = _pytest(f"tests/test_conformance.py::test_expected_divergence_still_diverges[{name}]",
                        profile)
        yield JUnitCase("divergences", f"conformance.divergences.{div['op']}", name, text, rerun)


def _crashes(report: Mapping[str, Any], profile: str) -> Iterable[JUnitCase]:
    for crash in report.get("crashes", []):
        test = str(crash.get("test", "?"))
        if test.startswith("record "):
            rerun = f"python -m conformance run --record {shlex.quote(test.removeprefix('record '))}"
        else:
            rerun = _pytest(test, profile)
        yield JUnitCase("crashes", "conformance.crashes", test,
                        f"the test process died: {crash.get('detail', '')}", rerun, kind="error")


def _fuzz(report: Mapping[str, Any]) -> Iterable[JUnitCase]:
    for result in report.get("fuzz", []):
        examples, profile = result.get("examples_per_entry"), result.get("profile", "ci")
        problems: dict[str, list[str]] = {}
        for v in result.get("violations", []):
            problems.setdefault(v["entry"], []).append(
                f"VIOLATION [{v.get('library')}] {v.get('kind')} x{v.get('count', 1)}: "
                f"{v.get('exception')} {v.get('detail')}\n  input: {v.get('input')}"
            )
        crashed: dict[str, list[str]] = {}
        for c in result.get("crashes", []):
            crashed.setdefault(c["entry"], []).append(
                f"CRASH [{c.get('library')}]: {c.get('detail')}\n  input: {c.get('input')}"
            )
        for h in result.get("hangs", []):  # a call killed at the per-call deadline
            crashed.setdefault(h["entry"], []).append(
                f"HANG [{h.get('library')}]: {h.get('detail')}\n  input: {h.get('input')}"
            )
        for entry in sorted(set(result.get("entries", {})) | set(problems) | set(crashed)):
            rerun = (f"python -m conformance.fuzz --supervise --entry={shlex.quote(entry)} "
                     f"--examples={examples} --profile={profile}")
            lines = crashed.get(entry, []) + problems.get(entry, [])
            kind = "error" if entry in crashed else "failure"
            yield JUnitCase("fuzz", "conformance.fuzz", entry, "\n".join(lines), rerun, kind)


def junit_cases(report: Mapping[str, Any]) -> list[JUnitCase]:
    """Every test case of a conformance report (``conformance.json``'s dict).

    Rerun commands name the run's Hypothesis profile and, when the run used records
    modules from outside the project, set ``CONFORMANCE_RECORDS`` as the run did.
    """
    header = (report.get("runs") or [{}])[0]
    profile = header.get("profile", "ci")
    cases = [
        *_cells(report, profile),
        *_error_cases(report, profile),
        *_mutants(report, profile),
        *_divergences(report, profile),
        *_crashes(report, profile),
        *_fuzz(report),
    ]
    modules = header.get("records_modules") or []
    if modules:
        prefix = f"{RECORDS_ENV}={shlex.quote(','.join(modules))} "
        cases = [JUnitCase(c.suite, c.classname, c.name, c.failure,
                           c.rerun if c.rerun.startswith(prefix) else prefix + c.rerun, c.kind)
                 for c in cases]
    return cases


def _clean(text: str) -> str:
    return text.translate(_XML_ILLEGAL)


def junit_xml(report: Mapping[str, Any]) -> str:
    """The JUnit XML document of a report, as text (UTF-8, with an XML declaration)."""
    cases = junit_cases(report)
    root = ET.Element("testsuites", name="mlx-conformance")
    suites: dict[str, ET.Element] = {}
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for case in cases:
        suite = suites.get(case.suite)
        if suite is None:
            suite = suites[case.suite] = ET.SubElement(root, "testsuite", name=case.suite)
            suite.attrib.update(tests="0", failures="0", errors="0", skipped="0")
        testcase = ET.SubElement(suite, "testcase", classname=case.classname, name=_clean(case.name))
        suite.set("tests", str(int(suite.get("tests", "0")) + 1))
        totals["tests"] += 1
        if case.failure:
            first = case.failure.strip().splitlines()[0] if case.failure.strip() else case.kind
            element = ET.SubElement(testcase, case.kind, message=_clean(first[:500]),
                                    type="nonconformance" if case.kind == "failure" else "crash")
            element.text = _clean(f"{case.failure}\n\nRerun: {case.rerun}")
            key = "failures" if case.kind == "failure" else "errors"
            suite.set(key, str(int(suite.get(key, "0")) + 1))
            totals[key] += 1
        ET.SubElement(testcase, "system-out").text = _clean(f"Rerun: {case.rerun}")
    root.attrib.update({k: str(v) for k, v in totals.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(report: Mapping[str, Any], path: Path) -> None:
    """Write :func:`junit_xml` of ``report`` to ``path`` atomically, after checking that the
    text parses back as XML with one testcase per case."""
    text = junit_xml(report)
    parsed = ET.fromstring(text.split("?>", 1)[1])
    expected = len(junit_cases(report))
    found = len(parsed.findall("./testsuite/testcase"))
    if found != expected:
        raise AssertionError(f"[junit] wrote {found} testcases but the report has {expected}.")
    write_text_atomic(Path(path), text)


def main(argv: list[str] | None = None) -> int:
    """``python -m conformance.junit REPORT.json OUT.xml``: JUnit XML of a saved report."""
    parser = argparse.ArgumentParser(prog="python -m conformance.junit", description=__doc__.split("\n")[0])
    parser.add_argument("report", help="a conformance.json written by `python -m conformance run`")
    parser.add_argument("out", help="where to write the JUnit XML")
    args = parser.parse_args(argv)
    report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    write_junit(report, Path(args.out))
    cases = junit_cases(report)
    print(f"[junit] {len(cases)} test cases, {sum(bool(c.failure) for c in cases)} failing: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
