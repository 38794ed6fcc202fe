"""The sweep: one test per (architecture, dtype, quantized mode); each writes its result
JSON into ``$CONFORMANCE_SWEEP_RESULTS`` (conformance/model/sweep_run.py) and fails
unless the candidate conforms. Run through ``python -m conformance sweep``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.model.sweep_discovery import discover
from conformance.model.sweep_run import (
    CONFIGURATIONS,
    ENV_ARCHS,
    ENV_CANDIDATE,
    ENV_RESULTS,
    ENV_STEPS,
    ENV_WORK,
    STEPS,
    Configuration,
    run_configuration,
)

_ARCHS = [a for a in os.environ.get(ENV_ARCHS, "").split(",") if a]
_CONFIGS = [Configuration(a.model_type, dtype, quant)
            for a in discover(_ARCHS or None).architectures for dtype, quant in CONFIGURATIONS]


@pytest.mark.parametrize("cfg", _CONFIGS, ids=[c.test_id for c in _CONFIGS])
def test_sweep(cfg: Configuration, request: pytest.FixtureRequest) -> None:
    result = run_configuration(cfg, results=Path(os.environ[ENV_RESULTS]), work=Path(os.environ[ENV_WORK]),
                               candidate=os.environ.get(ENV_CANDIDATE, "mlx-lm"),
                               steps=int(os.environ.get(ENV_STEPS, STEPS)), nodeid=request.node.nodeid)
    assert result["status"] == "conforms", f"{cfg.test_id}: {result['status']}: {result['reason']}"
