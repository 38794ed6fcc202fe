"""The sweep report: ``sweep.json``, ``report.md`` and ``report.html`` (real tables), one
row per architecture with its outcome in every configuration, the findings (triage) and the
run's versions; and :func:`merge_sweeps`, which joins several sweeps (a CI matrix over
machines) into one.

A configuration's cell is ``conforms``, ``departs at step S, POINT`` (with the op when
the judge names it), or why it has no verdict (cannot be built, the oracle or the
candidate cannot load it, a harness error, a crash, a timeout). An architecture reaches a
verdict when at least one of its configurations does; it ``conforms`` when every
configuration that reached a verdict conforms and ``departs`` when any departs.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from conformance.model.report import op_text
from conformance.model.subpoints import where
from conformance.model.sweep_run import NO_VERDICT, VERDICTS, departure_text
from conformance.results import write_json_atomic, write_text_atomic

SCHEMA = "mlx-conformance-sweep/1"

_STATUS_TEXT = {
    "not-built": "cannot be built (transformers)",
    "oracle-load-error": "oracle cannot load (transformers)",
    "candidate-load-error": "candidate cannot load",
    "error": "harness error",
    "crash": "crashed (worker died)",
    "timeout": "timed out",
}


def collect_results(results: Path) -> list[dict[str, Any]]:
    """Every configuration's result file in ``results``; one still ``running`` is a crash
    (its worker died before writing the outcome; a hang is already marked ``timeout``).

    Returns: the results sorted by (architecture, file name)."""
    found = []
    for f in sorted(results.glob("*.json")):
        try:
            r = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"[sweep] unreadable result file {f}: {exc}") from exc
        if r.get("status") == "running":
            r["status"] = "crash"
            r["reason"] = "the pytest-xdist worker died while running this configuration (no result written)"
        found.append(r)
    return found


def cell_text(r: dict[str, Any]) -> str:
    """One configuration's outcome in a few words (the report's table cell)."""
    status = r["status"]
    if status == "conforms":
        tok = (r.get("verdict") or {}).get("tokens") or {}
        return f"conforms ({tok.get('agree')}/{tok.get('steps')} tokens)" if tok.get("steps") else "conforms"
    if status == "departs":
        dep = (r.get("verdict") or {}).get("departure")
        if dep:
            return f"departs at step {dep.get('step')}, {dep.get('point')}{op_text(dep)}"
        return "departs: " + departure_text(r.get("verdict") or {})
    return _STATUS_TEXT.get(status, status)


def _first_line(text: str | None, limit: int = 220) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def arch_status(rows: list[dict[str, Any]]) -> str:
    """An architecture's overall status from its configurations (see the module docstring)."""
    statuses = [r["status"] for r in rows]
    if "departs" in statuses:
        return "departs"
    if "conforms" in statuses:
        return "conforms"
    for s in NO_VERDICT:
        if s in statuses:
            return s
    return statuses[0] if statuses else "not run"


def build_report(results: list[dict[str, Any]], *, candidate: str, run: dict[str, Any],
                 discovery: dict[str, Any], triage: dict[str, Any], source: str = "") -> dict[str, Any]:
    """The ``sweep.json`` document. ``source`` tags every configuration (the machine, for
    merged matrices)."""
    for r in results:
        r.setdefault("source", source)
    return {"schema": SCHEMA, "candidate": candidate, "run": run, "discovery": discovery,
            "configurations": results, "triage": triage, "summary": summarize(results, discovery)}


def summarize(results: list[dict[str, Any]], discovery: dict[str, Any]) -> dict[str, Any]:
    """Counts: architectures covered, with a verdict, conforming, departing, and per
    no-verdict reason; configurations by status."""
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_arch.setdefault(r["arch"], []).append(r)
    arch = {a: arch_status(rows) for a, rows in by_arch.items()}
    counts: dict[str, int] = {}
    for s in arch.values():
        counts[s] = counts.get(s, 0) + 1
    configs: dict[str, int] = {}
    for r in results:
        configs[r["status"]] = configs.get(r["status"], 0) + 1
    return {"architectures": len(arch), "verdicts": sum(counts.get(s, 0) for s in VERDICTS),
            "conforming": counts.get("conforms", 0), "departing": counts.get("departs", 0),
            "no_verdict": {s: counts[s] for s in NO_VERDICT if s in counts},
            "excluded": len(discovery.get("excluded", [])),
            "configurations": len(results), "configurations_by_status": configs}


def _columns(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    order = {"float32": 0, "bfloat16": 1, "bfloat16+affine4": 2}
    for r in results:
        key = (r.get("source", ""), r["label"])
        if key not in seen:
            seen.append(key)
    return sorted(seen, key=lambda k: (k[0], order.get(k[1], 9), k[1]))


def _rows(report: dict[str, Any]) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    from conformance.model.sweep_triage import TRIAGE, Finding

    fields: list[dict[str, Any]] = [{k: tuple(v) if isinstance(v, list) else v for k, v in f.items()
                                     if k != "configurations"} for f in report["triage"]["findings"]]
    findings = [Finding(**f) for f in fields] or TRIAGE
    results = report["configurations"]
    cols = _columns(results)
    by_arch: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in results:
        by_arch.setdefault(r["arch"], {})[(r.get("source", ""), r["label"])] = r
    rows = []
    for arch in sorted(by_arch):
        cells = by_arch[arch]
        status = arch_status(list(cells.values()))
        reasons, ids = [], []
        for r in cells.values():
            if r["status"] == "conforms":
                continue
            hit = next((f for f in findings if f.matches(r)), None)
            if hit is not None and hit.id not in ids:
                ids.append(hit.id)
            text = _first_line(r.get("reason"))
            if text and text not in reasons and r["status"] != "departs":
                reasons.append(text)
        legacy: list[str] = next((r["legacy_keys"] for r in cells.values() if r.get("legacy_keys")), [])
        rows.append({"arch": arch, "status": status, "cells": [cells.get(c) for c in cols],
                     "reasons": reasons, "findings": ids, "legacy_keys": legacy})
    return cols, rows


def _col_name(col: tuple[str, str]) -> str:
    return f"{col[1]} [{col[0]}]" if col[0] else col[1]


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md``: summary, the architecture table, the findings, what was excluded."""
    s = report["summary"]
    run = report["run"]
    cols, rows = _rows(report)
    v = report["discovery"].get("versions", {})
    out = [f"# Architecture sweep: {report['candidate']}", "",
           f"mlx-lm {v.get('mlx-lm')}, transformers {v.get('transformers')}, mlx {v.get('mlx')}, "
           f"torch {v.get('torch')}; {run.get('platform', '')}; commit {run.get('commit', '?')}; "
           f"{run.get('date', '')}; {run.get('seconds', '?')} s with {run.get('jobs', '?')} job(s).", "",
           f"**{s['architectures']} architectures, {s['verdicts']} reach a verdict: {s['conforming']} conform, "
           f"{s['departing']} depart**; no verdict: "
           + (", ".join(f"{_STATUS_TEXT.get(k, k)} {n}" for k, n in s["no_verdict"].items()) or "none")
           + f". {s['configurations']} configurations: "
           + ", ".join(f"{k} {n}" for k, n in sorted(s["configurations_by_status"].items()))
           + f". Excluded (multimodal): {s['excluded']}.", "",
           f"Each configuration: a tiny random transformers-built checkpoint, a prefill of "
           f"{run.get('prompt_len', '?')} tokens (longer than any sliding window) and {run.get('steps', '?')} "
           "cached decode steps, judged against the oracle (`conformance.model.judge`).", "",
           "## Architectures", "",
           "| architecture | status | " + " | ".join(_col_name(c) for c in cols) + " | findings | reason |",
           "|---|---|" + "---|" * len(cols) + "---|---|"]
    for row in rows:
        cells = [cell_text(c) if c else "not run" for c in row["cells"]]
        reason = "; ".join(row["reasons"])
        out.append(f"| {row['arch']} | {row['status']} | " + " | ".join(cells)
                   + f" | {', '.join(row['findings'])} | {_md(reason)} |")
    out += ["", "## Findings", "", "| id | kind | summary | configurations | reproducer / test |", "|---|---|---|---|---|"]
    for f in report["triage"]["findings"]:
        where = f"{len(f['configurations'])}: " + ", ".join(f["configurations"][:6]) + (" …" if len(f["configurations"]) > 6 else "") if f["configurations"] else "none in this run"
        ref = " ".join(x for x in (f.get("repro") and f"`{f['repro']}`", f.get("test") and f"`{f['test']}`") if x)
        out.append(f"| {f['id']} | {f['kind']} | {_md(f['summary'])} | {_md(where)} | {ref} |")
    if report["triage"]["untriaged"]:
        out += ["", "## Untriaged", "", "| architecture | configuration | status | reason |", "|---|---|---|---|"]
        out += [f"| {u['arch']} | {u['label']} | {u['status']} | {_md(_first_line(u['reason']))} |"
                for u in report["triage"]["untriaged"]]
    inside = inside_conforming(report)
    if inside:
        out += ["", f"## {INSIDE_TITLE}", "", INSIDE_NOTE, "",
                "| architecture | configuration | points | first |", "|---|---|---|---|"]
        out += [f"| {a} | {c} | {n} | {_md(first)} |" for a, c, n, first in inside]
    if report["discovery"].get("excluded"):
        out += ["", "## Excluded", ""]
        out += [f"- {e['model_type']}: {e['reason']}" for e in report["discovery"]["excluded"]]
    legacy = sorted({k for row in rows for k in row["legacy_keys"]})
    if legacy:
        out += ["", f"Configs carry transformers-4 spellings next to transformers 5's ({', '.join(legacy)}); "
                "see the finding `rope-parameters`.", ""]
    return "\n".join(out) + "\n"


INSIDE_TITLE = "Sub-layer points departing inside conforming layers"
INSIDE_NOTE = ("An op inside a layer (conformance/model/subpoints.py) outside the bound while its layer's output "
               "conforms, before the configuration's first departure: reported, not failed (the same module name in two libraries need not compute the same "
               "quantity; what the op's error does to the model shows at the judged layer outputs).")


def inside_conforming(report: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """``(arch, configuration, count, the first few as 'step S, layer L op (ratio R)')`` of
    every configuration whose sub-layer points depart inside conforming layers."""
    found = []
    for r in sorted(report["configurations"], key=lambda r: (r["arch"], r["label"])):
        sub = (r.get("verdict") or {}).get("subpoints") or {}
        if sub.get("inside_conforming"):
            first = ", ".join(f"step {p['step']}, {where(p)} {p['op']} ({p['ratio']:.4g})"
                              for p in sub.get("inside_conforming_first", [])[:3])
            found.append((r["arch"], r["label"], int(sub["inside_conforming"]), first))
    return found


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:100em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.25em .5em;vertical-align:top;
font-size:.9em}th{background:#f3f3f3;text-align:left}.conforms{background:#e6f4e6}.departs{background:#fde2e1}
.nv{background:#fff4d6}.crash,.timeout,.error{background:#f6d0f5}code{font-size:.9em}"""


def _cls(status: str) -> str:
    if status in ("conforms", "departs", "crash", "timeout", "error"):
        return status
    return "nv"


def render_html(report: dict[str, Any]) -> str:
    """``report.html``: the same content as the Markdown, as HTML tables."""
    e = html.escape
    s = report["summary"]
    run = report["run"]
    v = report["discovery"].get("versions", {})
    cols, rows = _rows(report)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Sweep: {e(report['candidate'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Architecture sweep: {e(report['candidate'])}</h1>",
             f"<p>mlx-lm {e(str(v.get('mlx-lm')))}, transformers {e(str(v.get('transformers')))}, mlx "
             f"{e(str(v.get('mlx')))}, torch {e(str(v.get('torch')))}; {e(str(run.get('platform', '')))}; commit "
             f"{e(str(run.get('commit', '?')))}; {e(str(run.get('date', '')))}; {e(str(run.get('seconds', '?')))} s with "
             f"{e(str(run.get('jobs', '?')))} job(s).</p>",
             f"<p><b>{s['architectures']} architectures, {s['verdicts']} reach a verdict: {s['conforming']} conform, "
             f"{s['departing']} depart</b>; no verdict: "
             + e(", ".join(f"{_STATUS_TEXT.get(k, k)} {n}" for k, n in s["no_verdict"].items()) or "none") + ".</p>",
             "<h2>Architectures</h2><table><tr><th>architecture</th><th>status</th>"
             + "".join(f"<th>{e(_col_name(c))}</th>" for c in cols) + "<th>findings</th><th>reason</th></tr>"]
    for row in rows:
        cells = "".join(f"<td class='{_cls(c['status'])}' title='{e(c.get('reason') or '')}'>{e(cell_text(c))}</td>"
                        if c else "<td>not run</td>" for c in row["cells"])
        parts.append(f"<tr><td>{e(row['arch'])}</td><td class='{_cls(row['status'])}'>{e(row['status'])}</td>{cells}"
                     f"<td>{e(', '.join(row['findings']))}</td><td>{e('; '.join(row['reasons']))}</td></tr>")
    parts.append("</table><h2>Findings</h2><table><tr><th>id</th><th>kind</th><th>summary</th>"
                 "<th>configurations</th><th>reproducer / test</th></tr>")
    for f in report["triage"]["findings"]:
        where = ", ".join(f["configurations"]) or "none in this run"
        ref = " ".join(f"<code>{e(x)}</code>" for x in (f.get("repro"), f.get("test")) if x)
        parts.append(f"<tr><td>{e(f['id'])}</td><td>{e(f['kind'])}</td><td>{e(f['summary'])}"
                     + (f"<br><small>{e(f['detail'])}</small>" if f.get("detail") else "")
                     + f"</td><td>{e(where)}</td><td>{ref}</td></tr>")
    parts.append("</table>")
    if report["triage"]["untriaged"]:
        parts.append("<h2>Untriaged</h2><table><tr><th>architecture</th><th>configuration</th><th>status</th>"
                     "<th>reason</th></tr>")
        parts += [f"<tr><td>{e(u['arch'])}</td><td>{e(u['label'])}</td><td>{e(u['status'])}</td>"
                  f"<td>{e(_first_line(u['reason'], 400))}</td></tr>" for u in report["triage"]["untriaged"]]
        parts.append("</table>")
    inside = inside_conforming(report)
    if inside:
        parts.append(f"<h2>{e(INSIDE_TITLE)}</h2><p>{e(INSIDE_NOTE)}</p><table><tr><th>architecture</th>"
                     "<th>configuration</th><th>points</th><th>first</th></tr>")
        parts += [f"<tr><td>{e(a)}</td><td>{e(c)}</td><td>{n}</td><td>{e(first)}</td></tr>" for a, c, n, first in inside]
        parts.append("</table>")
    if report["discovery"].get("excluded"):
        parts.append("<h2>Excluded</h2><table><tr><th>model_type</th><th>reason</th></tr>")
        parts += [f"<tr><td>{e(x['model_type'])}</td><td>{e(x['reason'])}</td></tr>"
                  for x in report["discovery"]["excluded"]]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_sweep_report(report: dict[str, Any], out: Path) -> None:
    """Write ``sweep.json``, ``report.md`` and ``report.html`` into ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "sweep.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))
    write_text_atomic(out / "report.html", render_html(report))


def load_sweep(path: Path) -> dict[str, Any]:
    """A ``sweep.json`` (or a folder holding one)."""
    f = path / "sweep.json" if path.is_dir() else path
    try:
        report = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"[sweep] cannot read a sweep report at {f}: {exc}") from exc
    if report.get("schema") != SCHEMA:
        raise SystemExit(f"[sweep] {f} is not a sweep report (schema {report.get('schema')!r}, want {SCHEMA!r}).")
    return report


def merge_sweeps(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Join several sweeps (one per machine, or shards of one) into one report.

    A configuration is keyed by (source, architecture, configuration); each sweep's
    configurations keep the ``source`` their run gave them, so two machines' results of
    the same configuration stay two columns. The same key twice (a re-run shard) keeps the
    later one. The triage is recomputed over the joined results."""
    from conformance.model.sweep_triage import triage

    if not reports:
        raise SystemExit("[sweep] merge needs at least one sweep report.")
    candidates = {r["candidate"] for r in reports}
    if len(candidates) > 1:
        raise SystemExit(f"[sweep] cannot merge sweeps of different candidates {sorted(candidates)}.")
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for rep in reports:
        for r in rep["configurations"]:
            merged[(r.get("source", ""), r["arch"], r["label"])] = r
    results = sorted(merged.values(), key=lambda r: (r["arch"], r.get("source", ""), r["label"]))
    excluded = {e["model_type"]: e for rep in reports for e in rep["discovery"].get("excluded", [])}
    discovery = {**reports[0]["discovery"], "excluded": list(excluded.values()),
                 "architectures": sorted({json.dumps(a, sort_keys=True) for rep in reports
                                          for a in rep["discovery"].get("architectures", [])})}
    discovery["architectures"] = [json.loads(a) for a in discovery["architectures"]]
    run = {**reports[0]["run"], "merged": [rep["run"] for rep in reports],
           "seconds": sum(float(rep["run"].get("seconds") or 0) for rep in reports),
           "jobs": "/".join(str(rep["run"].get("jobs", "?")) for rep in reports)}
    return {"schema": SCHEMA, "candidate": reports[0]["candidate"], "run": run, "discovery": discovery,
            "configurations": results, "triage": triage(results), "summary": summarize(results, discovery)}
