"""Sessions: ``tests`` (unit, harness meta-tests, fuzz), ``conformance`` (the main job:
the full registry under a Hypothesis profile, writing ``reports/conformance/``),
``thorough`` (the same under the ``thorough`` profile, for nightly runs; not a default),
``lint`` (ruff), ``typecheck`` (mypy), ``bench`` / ``bench_compare`` / ``bench_smoke``
(performance baselines).

Torch: the project accepts any recent torch (pyproject.toml), but these sessions install
``TORCH_SPEC`` first (default ``torch==2.13.0``, a CPU build on Linux), so a fresh machine
does not download a multi-GB CUDA build. Override it, e.g. ``TORCH_SPEC=torch nox -s tests``.
"""

from __future__ import annotations

import os
import shlex

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "conformance"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
RECORDS_INSTALL = os.environ.get("CONFORMANCE_INSTALL", "")
"""pip arguments for a user's own records package (e.g. ``./my_layers``), installed beside
the project so its ``mlx_conformance.records`` entry point joins the registry. Records
modules named in ``CONFORMANCE_RECORDS`` reach the sessions as every variable does."""


def install_project(session: nox.Session) -> None:
    """torch first (pinned CPU build), then the project with its dev and models extras, then any
    records package named in ``CONFORMANCE_INSTALL``."""
    session.install(TORCH_SPEC)
    session.install("-e", ".[dev,models]")
    if RECORDS_INSTALL:
        session.install(*shlex.split(RECORDS_INSTALL))


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests, harness meta-tests and the fuzz test (not the conformance matrix)."""
    install_project(session)
    session.run("python", "-m", "pytest", "tests", f"--hypothesis-profile={PROFILE}",
                "--ignore=tests/test_conformance.py", "--ignore=tests/meta/test_mutants.py",
                "--ignore=tests/test_error_cases.py", "--ignore=tests/benchmarks", *session.posargs)


@nox.session
def conformance(session: nox.Session) -> None:
    """The conformance matrix, error cases and mutation meta-tests; writes the report.
    Arguments after ``--`` go to ``python -m conformance run`` (``--junitxml PATH``,
    ``--records MODULE``, ``--record NAME``). It also runs the tiny-model conformance
    (the ``models`` extra: transformers, mlx-lm, diffusers)."""
    install_project(session)
    session.run("python", "-m", "conformance", "run", f"--profile={PROFILE}", *session.posargs)


@nox.session
def thorough(session: nox.Session) -> None:
    """Nightly: the whole registry under the ``thorough`` profile (250 examples a cell),
    error cases, mutants, and the fuzz at 1000 inputs per entry point, each entry point
    capped at a minute and each call at 20 s (120 s on a GPU back end; a hang is killed and
    reported), so the fuzz ends within about half an hour. Writes the report like ``conformance``."""
    install_project(session)
    session.run("python", "-m", "conformance", "run", "--profile=thorough", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole project."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages."""
    install_project(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Record this machine's pytest-benchmark baseline (reports/baselines/<backend>-<machine>/)
    and its report; on CUDA both float32 precision rows (TF32 and full float32)."""
    install_project(session)
    session.run("python", "-m", "conformance", "bench", "record", *session.posargs)


@nox.session
def bench_compare(session: nox.Session) -> None:
    """Run again and compare with the stored baseline through pytest-benchmark
    (--benchmark-compare-fail=median:30% by default; --threshold N to change)."""
    install_project(session)
    session.run("python", "-m", "conformance", "bench", "compare", *session.posargs)


@nox.session
def bench_smoke(session: nox.Session) -> None:
    """Prove every benchmark executes, at tiny shapes, run once, without timing (seconds).
    The tooling's own tests (planted slowdown, compare, report) are in tests/test_benchmarks_cli.py,
    run by the tests session."""
    install_project(session)
    session.run("python", "-m", "pytest", "tests/benchmarks", "-q", "--benchmark-disable", *session.posargs)
