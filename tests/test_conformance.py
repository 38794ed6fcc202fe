"""The conformance matrix: for every registry cell (op x dtype x mode), Hypothesis draws
inputs and ``mlx_impl`` must agree with ``torch_reference`` under the op's tolerance.

Reproduce one cell: ``pytest "tests/test_conformance.py::test_conforms[<cell id>]"
--hypothesis-profile=ci`` (the ``ci`` profile is derandomized, so the same examples come
back); Hypothesis also prints the falsifying example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import assume, given

from conformance.execute import backend_name, run_case
from conformance.plugins import RECORDS_ENV, env_modules
from conformance.record import Case, OpRecord
from conformance.registry import REGISTRY, cells
from conformance.results import Collector

CELLS = list(cells())


def cell_id(record: OpRecord, dtype: str, mode: str) -> str:
    """``op-dtype-mode``: the id pytest shows and the reproduction command uses."""
    return f"{record.name}-{dtype}-{mode}"


def _reproduce(request: pytest.FixtureRequest) -> str:
    profile = request.config.getoption("--hypothesis-profile", default=None) or "default"
    # Records from outside the project exist only with the env var that named them.
    modules = ",".join(env_modules())
    prefix = f"{RECORDS_ENV}={shlex.quote(modules)} " if modules else ""
    return f'{prefix}python -m pytest "{request.node.nodeid}" --hypothesis-profile={profile}'


@pytest.mark.parametrize(
    ("record", "dtype", "mode"), CELLS, ids=[cell_id(*c) for c in CELLS]
)
def test_conforms(record: OpRecord, dtype: str, mode: str, collector: Collector,
                  request: pytest.FixtureRequest) -> None:
    backend = backend_name()
    stats = collector.cell(record.name, dtype, mode)
    reproduce = _reproduce(request)

    @given(case=record.cases(dtype, mode))
    def check(case: Case) -> None:
        assume(not any(d.applies(case, dtype, backend) for d in record.divergences))
        result = run_case(record, case, dtype, backend=backend)
        stats.add(result, reproduce=reproduce)
        assert result.passed, f"{record.name} [{dtype}, {mode}] does not conform.\n{result.message()}\n" \
                              f"Reproduce: {reproduce}"

    check()


EDGE_CASES = [
    (record, edge, dtype)
    for record in REGISTRY.values()
    for edge in record.edge_cases
    for dtype in edge.dtypes
]


@pytest.mark.parametrize(
    ("record", "edge", "dtype"), EDGE_CASES,
    ids=[f"{r.name}-{e.case.label}-{d}" for r, e, d in EDGE_CASES],
)
def test_edge_case(record: OpRecord, edge, dtype: str, collector: Collector,
                   request: pytest.FixtureRequest) -> None:
    result = run_case(record, edge.case, dtype)
    collector.cell(record.name, dtype, edge.mode).add(result, edge=True, reproduce=_reproduce(request))
    assert result.passed, f"{record.name} edge case '{edge.case.label}' [{dtype}]:\n{result.message()}"


DIVERGENCES = [(record, d) for record in REGISTRY.values() for d in record.divergences]


@pytest.mark.parametrize(("record", "divergence"), DIVERGENCES,
                         ids=[f"{r.name}-{d.name}" for r, d in DIVERGENCES])
def test_expected_divergence_still_diverges(record: OpRecord, divergence, collector: Collector) -> None:
    """An expected divergence is MLX's; once MLX is fixed this fails, so the list cannot go stale."""
    backend = backend_name()
    if backend not in divergence.backends:
        pytest.skip(f"'{divergence.name}' is specific to MLX's {'/'.join(divergence.backends)} back end; "
                    f"this run is on {backend}")
    result = run_case(record, divergence.reproducer, divergence.dtype, backend=backend,
                      mlx_call=divergence.mlx_call)
    collector.note("divergences", {
        "op": record.name, "name": divergence.name, "dtype": divergence.dtype, "mode": divergence.mode,
        "reason": divergence.reason, "reference": divergence.reference,
        "input": divergence.reproducer.describe(), "still_diverges": not result.passed,
        "observed": result.message(),
    })
    assert not result.passed, (
        f"Expected divergence '{divergence.name}' of {record.name} no longer diverges: "
        "MLX changed; remove the entry (and its skip in the strategy)."
    )
