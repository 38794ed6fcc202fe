"""Collects what the conformance tests observed, cell by cell, into JSON-ready results.

One :class:`Collector` lives for a pytest session; ``tests/conftest.py`` feeds it and
writes it with :func:`write_json_atomic` when ``--conformance-json PATH`` is given.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conformance.execute import CaseResult

SCHEMA = "mlx-conformance-results/1"
CONFORMING = ("pass", "more-accurate")
"""Cell statuses that count as conforming."""
ULP_BINS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0, 256.0, float("inf"))
"""Bucket edges for the distribution of MLX's error in output ulps (the report's plots)."""


@dataclass
class CellStats:
    """Everything the report shows for one (op, dtype, mode) cell."""

    op: str
    dtype: str
    mode: str
    examples: int = 0
    failures: int = 0
    edge_cases: int = 0
    edge_failures: int = 0
    mlx: dict[str, float] = field(default_factory=lambda: {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0.0})
    peer: dict[str, float] = field(default_factory=lambda: {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 0.0})
    ulp_histogram: list[int] = field(default_factory=lambda: [0] * (len(ULP_BINS) - 1))
    first_failure: str = ""
    reproduce: str = ""
    more_accurate: int = 0
    """Cases where MLX failed against the peer but was closer to the float64 oracle."""
    first_more_accurate: str = ""
    status: str = "pass"
    """``"pass"``, ``"more-accurate"`` (conforms; in some cases MLX beat the peer against the
    oracle) or ``"fail"``."""

    def add(self, result: CaseResult, *, edge: bool = False, reproduce: str = "") -> None:
        """Fold one case's verdicts into the cell."""
        if edge:
            self.edge_cases += 1
        else:
            self.examples += 1
        for verdict in result.verdicts:
            for side, stats in (("mlx", verdict.mlx_error), ("peer", verdict.peer_error)):
                worst = getattr(self, side)
                for key, value in stats.as_dict().items():
                    if np.isfinite(value):
                        worst[key] = max(worst[key], value)
            if verdict.ulp_errors.size:
                counts, _ = np.histogram(np.nan_to_num(verdict.ulp_errors, posinf=1e308), bins=ULP_BINS)
                self.ulp_histogram = [a + int(b) for a, b in zip(self.ulp_histogram, counts, strict=True)]
        better = [v for v in result.verdicts if v.kind == "more_accurate"]
        if better and result.passed:
            self.more_accurate += 1
            if not self.first_more_accurate:
                self.first_more_accurate = f"dtype {result.dtype}; input {result.case.describe()}\n{better[0].message}"
            if self.status == "pass":
                self.status = "more-accurate"
        if not result.passed:
            if edge:
                self.edge_failures += 1
            else:
                self.failures += 1
            self.status = "fail"
            if not self.first_failure:
                self.first_failure = result.message()
                self.reproduce = reproduce

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dict(self.__dict__)


class Collector:
    """Cells keyed by (op, dtype, mode), plus free-form sections (divergences, errors...)."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, str], CellStats] = {}
        self.sections: dict[str, list[dict[str, Any]]] = {}

    def cell(self, op: str, dtype: str, mode: str) -> CellStats:
        """The cell, created on first use."""
        key = (op, dtype, mode)
        if key not in self.cells:
            self.cells[key] = CellStats(op, dtype, mode)
        return self.cells[key]

    def note(self, section: str, entry: dict[str, Any]) -> None:
        """Append an entry to a named section (``"divergences"``, ``"errors"``, ...)."""
        self.sections.setdefault(section, []).append(entry)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, without the header (the runner adds it)."""
        return {"cells": [c.as_dict() for c in self.cells.values()], **self.sections}


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one:
    a temporary file in the same directory, flushed and fsynced, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(payload, indent=1, sort_keys=True, default=_jsonable))


def write_text_atomic(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (see :func:`write_json_atomic`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    raise TypeError(f"[results] cannot write {type(value).__name__} as JSON.")
