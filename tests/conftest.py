"""Shared pytest set-up: Hypothesis profiles (``ci`` unless ``--hypothesis-profile`` or
``$HYPOTHESIS_PROFILE`` names another), the conformance collector and its JSON output,
and MLX's CPU back end configured as the conformance and benchmark runs use it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance import profiles
from conformance.cli import TUNE_ENV
from conformance.results import Collector, write_json_atomic

profiles.register()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption("--conformance-json", default=None,
                    help="write the conformance cells observed in this session to this JSON file")
    group.addoption("--conformance-record", action="append", default=[],
                    help="only run conformance cells of this registry record (repeatable)")


_COLLECTOR = Collector()


@pytest.fixture(scope="session")
def collector() -> Collector:
    """The session's conformance results."""
    return _COLLECTOR


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = set(config.getoption("--conformance-record"))
    if not wanted:
        return
    keep = []
    for item in items:
        record = getattr(item, "callspec", None) and item.callspec.params.get("record")
        if record is None or getattr(record, "name", None) in wanted:
            keep.append(item)
    deselected = [i for i in items if i not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep


def _write_partial(config: pytest.Config, running: str | None) -> None:
    target = config.getoption("--conformance-json")
    if target:
        # Rewritten after every test, naming the test about to run: if an MLX kernel kills
        # the process, the runner still has every earlier result and knows the culprit.
        write_json_atomic(Path(target), {**_COLLECTOR.as_dict(), "running": running})


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if _CONFIG is not None:
        _write_partial(_CONFIG, nodeid)


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if _CONFIG is not None:
        _write_partial(_CONFIG, None)


_CONFIG: pytest.Config | None = None


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin, which derives --hypothesis-verbosity's profile
def pytest_configure(config: pytest.Config) -> None:
    global _CONFIG
    _CONFIG = config
    # Plain pytest runs under the project's ci profile (as nox does), not Hypothesis's default.
    try:
        name = profiles.pytest_profile(config.getoption("--hypothesis-profile", None), os.environ)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from exc
    if name is not None:
        from hypothesis import settings

        settings.load_profile(name)
    if os.environ.get(TUNE_ENV) == "1":
        import torch

        from mlx_impl import cpu_backend

        cpu_backend.tune_cpu(blas_threads=1)
        torch.set_num_threads(1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _write_partial(session.config, None)


@pytest.fixture
def shipped_blas() -> Iterator[None]:
    """Run a test with MLX's matmuls on the netlib BLAS its wheel ships (tests that pin
    MLX's own summation order), then put back whatever BLAS the session had."""
    from mlx_impl import cpu_backend

    provider = cpu_backend._STATE.provider
    cpu_backend.restore_default_blas()
    yield
    if provider is not None:
        cpu_backend.use_optimized_blas(provider.path)
