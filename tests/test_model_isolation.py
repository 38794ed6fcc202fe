"""``python -m conformance model --jobs N``: each configuration in its own process, so a
back end that crashes the interpreter or never returns loses only that configuration,
and the report names it (CRASH with the signal, HANG with the child's Python stacks)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from conformance.cli import main

SMALL = ["--tiny", "llama", "--steps", "2", "--prompt-len", "4", "--no-anchors", "--progress", "configs"]


def _report(out: Path) -> dict:
    return json.loads((out / "model.json").read_text(encoding="utf-8"))


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary folder of the test's own, for the run and its children (TMPDIR), to show
    that a run leaves none of its folders there (``model-*``), however its children ended."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_isolated_run_matches_the_serial_one(tmp_path: Path) -> None:
    serial, isolated = tmp_path / "serial", tmp_path / "isolated"
    assert main(["model", *SMALL, "--dtype", "float32,bfloat16", "--out", str(serial)]) == 0
    assert main(["model", *SMALL, "--dtype", "float32,bfloat16", "--jobs", "2", "--out", str(isolated)]) == 0
    a, b = _report(serial)["results"], _report(isolated)["results"]
    assert [(r["dtype"], r["quant"]) for r in a] == [(r["dtype"], r["quant"]) for r in b] == [
        ("float32", None), ("bfloat16", None)]
    # Same seed, same weights, same processes' arithmetic: the same errors at every point.
    for ra, rb in zip(a, b, strict=True):
        assert [p["rel_err"] for p in ra["points"]] == [p["rel_err"] for p in rb["points"]]


def test_a_crash_is_named_and_the_other_configurations_still_report(tmp_path: Path, scratch: Path) -> None:
    out = tmp_path / "crash"
    rc = main(["model", *SMALL, "--dtype", "float32", "--dit", "--jobs", "2", "--mutant", "crash_at_decode",
               "--out", str(out)])
    assert rc == 1
    report = _report(out)
    [model] = report["results"]
    assert model["error"]["status"] == "CRASH" and "SIGABRT" in model["error"]["detail"], model["error"]
    assert len(report["dit"]) == 2 and all(d["passed"] for d in report["dit"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| tiny-llama float32 | CRASH |" in md and "killed by SIGABRT" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len({line.count(" | ") for line in table}) == 1, "a lost configuration's row must keep the columns"
    assert not list(scratch.glob("model-*")), "a crashed child's files must go with the run's own folder"


def test_a_hang_is_cut_off_with_the_stack_where_it_waits(tmp_path: Path, scratch: Path) -> None:
    out = tmp_path / "hang"
    rc = main(["model", *SMALL, "--dtype", "float32", "--jobs", "2", "--config-timeout", "15",
               "--mutant", "hang_at_decode", "--out", str(out)])
    assert rc == 1
    [model] = _report(out)["results"]
    assert model["error"]["status"] == "HANG", model["error"]
    # faulthandler's dump on the timeout's SIGABRT names the frame that never returned.
    assert "no result after 15 s" in model["error"]["detail"]
    assert "in update" in model["error"]["detail"] and "mutants.py" in model["error"]["detail"]
    assert not list(scratch.glob("model-*")), "a killed child's files must go with the run's own folder"


def test_dit_row_names_text_and_image_after_a_json_round_trip() -> None:
    # A --jobs child's result comes back through JSON with its keys sorted ("image" first):
    # the row must still print the text error first, as its label says.
    from conformance.model.report import to_markdown

    out = {"text": {"rel_err": 1e-3}, "image": {"rel_err": 2e-5}}
    dit = {"block": "double", "dtype": "float32", "quant": None, "passed": True,
           "outputs": json.loads(json.dumps(out, sort_keys=True)), "anchor": None}
    md = to_markdown({"run": {}, "results": [], "dit": [dit]})
    assert "| 0.001 / 2e-05 (text / image) |" in md
