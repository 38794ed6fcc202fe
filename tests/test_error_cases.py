"""Every registry error case is refused by BOTH libraries, with the same exception type
and a message that names the op in brackets."""

from __future__ import annotations

import pytest

from conformance.execute import both_refuse
from conformance.registry import REGISTRY
from conformance.results import Collector

ERROR_CASES = [(record, error) for record in REGISTRY.values() for error in record.errors]


@pytest.mark.parametrize(("record", "error"), ERROR_CASES, ids=[f"{r.name}-{e.name}" for r, e in ERROR_CASES])
def test_both_libraries_refuse(record, error, collector: Collector) -> None:
    problems = both_refuse(record, error.case, error.dtype, error.raises)
    collector.note("errors", {"op": record.name, "case": error.name, "raises": error.raises.__name__,
                              "ok": not problems, "problems": problems})
    assert not problems, f"{record.name} / {error.name}:\n" + "\n".join(problems)
