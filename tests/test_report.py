"""The conformance report: reading refuses corrupt and foreign files clearly, runs from
several machines merge into one matrix, and every rendering names what failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.report import (
    SCHEMA,
    ReportError,
    load_report,
    merge,
    render_html,
    render_markdown,
    summary,
    update_readme,
    write_report,
)
from conformance.results import write_json_atomic


def _cell(op: str, dtype: str, status: str = "pass") -> dict:
    return {"op": op, "dtype": dtype, "mode": "default", "examples": 3, "failures": int(status != "pass"),
            "edge_cases": 1, "edge_failures": 0, "mlx": {"max_abs": 1e-7, "max_rel": 1e-7, "max_ulp": 1.0},
            "peer": {"max_abs": 1e-7, "max_rel": 1e-7, "max_ulp": 0.5}, "ulp_histogram": [3, 1, 0, 0, 0, 0, 0, 0, 0],
            "first_failure": "" if status == "pass" else "Mismatched elements: 1 / 4", "reproduce":
            "" if status == "pass" else "python -m pytest x", "status": status}


def _report(backend: str, cells: list[dict]) -> dict:
    return {"schema": SCHEMA, "runs": [{"backend": backend, "device": backend, "mlx": "0.32.4"}], "cells": cells,
            "divergences": [], "mutants": [{"op": "nn.linear", "mutant": "m", "bug": "b", "dtype": "float32",
                                            "mode": "default", "killed": True, "examples_tried": 2, "evidence": ""}],
            "errors": [], "crashes": []}


def test_load_refuses_corrupt_and_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "half.json"
    bad.write_text('{"schema": "mlx-conf')
    with pytest.raises(ReportError, match="not valid JSON"):
        load_report(bad)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"schema": "something-else/9"}))
    with pytest.raises(ReportError, match="expected schema"):
        load_report(foreign)
    with pytest.raises(ReportError, match="no such file"):
        load_report(tmp_path / "missing.json")


def test_merge_keeps_each_run_apart(tmp_path: Path) -> None:
    cpu = _report("cpu", [_cell("nn.linear", "float32")])
    cuda = _report("cuda", [_cell("nn.linear", "float32", "fail")])
    merged = merge([cpu, cuda])
    assert [r["backend"] for r in merged["runs"]] == ["cpu", "cuda"]
    assert sorted(c["run"] for c in merged["cells"]) == [0, 1]
    assert summary(merged)["cells_failed"] == 1
    markdown = render_markdown(merged)
    assert "float32 [0]" in markdown and "float32 [1]" in markdown
    assert "Mismatched elements" in markdown and "python -m pytest x" in markdown


def test_write_report_writes_three_files_and_reads_back(tmp_path: Path) -> None:
    report = _report("cpu", [_cell("nn.linear", "float32"), _cell("nn.linear", "float16", "fail")])
    write_report(report, tmp_path)
    assert load_report(tmp_path / "conformance.json")["cells"] == report["cells"]
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "http" not in html.split("<body>", 1)[1]  # self-contained
    assert "FAIL" in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_html_escapes_failure_text() -> None:
    cell = _cell("nn.linear", "float32", "fail")
    cell["first_failure"] = "<script>alert(1)</script>"
    assert "<script>" not in render_html(_report("cpu", [cell]))


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- conformance-summary:start -->\nold\n<!-- conformance-summary:end -->\ntail\n")
    update_readme(readme, _report("cpu", [_cell("nn.linear", "float32")]))
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("tail\n") and "old" not in text
    assert "| nn.linear | default | PASS 3" in text


def test_atomic_write_leaves_the_old_file_when_serialising_fails(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": object()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
