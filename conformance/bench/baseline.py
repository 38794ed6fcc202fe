"""The baseline file and the regression rule.

A baseline is the JSON that ``bench record`` writes (``SCHEMA``): ``machine``,
``settings``, ``roofline``, ``results`` (one entry per cell, keyed ``op/case/dtype``, with
``mlx``, ``torch`` and optionally ``torch_raw`` timings) and ``overhead``.

The rule (:func:`compare`): a cell REGRESSED when, for ``mlx_impl`` or for
``torch_reference`` (the project's two implementations; the third-party ``torch_raw``
column is context, never judged), both hold:

1. the new median is more than ``threshold`` (default 25 %) above the baseline median:
   ``new > base * (1 + threshold)``; and
2. the slowdown exceeds the noise of the two measurements, their interquartile ranges
   added: ``new - base > iqr_base + iqr_new`` (and ``min_delta_s``, ``--min-delta-us``,
   0 by default).

The first keeps small real changes from failing a run; the second keeps a noisy
measurement (a busy machine, a cell whose samples spread widely) from failing it. A cell
that ran in the baseline but raises now also fails. ``bench compare`` measures every cell
that regressed a second time and keeps, per side, the faster of the two medians
(:func:`keep_faster`): a burst of load from another process during one cell's samples
(which its IQR cannot show) then fails nothing, while a real slowdown fails both times.
Improvements (the mirror image of the rule) are reported, never failed; cells only in one
of the two runs are listed. The layer-overhead pairs are reported by ``record`` and not
judged here.

On a shared machine, sub-millisecond cells can differ between runs by more than either
run's IQR shows: MLX's per-evaluation latency (handing the graph to its CPU stream thread
and waking up again) made the same Embedding lookup 53 us in one run and 160-190 us in
later ones on this project's 2-core VM, with no code change. ``--min-delta-us`` (e.g. 200)
ignores slowdowns smaller than that absolute amount on such machines; a dedicated runner
needs none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.bench.machine import roofline_share

SCHEMA = "mlx-bench-baseline/1"
DEFAULT_THRESHOLD = 0.25
JUDGED_SIDES = ("mlx", "torch")
SIDE_NAMES = {"mlx": "mlx_impl", "torch": "torch_reference", "torch_raw": "PyTorch op"}


def mlx_torch_ratio(entry: Mapping[str, Any], other: str = "torch") -> float | None:
    """MLX's median over PyTorch's (``torch_reference``, or ``torch_raw``); None if either is missing."""
    a, b = entry.get("mlx"), entry.get(other)
    if not a or not b or b["median_s"] <= 0:
        return None
    return float(a["median_s"]) / float(b["median_s"])


def roofline_shares(entry: Mapping[str, Any], peak: Mapping[str, float]) -> dict[str, float | None]:
    """Each side's roofline share (see :mod:`conformance.bench.costs`)."""
    cost = entry.get("cost") or {}
    out: dict[str, float | None] = {}
    for side in ("mlx", "torch", "torch_raw"):
        t = entry.get(side)
        out[side] = None if not t or not cost else roofline_share(
            float(cost["flops"]), float(cost["bytes"]), float(t["median_s"]), dict(peak))
    return out


def achieved(entry: Mapping[str, Any], side: str = "mlx") -> tuple[float | None, float | None]:
    """(bytes/s, FLOP/s) the side achieved under the cost model."""
    cost, t = entry.get("cost"), entry.get(side)
    if not cost or not t or t["median_s"] <= 0:
        return None, None
    s = float(t["median_s"])
    flops = float(cost["flops"])
    return float(cost["bytes"]) / s, (flops / s if flops else None)


class BaselineError(Exception):
    """A baseline that cannot be used: missing, corrupt, or of another schema. The
    message says which and what to do; the CLI prints it and exits 2."""


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and check a baseline (or a ``bench`` run) JSON; raise :class:`BaselineError`."""
    path = Path(path)
    if path.is_dir():
        path = path / "baseline.json"
    if not path.exists():
        raise BaselineError(
            f"[bench] no baseline at {path}. Record one on this machine first: "
            "python -m conformance bench record (or nox -s bench)."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(
            f"[bench] {path} is not valid JSON ({exc}); the file is corrupt. Delete it and record "
            "a new baseline: python -m conformance bench record."
        ) from None
    except OSError as exc:
        raise BaselineError(f"[bench] cannot read {path}: {exc}.") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise BaselineError(
            f"[bench] {path} has schema {found!r}, expected {SCHEMA!r}: it was written by another "
            "tool or another version of this one. Record a new baseline: python -m conformance bench record."
        )
    problem = _shape_problem(data)
    if problem:
        raise BaselineError(f"[bench] {path} is malformed: {problem}. Record a new baseline.")
    return data


def _shape_problem(data: dict[str, Any]) -> str:
    for key in ("machine", "settings", "roofline", "results"):
        if key not in data:
            return f"missing section {key!r}"
    if not isinstance(data["results"], list):
        return "'results' is not a list"
    for i, entry in enumerate(data["results"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            return f"result {i} has no 'key'"
        for side in ("mlx", "torch", "torch_raw"):
            t = entry.get(side)
            if t is None:
                continue
            if not isinstance(t, dict) or not all(
                    isinstance(t.get(k), (int, float)) for k in ("median_s", "q1_s", "q3_s")):
                return f"result {entry['key']!r}: timing {side!r} lacks median_s/q1_s/q3_s"
    return ""


@dataclass(frozen=True)
class SideChange:
    """One side of one cell, baseline against now."""

    side: str
    base_s: float | None
    new_s: float | None
    noise_s: float
    verdict: str  # "ok", "regressed", "improved", "error", "fixed", "not timed"

    @property
    def change(self) -> float | None:
        """Relative change of the median, ``new / base - 1``."""
        if not self.base_s or self.new_s is None:
            return None
        return self.new_s / self.base_s - 1.0


@dataclass
class Comparison:
    """Every common cell's changes, and the cells found in only one run."""

    threshold: float
    min_delta_s: float = 0.0
    rows: list[tuple[dict[str, Any], dict[str, Any], list[SideChange]]] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[tuple[str, SideChange]]:
        """(cell key, change) for every judged side that regressed or now raises."""
        return [(new["key"], c) for _, new, changes in self.rows for c in changes
                if c.side in JUDGED_SIDES and c.verdict in ("regressed", "error")]


def judge_side(side: str, base: dict[str, Any] | None, new: dict[str, Any] | None,
               threshold: float, min_delta_s: float = 0.0) -> SideChange:
    """Apply the rule of the module docstring to one side of one cell."""
    if base is None and new is None:
        return SideChange(side, None, None, 0.0, "not timed")
    if new is None:
        return SideChange(side, float(base["median_s"]) if base else None, None, 0.0, "error")
    if base is None:
        return SideChange(side, None, float(new["median_s"]), 0.0, "fixed")
    b, n = float(base["median_s"]), float(new["median_s"])
    noise = (float(base["q3_s"]) - float(base["q1_s"])) + (float(new["q3_s"]) - float(new["q1_s"]))
    if n > b * (1.0 + threshold) and n - b > max(noise, min_delta_s):
        verdict = "regressed"
    elif b > n * (1.0 + threshold) and b - n > max(noise, min_delta_s):
        verdict = "improved"
    else:
        verdict = "ok"
    return SideChange(side, b, n, noise, verdict)


def compare(base: dict[str, Any], new: dict[str, Any], threshold: float = DEFAULT_THRESHOLD,
            min_delta_s: float = 0.0) -> Comparison:
    """Compare two runs cell by cell (see the module docstring for the rule)."""
    result = Comparison(threshold, min_delta_s)
    for key in ("backend", "cpu_model", "cpu_cores", "gpu", "mlx", "torch"):
        b, n = base["machine"].get(key), new["machine"].get(key)
        if b != n:
            result.warnings.append(f"{key} differs: baseline {b!r}, now {n!r}")
    if base["settings"].get("shapes") != new["settings"].get("shapes"):
        result.warnings.append(
            f"shapes differ: baseline {base['settings'].get('shapes')!r}, now {new['settings'].get('shapes')!r}")
    base_by_key = {e["key"]: e for e in base["results"]}
    new_by_key = {e["key"]: e for e in new["results"]}
    for key, n_entry in new_by_key.items():
        b_entry = base_by_key.get(key)
        if b_entry is None:
            result.only_new.append(key)
            continue
        if b_entry.get("shape") != n_entry.get("shape"):
            result.warnings.append(f"{key}: shape differs (baseline {b_entry.get('shape')}, now {n_entry.get('shape')})")
        changes = [judge_side(side, b_entry.get(side), n_entry.get(side), threshold, min_delta_s)
                   for side in ("mlx", "torch", "torch_raw")]
        result.rows.append((b_entry, n_entry, changes))
    result.only_base = [k for k in base_by_key if k not in new_by_key]
    return result


def keep_faster(run: dict[str, Any], retry: dict[str, Any]) -> list[str]:
    """Fold a re-measurement of some cells into ``run``: per cell and side, keep the timing
    with the lower median. Returns the keys retried (also listed in ``run["retried"]``)."""
    by_key = {e["key"]: e for e in run["results"]}
    retried = []
    for again in retry["results"]:
        entry = by_key.get(again["key"])
        if entry is None:
            continue
        retried.append(again["key"])
        for side in ("mlx", "torch", "torch_raw"):
            new, old = again.get(side), entry.get(side)
            if new and (not old or new["median_s"] < old["median_s"]):
                entry[side] = new
                entry.get("errors", {}).pop(side, None)
    run["retried"] = sorted(set(run.get("retried", [])) | set(retried))
    return retried
