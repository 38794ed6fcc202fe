"""Meta-tests: the harness must flag every planted bug. Each mutant replaces the MLX side
of its record; the record's edge cases for the mutant's mode and dtype (which every run
checks) are tried first, then Hypothesis searches the record's own strategy for an input on
which the harness reports non-conformance. A mutant that survives means the harness (its
edge cases, its strategy or its tolerance) cannot see that bug."""

from __future__ import annotations

import pytest
from hypothesis import Phase, find, settings
from hypothesis.errors import NoSuchExample

from conformance.execute import run_case
from conformance.registry import REGISTRY
from conformance.results import Collector

MUTANT_BUDGET = 150
"""Examples Hypothesis may try per mutant before declaring it survived."""

MUTANTS = [(record, mutant) for record in REGISTRY.values() for mutant in record.mutants]


@pytest.mark.parametrize(("record", "mutant"), MUTANTS, ids=[f"{r.name}-{m.name}" for r, m in MUTANTS])
def test_mutant_is_killed(record, mutant, collector: Collector) -> None:
    tries = 0

    def flagged(case) -> bool:
        nonlocal tries
        tries += 1
        return not run_case(record, case, mutant.dtype, mlx_call=mutant.call).passed

    killed_by = "hypothesis"
    killer = next((edge.case for edge in record.edge_cases
                   if edge.mode == mutant.mode and mutant.dtype in edge.dtypes and flagged(edge.case)), None)
    if killer is not None:
        killed_by = f"edge case: {killer.label}"
        evidence = run_case(record, killer, mutant.dtype, mlx_call=mutant.call).message()
    else:
        killer, evidence = _search(record, mutant, flagged)
    collector.note("mutants", {"op": record.name, "mutant": mutant.name, "bug": mutant.bug,
                               "dtype": mutant.dtype, "mode": mutant.mode, "killed": killer is not None,
                               "killed_by": killed_by if killer is not None else "",
                               "examples_tried": tries, "evidence": evidence[:2000]})
    assert killer is not None, (
        f"mutant '{mutant.name}' of {record.name} ({mutant.bug}) survived {tries} examples"
    )


def _search(record, mutant, flagged):
    """Hypothesis's search of the record's strategy: the killing case and its evidence, or
    ``(None, "")``."""
    try:
        killer = find(
            record.cases(mutant.dtype, mutant.mode),
            flagged,
            settings=settings(max_examples=MUTANT_BUDGET, derandomize=True, database=None, deadline=None,
                              phases=[Phase.generate]),
        )
    except NoSuchExample:
        return None, ""
    return killer, run_case(record, killer, mutant.dtype, mlx_call=mutant.call).message()
