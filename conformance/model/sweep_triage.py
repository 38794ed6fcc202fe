"""The sweep's triage: why each architecture that does not conform does not.

Every departure and every configuration that cannot be built or loaded is explained by one
entry of :data:`TRIAGE`, of one kind:

* ``mlx-lm bug``: mlx-lm computes something else than the architecture defines; a
  standalone reproducer (mlx-lm, transformers, torch, numpy only) sits in ``repro``;
* ``transformers quirk``: transformers' own class or config is the odd one out;
* ``convention``: the two libraries agree to differ (or a checkpoint layout mlx-lm does
  not read); pinned by the named ``test``;
* ``out of scope``: not a text causal LM checkpoint the sweep can write (say why).

An entry matches a configuration by architecture, status and (optionally) a substring of
its reason. The report lists every entry with the configurations it explains, and every
outcome no entry explains as ``untriaged``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("mlx-lm bug", "transformers quirk", "convention", "out of scope")


@dataclass(frozen=True)
class Finding:
    """One triaged reason."""

    id: str
    kind: str
    archs: tuple[str, ...]
    statuses: tuple[str, ...]
    summary: str
    match: str = ""
    """A substring of the configuration's reason (empty: any)."""
    configs: tuple[str, ...] = ()
    """Configuration labels it applies to (empty: all)."""
    repro: str = ""
    test: str = ""
    versions: str = ""
    detail: str = ""

    def matches(self, result: dict[str, Any]) -> bool:
        """Whether this finding explains ``result`` (a sweep configuration)."""
        return (result["arch"] in self.archs and result["status"] in self.statuses
                and (not self.configs or result["label"] in self.configs)
                and self.match in (result.get("reason") or ""))


TRIAGE: list[Finding] = []
"""One entry per finding (filled from the sweep's own triage)."""


def triage(results: list[dict[str, Any]], findings: list[Finding] | None = None) -> dict[str, Any]:
    """Match every non-conforming configuration to a finding.

    Returns: ``{"findings": [finding + "configurations": [arch label ...]],
    "untriaged": [{"arch", "label", "status", "reason"}]}``; a finding that explains no
    configuration of this run is kept with an empty list (the report says so)."""
    findings = TRIAGE if findings is None else findings
    by_id: dict[str, list[str]] = {f.id: [] for f in findings}
    untriaged = []
    for r in results:
        if r["status"] == "conforms":
            continue
        hit = next((f for f in findings if f.matches(r)), None)
        if hit is None:
            untriaged.append({k: r.get(k) for k in ("arch", "label", "status", "reason")})
        else:
            by_id[hit.id].append(f"{r['arch']} {r['label']}")
    return {"findings": [{**asdict(f), "configurations": by_id[f.id]} for f in findings],
            "untriaged": untriaged}


def finding_for(result: dict[str, Any], findings: list[Finding] | None = None) -> Finding | None:
    """The finding that explains ``result``, if any."""
    return next((f for f in (TRIAGE if findings is None else findings) if f.matches(result)), None)
