"""The conformance report: one JSON (a header per run, the cells, divergences, mutants,
error cases), rendered as Markdown and as one self-contained HTML page; JSON files from
several machines (CPU, CUDA, Metal) merge into one matrix.

``python -m conformance merge a.json b.json --out DIR`` merges; ``run`` writes a report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conformance.results import CONFORMING, ULP_BINS, write_json_atomic, write_text_atomic

SCHEMA = "mlx-conformance-report/1"


class ReportError(ValueError):
    """A report file that cannot be read: missing, corrupt, or of another schema."""


def load_report(path: Path) -> dict[str, Any]:
    """Read a report JSON, refusing corrupt files and foreign schemas with a clear message."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"[report] {path}: no such file.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"[report] {path}: not valid JSON ({exc}); was the run interrupted?") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ReportError(f"[report] {path}: expected schema {SCHEMA!r} but found {found!r}.")
    return data


def merge(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate runs; every cell, divergence, mutant and error entry keeps its run index."""
    merged: dict[str, Any] = {"schema": SCHEMA, "runs": [], "cells": [], "divergences": [],
                              "mutants": [], "errors": [], "crashes": [], "fuzz": []}
    for report in reports:
        offset = len(merged["runs"])
        merged["runs"].extend(report["runs"])
        for section in ("cells", "divergences", "mutants", "errors", "crashes", "fuzz"):
            for entry in report.get(section, []):
                merged[section].append({**entry, "run": entry.get("run", 0) + offset})
    return merged


def _cpu_line(run: dict[str, Any]) -> str:
    info = run.get("cpu_backend") or {}
    blas = info.get("blas") or {}
    return (f"BLAS {blas.get('provider') or 'netlib (as shipped)'} "
            f"({'active' if blas.get('active') else 'inactive'}: {blas.get('reason', '')}), "
            f"cache limit {info.get('cache_limit', '?')} bytes")


def _run_label(run: dict[str, Any]) -> str:
    return f"{run.get('backend', '?')} ({run.get('device', '?')})"


def summary(report: dict[str, Any]) -> dict[str, int]:
    """Counts: cells, cells failed, examples run, mutants killed/total, crashes."""
    cells = report["cells"]
    return {
        "cells": len(cells),
        "cells_failed": sum(c["status"] not in CONFORMING for c in cells),
        "cells_more_accurate": sum(c["status"] == "more-accurate" for c in cells),
        "examples": sum(c["examples"] for c in cells),
        "edge_cases": sum(c["edge_cases"] for c in cells),
        "mutants": len(report.get("mutants", [])),
        "mutants_killed": sum(m["killed"] for m in report.get("mutants", [])),
        "error_cases": len(report.get("errors", [])),
        "error_cases_failed": sum(not e["ok"] for e in report.get("errors", [])),
        "crashes": len(report.get("crashes", [])),
        "fuzz_inputs": sum(f["total_inputs"] for f in report.get("fuzz", [])),
        "fuzz_violations": sum(len(f["violations"]) for f in report.get("fuzz", [])),
        "fuzz_crashes": sum(len(f["crashes"]) for f in report.get("fuzz", [])),
        "fuzz_hangs": sum(len(f.get("hangs", [])) for f in report.get("fuzz", [])),
    }


def _matrix(report: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[int, str]], dict]:
    rows = sorted({(c["op"], c["mode"]) for c in report["cells"]})
    cols = sorted({(c.get("run", 0), c["dtype"]) for c in report["cells"]},
                  key=lambda rc: (rc[0], ["float32", "float16", "bfloat16"].index(rc[1])
                                  if rc[1] in ("float32", "float16", "bfloat16") else 9))
    index = {(c["op"], c["mode"], c.get("run", 0), c["dtype"]): c for c in report["cells"]}
    return rows, cols, index


def _mark(cell: dict[str, Any]) -> str:
    """PASS, MLX-MORE-ACCURATE (conforms; MLX beat the peer against the oracle) or FAIL."""
    return {"pass": "PASS", "more-accurate": "MLX-MORE-ACCURATE"}.get(cell["status"], cell["status"].upper())


def _precision_line(run: dict[str, Any]) -> str:
    mp = run.get("matmul_precision") or {}
    if not mp:
        return "not recorded"
    return (f"float32 matmuls at {mp.get('float32_matmul', '?')} ({mp.get('variable', 'MLX_ENABLE_TF32')}="
            f"{mp.get('value')!s}, {mp.get('how_set', '?')}); users get {mp.get('default', '?')} by default "
            f"on this back end")


def _supports_line(run: dict[str, Any]) -> str:
    sup = run.get("supports") or {}
    if not sup:
        return "not recorded"
    return (f"float64 {'yes' if sup.get('float64') else 'no'}, 1-bit affine quantization "
            f"{'yes' if sup.get('affine_1bit') else 'no (refused by mlx_impl)'}")


def _cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    mark = _mark(cell)
    return (f"{mark} {cell['examples']}+{cell['edge_cases']} "
            f"{cell['mlx']['max_ulp']:.3g}/{cell['peer']['max_ulp']:.3g}")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: header, summary, matrix, divergences, mutants, failures."""
    s = summary(report)
    out = ["# MLX conformance report", ""]
    for i, run in enumerate(report["runs"]):
        out.append(f"- run {i}: " + ", ".join(f"{k} `{v}`" for k, v in sorted(run.items()) if not isinstance(v, dict)))
        out.append(f"  - MLX CPU back end: {_cpu_line(run)}")
        out.append(f"  - MLX matmul precision: {_precision_line(run)}")
        out.append(f"  - back end supports: {_supports_line(run)}")
    out += [
        "",
        f"**{s['cells'] - s['cells_failed']} / {s['cells']} cells conform** "
        f"({s['cells_more_accurate']} of them MLX-MORE-ACCURATE: MLX failed against the peer but "
        "is closer to the float64 oracle; "
        f"{s['examples']} Hypothesis examples, {s['edge_cases']} fixed edge cases); "
        f"mutants killed {s['mutants_killed']} / {s['mutants']}; error cases refused by both libraries "
        f"{s['error_cases'] - s['error_cases_failed']} / {s['error_cases']}; crashes {s['crashes']}.",
        "",
        "Each cell: status, examples + edge cases, worst MLX error / worst PyTorch error "
        "against the float64 oracle, in output ulps at the largest magnitude of the row.",
        "",
    ]
    rows, cols, index = _matrix(report)
    out.append("| op | mode | " + " | ".join(f"{d} [{r}]" for r, d in cols) + " |")
    out.append("|---|---|" + "---|" * len(cols))
    for op, mode in rows:
        out.append(f"| {op} | {mode} | " + " | ".join(_cell_text(index.get((op, mode, r, d))) for r, d in cols) + " |")
    better = [c for c in report["cells"] if c["status"] == "more-accurate"]
    if better:
        out += ["", "## MLX more accurate than the peer (the float64 oracle arbitrates)", ""]
        for c in better:
            out += [f"- {c['op']} [{c['dtype']}, {c['mode']}] (run {c.get('run', 0)}): "
                    f"{c.get('more_accurate', 0)} cases; first: `{c.get('first_more_accurate', '')[:400]}`"]
    out += _precision_table(report)
    failed = [c for c in report["cells"] if c["status"] not in CONFORMING]
    if failed:
        out += ["", "## Failures", ""]
        for c in failed:
            out += [f"### {c['op']} [{c['dtype']}, {c['mode']}] (run {c.get('run', 0)})", "", "```",
                    c["first_failure"], "```", "", f"Reproduce: `{c['reproduce']}`", ""]
    if report.get("crashes"):
        out += ["", "## Crashes", ""]
        out += [f"- run {c.get('run', 0)}: `{c['test']}`: {c['detail']}" for c in report["crashes"]]
    if report.get("divergences"):
        out += ["", "## Expected divergences (MLX's, not mlx_impl's)", "",
                "| op | name | dtype | reason | reference | still diverges | input |", "|---|---|---|---|---|---|---|"]
        out += [f"| {d['op']} | {d['name']} | {d['dtype']} | {d['reason']} | {d['reference']} | "
                f"{d['still_diverges']} | `{d['input']}` |" for d in report["divergences"]]
    if report.get("mutants"):
        out += ["", "## Mutation meta-tests (planted bugs the harness must flag)", "",
                "| op | mutant | bug | killed | examples tried |", "|---|---|---|---|---|"]
        out += [f"| {m['op']} | {m['mutant']} | {m['bug']} | {'yes' if m['killed'] else '**NO**'} | "
                f"{m['examples_tried']} |" for m in report["mutants"]]
    out += _fuzz_markdown(report)
    return "\n".join(out) + "\n"


def render_summary(report: dict[str, Any]) -> str:
    """A compact Markdown matrix for the README: op x mode rows, one column per run and dtype."""
    s = summary(report)
    rows, cols, index = _matrix(report)
    runs = "; ".join(
        f"{_run_label(r)}, mlx {r.get('mlx')}, torch {r.get('torch')}, profile {r.get('profile')}, "
        f"commit {r.get('commit')}" for r in report["runs"]
    )
    out = [
        f"Conformance summary ({runs}): **{s['cells'] - s['cells_failed']} / {s['cells']} cells conform**, "
        f"{s['examples']} examples; mutants killed {s['mutants_killed']} / {s['mutants']}. "
        "Cell: status, examples, worst MLX / PyTorch error in output ulps vs the float64 oracle.",
        "",
        "| op | mode | " + " | ".join(d if len(report["runs"]) == 1 else f"{d} [{r}]" for r, d in cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for op, mode in rows:
        texts = []
        for r, d in cols:
            c = index.get((op, mode, r, d))
            texts.append("-" if c is None else
                         f"{_mark(c)} {c['examples']} "
                         f"({c['mlx']['max_ulp']:.2g}/{c['peer']['max_ulp']:.2g})")
        out.append(f"| {op} | {mode} | " + " | ".join(texts) + " |")
    return "\n".join(out) + "\n"


def update_readme(readme: Path, report: dict[str, Any]) -> None:
    """Replace the text between the README's conformance-summary markers."""
    start, end = "<!-- conformance-summary:start -->", "<!-- conformance-summary:end -->"
    text = Path(readme).read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise ReportError(f"[report] {readme}: the summary markers {start} ... {end} are missing.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text_atomic(Path(readme), f"{head}{start}\n{render_summary(report)}{end}{tail}")


MATMUL_OPS = ("nn.linear", "nn.multi_linear", "fast.scaled_dot_product_attention")
"""Ops whose float32 path is a matmul that MLX runs at TF32 when MLX_ENABLE_TF32 is on
(measured on CUDA: the float32 quantized matmul is not affected)."""


def _precision_table(report: dict[str, Any]) -> list[str]:
    """Per matmul-based op and run: the float32 precision users get by default on that back
    end and how far MLX was from the float64 oracle in float32 ulps (the worst over the cell)."""
    rows = []
    for c in report["cells"]:
        if c["op"] not in MATMUL_OPS or c["dtype"] != "float32":
            continue
        run = report["runs"][c.get("run", 0)] if c.get("run", 0) < len(report["runs"]) else {}
        mp = run.get("matmul_precision") or {}
        rows.append(f"| {c['op']} | {c['mode']} | {c.get('run', 0)} | {mp.get('default', '?')} | "
                    f"{mp.get('float32_matmul', '?')} | {c['mlx']['max_ulp']:.3g} | {c['peer']['max_ulp']:.3g} |")
    if not rows:
        return []
    return ["", "## float32 matmul precision per op", "",
            "What users get by default on each run's back end, what this run used, and the worst error "
            "against the float64 oracle in float32 ulps at the row's largest value: a float32 sum stays "
            "within tens of ulps at these sizes; TF32 inputs (10-bit mantissa) cost up to about 2^-10 of "
            "|x| @ |w|, i.e. thousands of float32 ulps (the bound next to the tolerance, not a skip).", "",
            "| op | mode | run | default | this run | MLX worst ulp | peer worst ulp |",
            "|---|---|---|---|---|---|---|", *rows]


_FUZZ_INTRO = ("Arbitrary inputs (mostly wrong, some right: ranks 0-5, zero-size dims, every dtype, junk "
               "parameters) into every public entry point, in a subprocess. A call must return the "
               "documented shape or raise ValueError/TypeError/IndexError naming the op in brackets, "
               "never crash, and both libraries must accept and refuse the same inputs.")


def _fuzz_rows(result: dict[str, Any]) -> list[tuple[str, int, str, str, int, str]]:
    """(entry, inputs, MLX accepted/refused, PyTorch accepted/refused, violations, note)."""
    rows = []
    for name, e in sorted(result["entries"].items()):
        sides = [f"{e[lib]['accepted']} / {e[lib]['refused']}" if lib in e else "-" for lib in ("mlx", "torch")]
        bad = sum(e[lib]["violations"] for lib in ("mlx", "torch") if lib in e) + e.get("disagreements", 0)
        note = ", ".join(f"{what} {e[key]}" for key, what in (("crashed", "crashed"), ("hung", "hung")) if e.get(key))
        rows.append((name, e["inputs"], sides[0], sides[1], bad, note))
    return rows


def _fuzz_markdown(report: dict[str, Any]) -> list[str]:
    """The "Fuzzing" section: counts per entry point, then every violation and crash."""
    out: list[str] = []
    for result in report.get("fuzz", []):
        out += ["", f"## Fuzzing (run {result.get('run', 0)})", "", _FUZZ_INTRO, "",
                f"**{result['total_inputs']} inputs** over {len(result['entries'])} entry points "
                f"({result['examples_per_entry']} each, profile `{result['profile']}`); "
                f"{len(result['violations'])} distinct violations, {len(result['crashes'])} crashes, "
                f"{len(result.get('hangs', []))} hangs.", "",
                "| entry point | inputs | MLX accepted / refused | PyTorch accepted / refused | violations | |",
                "|---|---|---|---|---|---|"]
        out += [f"| {n} | {i} | {m} | {t} | {'**' + str(b) + '**' if b else 0} | {note} |"
                for n, i, m, t, b, note in _fuzz_rows(result)]
        for c in result["crashes"]:
            out += ["", f"- CRASH `{c['entry']}` [{c['library']}]: {c['detail'][:300]}", f"  input: `{c['input']}`"]
        for h in result.get("hangs", []):
            out += ["", f"- HANG `{h['entry']}` [{h['library']}]: {h['detail'][:300]}", f"  input: `{h['input']}`"]
        for v in result["violations"]:
            out += ["", f"- `{v['entry']}` [{v['library']}] {v['kind']} (x{v['count']}): {v['exception']} "
                    f"{v['detail'][:300]}", f"  input: `{v['input'][:800]}`"]
    return out


def _fuzz_html(report: dict[str, Any]) -> str:
    esc = html.escape
    parts = []
    for result in report.get("fuzz", []):
        rows = "".join(
            f"<tr><td>{esc(n)}</td><td>{i}</td><td>{esc(m)}</td><td>{esc(t)}</td>"
            f"<td class=\"{'fail' if b else 'pass'}\">{b}</td><td>{esc(note)}</td></tr>"
            for n, i, m, t, b, note in _fuzz_rows(result)
        )
        problems = [f"CRASH {c['entry']} [{c['library']}]: {c['detail'][:300]}\n  input: {c['input']}"
                    for c in result["crashes"]]
        problems += [f"HANG {h['entry']} [{h['library']}]: {h['detail'][:300]}\n  input: {h['input']}"
                     for h in result.get("hangs", [])]
        problems += [f"{v['entry']} [{v['library']}] {v['kind']} (x{v['count']}): {v['exception']} "
                     f"{v['detail'][:300]}\n  input: {v['input'][:800]}" for v in result["violations"]]
        listing = f"<pre>{esc(chr(10).join(problems))}</pre>" if problems else ""
        parts.append(
            f"<h2>Fuzzing (run {result.get('run', 0)})</h2><p>{esc(_FUZZ_INTRO)}</p>"
            f"<p><b>{result['total_inputs']} inputs</b> over {len(result['entries'])} entry points "
            f"({result['examples_per_entry']} each, profile {esc(str(result['profile']))}); "
            f"{len(result['violations'])} distinct violations, {len(result['crashes'])} crashes.</p>"
            "<table><tr><th>entry point</th><th>inputs</th><th>MLX accepted / refused</th>"
            f"<th>PyTorch accepted / refused</th><th>violations</th><th></th></tr>{rows}</table>{listing}"
        )
    return "".join(parts)


def _histogram_svg(counts: list[int]) -> str:
    total = max(sum(counts), 1)
    width, height, bar = 180, 40, 180 // len(counts)
    bars = []
    for i, count in enumerate(counts):
        h = 0 if count == 0 else max(1, round(height * count / total))
        lo, hi = ULP_BINS[i], ULP_BINS[i + 1]
        bars.append(f'<rect x="{i * bar}" y="{height - h}" width="{bar - 2}" height="{h}">'
                    f"<title>[{lo:g}, {hi:g}) ulp: {count}</title></rect>")
    return f'<svg width="{width}" height="{height}" role="img">{"".join(bars)}</svg>'


def render_html(report: dict[str, Any]) -> str:
    """One self-contained page (inline CSS and SVG, no scripts, no network)."""
    esc = html.escape
    s = summary(report)
    rows, cols, index = _matrix(report)
    head = "".join(f"<th>{esc(d)}<br><small>{esc(_run_label(report['runs'][r]))}</small></th>" for r, d in cols)
    body = []
    for op, mode in rows:
        tds = []
        for r, d in cols:
            c = index.get((op, mode, r, d))
            if c is None:
                tds.append("<td>-</td>")
                continue
            cls = "pass" if c["status"] in CONFORMING else "fail"
            tds.append(
                f'<td class="{cls}"><b>{esc(_mark(c))}</b> {c["examples"]}+{c["edge_cases"]}<br>'
                f'MLX {c["mlx"]["max_ulp"]:.3g} ulp / PyTorch {c["peer"]["max_ulp"]:.3g} ulp<br>'
                f'{_histogram_svg(c["ulp_histogram"])}</td>'
            )
        body.append(f"<tr><th>{esc(op)}</th><td>{esc(mode)}</td>{''.join(tds)}</tr>")
    runs = "".join(
        "<li>" + esc(", ".join(f"{k}: {v}" for k, v in sorted(run.items()) if not isinstance(v, dict))) + "</li>"
        for run in report["runs"]
    )
    sections = [f"<pre>{esc(render_markdown(report).split('## Failures', 1)[1])}</pre>"] if any(
        c["status"] not in CONFORMING for c in report["cells"]) else []
    mutants = "".join(
        f"<tr><td>{esc(m['op'])}</td><td>{esc(m['mutant'])}</td><td>{esc(m['bug'])}</td>"
        f"<td class=\"{'pass' if m['killed'] else 'fail'}\">{'killed' if m['killed'] else 'SURVIVED'}</td>"
        f"<td>{m['examples_tried']}</td></tr>" for m in report.get("mutants", [])
    )
    divergences = "".join(
        f"<tr><td>{esc(d['op'])}</td><td>{esc(d['name'])}</td><td>{esc(d['reason'])}</td>"
        f"<td><code>{esc(d['input'])}</code></td></tr>" for d in report.get("divergences", [])
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>MLX conformance</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top}}.pass{{background:#e8f6e8}}
.fail{{background:#fbe3e3}}rect{{fill:#4a78b5}}small{{color:#555}}</style></head><body>
<h1>MLX conformance report</h1><ul>{runs}</ul>
<p>MLX matmul precision: {esc("; ".join(_precision_line(r) for r in report["runs"]))}</p>
<p><b>{s['cells'] - s['cells_failed']} / {s['cells']} cells conform</b>; {s['examples']} examples,
{s['edge_cases']} edge cases; mutants killed {s['mutants_killed']} / {s['mutants']};
error cases {s['error_cases'] - s['error_cases_failed']} / {s['error_cases']}; crashes {s['crashes']}.</p>
<p>Each cell: examples + edge cases, worst error of MLX and of PyTorch against the float64 oracle in output
ulps, and the distribution of MLX's per-element error in ulps (bins {', '.join(f'{b:g}' for b in ULP_BINS)}).</p>
<table><tr><th>op</th><th>mode</th>{head}</tr>{''.join(body)}</table>
{''.join(sections)}
<h2>Expected divergences</h2><table><tr><th>op</th><th>name</th><th>reason</th><th>reproducer</th></tr>
{divergences}</table>
<h2>Mutation meta-tests</h2><table><tr><th>op</th><th>mutant</th><th>bug</th><th>result</th><th>tries</th></tr>
{mutants}</table>{_fuzz_html(report)}</body></html>
"""


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    """Write ``conformance.json``, ``report.md`` and ``report.html`` atomically."""
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "conformance.json", report)
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    write_text_atomic(out_dir / "report.html", render_html(report))
