"""Records from outside the project (conformance.plugins) and the JUnit XML of a run
(conformance.junit).

The end-to-end test runs the worked example of the README: the user's DyT layer in
``tests/plugin_example/user_layers`` (a package of its own, not installed: on PYTHONPATH)
through ``python -m conformance run --records user_layers.records``, beside a planted
failure, and reads the report and the JUnit XML.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance import plugins
from conformance.junit import junit_cases, junit_xml, write_junit
from conformance.plugins import PluginError, plugin_records
from conformance.registry import BUILTIN_REGISTRY

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "plugin_example"


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's package importable in this process, as PYTHONPATH makes it for a run."""
    monkeypatch.syspath_prepend(str(EXAMPLE))


def write_module(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(body, encoding="utf-8")


COPY_DYT = (
    "import dataclasses\n"
    "from user_layers.records import DYT\n"
    "RECORDS = (dataclasses.replace(DYT, name={name!r}),)\n"
)


# ---------------------------------------------------------------------------------------
# Finding and checking records modules
# ---------------------------------------------------------------------------------------


def test_env_var_adds_the_users_record(example_on_path: None) -> None:
    found = plugin_records(BUILTIN_REGISTRY, {plugins.RECORDS_ENV: " user_layers.records , "})
    assert list(found) == ["user_layers.dyt"]
    record = found["user_layers.dyt"]
    assert len(record.mutants) == 3 and len(record.errors) == 3 and record.bench
    assert "tanh" in record.tolerance("cpu", "float16").reason
    assert plugin_records(BUILTIN_REGISTRY, {}) == {}


def test_entry_point_adds_the_users_record(
    example_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed distribution, as pip would leave it: a dist-info with the entry point.
    info = tmp_path / "user_layers-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: user-layers\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{plugins.ENTRY_POINT_GROUP}]\nuser_layers = user_layers.records\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = plugin_records(BUILTIN_REGISTRY, {})
    assert list(found) == ["user_layers.dyt"]
    # Named both ways, it is loaded once.
    assert list(plugin_records(BUILTIN_REGISTRY, {plugins.RECORDS_ENV: "user_layers.records"})) == [
        "user_layers.dyt"
    ]


def test_name_clashes_and_bad_modules_are_clear_errors(
    example_on_path: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "shadows_builtin", COPY_DYT.format(name="nn.linear"))
    write_module(tmp_path, "second_dyt", COPY_DYT.format(name="user_layers.dyt"))
    write_module(tmp_path, "no_records", "X = 1\n")
    write_module(tmp_path, "not_records", "RECORDS = ('nn.linear',)\n")

    def error(modules: str) -> str:
        with pytest.raises(PluginError) as info:
            plugin_records(BUILTIN_REGISTRY, {plugins.RECORDS_ENV: modules})
        return str(info.value)

    text = error("shadows_builtin")
    assert "'nn.linear'" in text and "the built-in registry" in text and text.startswith("[conformance]")
    text = error("user_layers.records,second_dyt")
    assert "'user_layers.dyt' from 'second_dyt'" in text and "'user_layers.records'" in text
    assert "must define RECORDS" in error("no_records")
    assert "OpRecord instances but has str" in error("not_records")
    assert "cannot import records module 'no_such_module'" in error("no_such_module")
    assert "must name a module" in error("user_layers.records:DYT")


def test_add_record_modules_updates_the_imported_registry(
    example_on_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformance import registry

    monkeypatch.delenv(plugins.RECORDS_ENV, raising=False)
    try:
        plugins.add_record_modules(["user_layers.records"])
        assert os.environ[plugins.RECORDS_ENV] == "user_layers.records"
        assert "user_layers.dyt" in registry.REGISTRY
        assert "user_layers.dyt" not in registry.covered_api()  # mlx_impl's coverage only
    finally:
        monkeypatch.delenv(plugins.RECORDS_ENV, raising=False)
        registry.reload_plugins()
    assert "user_layers.dyt" not in registry.REGISTRY
    assert registry.REGISTRY.keys() == BUILTIN_REGISTRY.keys()


# ---------------------------------------------------------------------------------------
# JUnit XML
# ---------------------------------------------------------------------------------------


def synthetic_report() -> dict:
    return {
        "runs": [{"profile": "ci", "records_modules": []}],
        "cells": [
            {"op": "nn.linear", "dtype": "float32", "mode": "default", "status": "pass",
             "examples": 50, "failures": 0, "edge_cases": 1, "edge_failures": 0,
             "first_failure": "", "reproduce": ""},
            {"op": "fast.rope", "dtype": "float16", "mode": "interleaved", "status": "fail",
             "examples": 50, "failures": 3, "edge_cases": 0, "edge_failures": 0,
             "first_failure": "output 0: Mismatched elements: 2 / 8", "reproduce": "python -m pytest X"},
        ],
        "errors": [{"op": "nn.linear", "case": "bad width", "raises": "ValueError", "ok": False,
                    "problems": ["mlx_impl: accepted the input, expected ValueError"]}],
        "mutants": [{"op": "nn.linear", "mutant": "no_bias", "bug": "bias dropped", "dtype": "float32",
                     "mode": "default", "killed": True, "examples_tried": 3}],
        "divergences": [],
        "crashes": [{"test": "tests/test_conformance.py::test_conforms[nn.linear-float32-default]",
                     "detail": "exit status -8; SIGFPE"}],
        "fuzz": [{
            "profile": "ci", "examples_per_entry": 100,
            "entries": {"nn.Linear": {"inputs": 100}, "fast.rope": {"inputs": 100},
                        "nn.Embedding": {"inputs": 40}},
            "violations": [{"entry": "fast.rope", "library": "mlx", "kind": "unexpected exception",
                            "exception": "RuntimeError", "detail": "[rope] \x01bad", "input": "x=[]",
                            "count": 2}],
            "crashes": [{"entry": "nn.Embedding", "library": "mlx", "input": "index=2**31",
                         "detail": "SIGSEGV"}],
        }],
    }


def test_junit_has_one_case_per_check_with_failure_text_and_rerun(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(synthetic_report(), path)
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "3", "2")
    cases = {(s.get("name"), c.get("name")): c for s in root for c in s}
    assert set(cases) == {
        ("cells", "nn.linear-float32-default"), ("cells", "fast.rope-float16-interleaved"),
        ("error_cases", "nn.linear-bad width"), ("mutants", "nn.linear-no_bias"),
        ("crashes", "tests/test_conformance.py::test_conforms[nn.linear-float32-default]"),
        ("fuzz", "nn.Linear"), ("fuzz", "fast.rope"), ("fuzz", "nn.Embedding"),
    }
    assert cases[("cells", "nn.linear-float32-default")].find("failure") is None
    cell = cases[("cells", "fast.rope-float16-interleaved")].find("failure")
    assert cell is not None and "3 of 50 examples" in (cell.text or "")
    assert "Mismatched elements" in (cell.text or "") and "Rerun: python -m pytest X" in (cell.text or "")
    error = cases[("error_cases", "nn.linear-bad width")].find("failure")
    assert error is not None and "accepted the input" in (error.text or "")
    assert "test_both_libraries_refuse[nn.linear-bad width]" in (error.text or "")
    crash = cases[("crashes", "tests/test_conformance.py::test_conforms[nn.linear-float32-default]")]
    assert crash.find("error") is not None
    rope = cases[("fuzz", "fast.rope")].find("failure")
    assert rope is not None and "RuntimeError" in (rope.text or "") and "\x01" not in (rope.text or "")
    assert "python -m conformance.fuzz --supervise --entry=fast.rope --examples=100" in (rope.text or "")
    assert cases[("fuzz", "nn.Embedding")].find("error") is not None
    assert cases[("fuzz", "nn.Linear")].find("failure") is None


def test_junit_reruns_name_the_records_modules() -> None:
    report = synthetic_report()
    report["runs"][0]["records_modules"] = ["user_layers.records"]
    assert all(c.rerun.startswith("CONFORMANCE_RECORDS=user_layers.records ") for c in junit_cases(report))
    assert "CONFORMANCE_RECORDS=user_layers.records python -m pytest" in junit_xml(report)


# ---------------------------------------------------------------------------------------
# The worked example, end to end
# ---------------------------------------------------------------------------------------


def test_users_record_runs_to_a_report_and_junit(tmp_path: Path) -> None:
    """The README's worked example, plus a planted failure that the JUnit XML must show."""
    out = tmp_path / "report"
    junit = tmp_path / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)])}
    env.pop(plugins.RECORDS_ENV, None)
    cmd = [sys.executable, "-m", "conformance", "run", "--records", "user_layers.records",
           "--records", "planted_records", "--record", "user_layers.dyt",
           "--record", "user_layers.dyt_planted_bug", "--out", str(out), "--profile", "ci",
           "--fuzz-examples", "0", "--junitxml", str(junit)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the planted failure, only

    report = json.loads((out / "conformance.json").read_text(encoding="utf-8"))
    cells = {(c["op"], c["dtype"]): c["status"] for c in report["cells"]}
    assert cells == {("user_layers.dyt", "float32"): "pass", ("user_layers.dyt", "float16"): "pass",
                     ("user_layers.dyt", "bfloat16"): "pass",
                     ("user_layers.dyt_planted_bug", "float32"): "fail"}
    assert {(m["mutant"], m["killed"]) for m in report["mutants"]} == {
        ("alpha_ignored", True), ("bias_inside_tanh", True), ("hard_clip", True)}
    assert len(report["errors"]) == 6 and all(e["ok"] for e in report["errors"])
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| user_layers.dyt | default | PASS" in markdown and "hard_clip" in markdown

    root = ET.parse(junit).getroot()
    failing = [(s.get("name"), c.get("name"), c.find("failure")) for s in root for c in s
               if c.find("failure") is not None]
    assert [(s, n) for s, n, _ in failing] == [("cells", "user_layers.dyt_planted_bug-float32-default")]
    text = failing[0][2].text or ""
    assert "does not conform" in text and "Worst at index" in text
    rerun = text.split("Rerun: ", 1)[1].strip()
    assert rerun.startswith("CONFORMANCE_RECORDS=user_layers.records,planted_records python -m pytest")
    assert root.get("tests") == str(4 + 6 + 3)

    # The rerun command reproduces the failure (the env var set as it says).
    env_var, command = rerun.split(" ", 1)
    rerun_env = {**env, plugins.RECORDS_ENV: env_var.split("=", 1)[1]}
    again = subprocess.run(command.replace("python", sys.executable, 1), shell=True, cwd=ROOT,
                           env=rerun_env, capture_output=True, text=True, check=False)
    assert again.returncode == 1 and "does not conform" in again.stdout, again.stdout[-2000:]
