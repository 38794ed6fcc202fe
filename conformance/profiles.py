"""Hypothesis profiles: ``ci`` (derandomized, bounded, no deadline), ``dev`` (fast, with
the project's example database) and ``thorough`` (many examples, for nightly runs).

Select one with ``--hypothesis-profile=NAME`` (pytest) or ``--profile NAME``
(``python -m conformance run``). Plain ``pytest`` runs under ``ci`` (tests/conftest.py),
or under the profile named by the ``HYPOTHESIS_PROFILE`` environment variable. Deadlines are off everywhere: MLX compiles kernels on
first use and the shared machines are noisy, so a timing deadline would only be flaky.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

DATABASE_DIR = Path(__file__).resolve().parent.parent / ".hypothesis" / "examples"

_COMMON = settings(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

EXAMPLES = {"ci": 50, "dev": 10, "thorough": 250}
"""Examples per conformance cell (op x dtype x mode). ``ci`` is sized so the whole matrix
runs well inside 15 minutes on 2 cores with MLX's slow x86 CPU half-precision kernels."""


PROFILE_ENV = "HYPOTHESIS_PROFILE"
"""Environment variable naming the profile of a plain ``pytest`` run."""


def pytest_profile(option: str | None, environ: Mapping[str, str]) -> str | None:
    """The profile tests/conftest.py loads: None when ``--hypothesis-profile`` was given
    (Hypothesis's pytest plugin loads that one), else ``$HYPOTHESIS_PROFILE`` or ``ci``.
    Raises ValueError for a name that is not one of :data:`EXAMPLES`."""
    if option:
        return None
    name = environ.get(PROFILE_ENV) or "ci"
    if name not in EXAMPLES:
        raise ValueError(f"[profiles] {PROFILE_ENV}={name!r} is not a profile; known: {sorted(EXAMPLES)}.")
    return name


def register() -> None:
    """Register the three profiles (idempotent)."""
    settings.register_profile("ci", _COMMON, derandomize=True, database=None, max_examples=EXAMPLES["ci"])
    settings.register_profile(
        "dev", _COMMON, database=DirectoryBasedExampleDatabase(str(DATABASE_DIR)), max_examples=EXAMPLES["dev"]
    )
    settings.register_profile(
        "thorough",
        _COMMON,
        database=DirectoryBasedExampleDatabase(str(DATABASE_DIR)),
        max_examples=EXAMPLES["thorough"],
    )
