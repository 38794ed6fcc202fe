"""Plain ``pytest`` runs under the project's Hypothesis ``ci`` profile (tests/conftest.py),
as ``nox -s tests`` does with ``--hypothesis-profile=ci``; ``--hypothesis-profile`` and
``$HYPOTHESIS_PROFILE`` choose another. Each case runs :func:`test_active_profile` in a
child pytest with the expected profile in ``$PROFILE_EXPECT``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import settings

from conformance.profiles import EXAMPLES
from conformance.runinfo import ROOT

PROBE = "tests/test_hypothesis_profile.py::test_active_profile"


def test_active_profile(request: pytest.FixtureRequest) -> None:
    """The profile in force is the one the command line, the environment or the default names."""
    expected = (os.environ.get("PROFILE_EXPECT") or request.config.getoption("--hypothesis-profile", None)
                or os.environ.get("HYPOTHESIS_PROFILE") or "ci")
    assert settings.get_current_profile_name().startswith(expected)
    assert settings.default.max_examples == EXAMPLES[expected]
    assert settings.default.deadline is None


def _child(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("HYPOTHESIS_PROFILE", "PROFILE_EXPECT")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", PROBE, *args],
                          cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "ci"),
    (["--hypothesis-profile=dev"], {}, "dev"),
    ([], {"HYPOTHESIS_PROFILE": "thorough"}, "thorough"),
    (["--hypothesis-profile=dev"], {"HYPOTHESIS_PROFILE": "thorough"}, "dev"),
])
def test_plain_pytest_profile(args: list[str], env: dict[str, str], expected: str) -> None:
    proc = _child(args, {**env, "PROFILE_EXPECT": expected})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_unknown_profile_in_environment_is_refused() -> None:
    proc = _child([], {"HYPOTHESIS_PROFILE": "fastest"})
    assert proc.returncode != 0
    assert "HYPOTHESIS_PROFILE='fastest' is not a profile" in proc.stdout + proc.stderr
