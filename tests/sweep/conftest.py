"""The sweep's pytest session (run by ``python -m conformance sweep``, not by the unit
tests: it judges every architecture, most of an hour of CPU).

Collected only when ``CONFORMANCE_SWEEP_RESULTS`` names a results folder, which the
sweep command sets; ``python -m pytest tests`` therefore leaves this folder out. A
configuration that pytest-timeout ends (thread method: it dumps the stacks and exits the
worker) is marked ``timeout`` in its result file first, so the report can tell a hang
from a crash; the timer itself is pytest-timeout's."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from conformance.model.sweep_run import ENV_RESULTS, Configuration, result_path
from conformance.results import write_json_atomic

collect_ignore = [] if os.environ.get(ENV_RESULTS) else ["test_sweep.py"]


def _mark_timeout(item: pytest.Item, seconds: float) -> None:
    cfg = getattr(item, "callspec", None) and item.callspec.params.get("cfg")
    if not isinstance(cfg, Configuration):
        return
    path = result_path(Path(os.environ[ENV_RESULTS]), cfg)
    import json

    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {"arch": cfg.arch, "dtype": cfg.dtype, "quant": cfg.quant, "label": cfg.label}
    result.update(status="timeout", reason=f"no result within {seconds:g} s (pytest-timeout)")
    write_json_atomic(path, result)


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's thread timer, with the result file marked before it exits the worker."""
    if settings.method != "thread":
        return None
    import pytest_timeout

    def expire() -> None:
        _mark_timeout(item, settings.timeout)
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout, expire)
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's own attribute
    timer.start()
    return True
