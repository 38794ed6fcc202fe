"""The model conformance report: ``model.json`` (every point of every configuration),
``report.md`` and ``report.html`` (one self-contained page; the growth curves are inline
SVG, so no plotting dependency).

Per configuration (checkpoint, dtype, quantized mode): status, the first point of
departure, greedy-token agreement, the anchors, and two plots: relative error against
depth (embedding, each layer, logits; at the prefill and at the last decode step, MLX and
the twin, with the linear-growth reference ``(l + 1) e_1``) and against decode step (at
the last layer and at the logits).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from conformance.results import write_json_atomic, write_text_atomic

SCHEMA = "mlx-conformance-model-report/2"
"""/2: a configuration may be a CRASH or HANG row (``python -m conformance model --jobs``),
and a mixture-of-experts result carries ``routing`` (ties, flips, the twin's departures
from the oracle's experts, the router inputs' worst ratio)."""
_COLORS = {"MLX": "#d62728", "twin": "#1f77b4", "linear": "#7f7f7f", "MLX logits": "#ff7f0e",
           "twin logits": "#17becf"}


def config_label(r: dict[str, Any]) -> str:
    """``name dtype[+quant]`` of one result."""
    return f"{r.get('name', Path(r['checkpoint']).name)} {r['dtype']}" + (f"+{r['quant']}" if r["quant"] else "")


_DIT_OUTPUTS = ("text", "image")


def dit_label(d: dict[str, Any]) -> str:
    """``Flux 2 DiT double-stream block dtype[+quant]`` of one DiT result."""
    return f"Flux 2 DiT {d.get('block', 'double')}-stream block {d['dtype']}" + (f"+{d['quant']}" if d["quant"] else "")


def _series_by_layer(r: dict[str, Any], step: int) -> tuple[list[float], list[float], list[str]]:
    pts = sorted((p for p in r["points"] if p["step"] == step), key=lambda p: p["index"])
    return [p["rel_err"] for p in pts], [p["peer_rel_err"] for p in pts], [p["point"] for p in pts]


def _series_by_step(r: dict[str, Any], point: str) -> tuple[list[float], list[float]]:
    pts = sorted((p for p in r["points"] if p["point"] == point), key=lambda p: p["step"])
    return [p["rel_err"] for p in pts], [p["peer_rel_err"] for p in pts]


def svg_plot(series: list[tuple[str, list[float], bool]], title: str, xlabel: str,
             xticks: list[str] | None = None, width: int = 460, height: int = 240) -> str:
    """A log-y line plot as inline SVG. ``series``: (label, ys, dashed); x is the index."""
    left, right, top, bottom = 60, 130, 24, 36
    ys = [y for _, vals, _ in series for y in vals if y > 0 and math.isfinite(y)]
    if not ys:
        return f"<p>{html.escape(title)}: all errors are zero.</p>"
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    hi = max(hi, lo + 1)
    n = max(len(vals) for _, vals, _ in series)
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * i / max(n - 1, 1))

    def y(v: float) -> float:
        v = max(v, 10.0 ** lo)
        return top + ph * (1 - (math.log10(v) - lo) / (hi - lo))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="10">',
           f'<text x="{left}" y="14" font-size="12">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for e in range(lo, hi + 1):
        yy = y(10.0 ** e)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{yy + 3:.1f}" text-anchor="end">1e{e}</text>')
    step = max(1, n // 8)
    for i in range(0, n, step):
        label = xticks[i] if xticks and i < len(xticks) else str(i)
        out.append(f'<text x="{x(i):.1f}" y="{top + ph + 12}" text-anchor="middle">{html.escape(label)}</text>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">{html.escape(xlabel)}</text>')
    for k, (label, vals, dashed) in enumerate(series):
        color = _COLORS.get(label.split(" @")[0], ["#2ca02c", "#9467bd", "#8c564b"][k % 3])
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(vals) if math.isfinite(v))
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.5"{dash}/>')
        ly = top + 12 * k + 8
        out.append(f'<line x1="{left + pw + 8}" x2="{left + pw + 24}" y1="{ly}" y2="{ly}" stroke="{color}"{dash}/>'
                   f'<text x="{left + pw + 28}" y="{ly + 3}">{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _plots(r: dict[str, Any]) -> str:
    last = r["steps"]
    m0, p0, names = _series_by_layer(r, 0)
    ml, pl, _ = _series_by_layer(r, last)
    linear = [p0[1] * (i) for i in range(len(p0))] if len(p0) > 1 else []
    depth = svg_plot([("MLX @ prefill", m0, False), ("twin @ prefill", p0, False),
                      (f"MLX @ step {last}", ml, True), (f"twin @ step {last}", pl, True),
                      ("linear (l+1)e_1", linear, True)],
                     "relative error vs depth", "point (embed, layers, logits)", names)
    last_layer = f"layer {r['layers'] - 1}"
    sm, sp = _series_by_step(r, last_layer)
    lm, lp = _series_by_step(r, "logits")
    steps = svg_plot([(f"MLX @ {last_layer}", sm, False), (f"twin @ {last_layer}", sp, False),
                      ("MLX logits", lm, True), ("twin logits", lp, True)],
                     "relative error vs decode step", "step (0 = prefill)")
    return depth + steps


def _departure(r: dict[str, Any]) -> str:
    d = r["departure"]
    return "none" if d is None else f"step {d['step']}, {d['point']}{op_text(d)}"


def _tokens(r: dict[str, Any]) -> str:
    t = r["tokens"]
    return f"{t['agree']}/{t['steps']}" + (f" ({t['ties']} ties)" if t["ties"] else "") + (
        f", {len(t['flips'])} FLIPS" if t["flips"] else "")


def _anchors(r: dict[str, Any]) -> str:
    parts = []
    for a in r["anchors"]:
        if "error" in a:
            parts.append(f"{a['name']}: cannot run ({' '.join(a['error'].split())[:120]})")
        else:
            parts.append(f"{a['name']}: {'ok' if a['passed'] else 'DIFFERS'} "
                         f"({a['worst_rel_err']:.2g} vs twin {a['twin_rel_err']:.2g})")
    return "; ".join(parts) or "-"


def _growth(r: dict[str, Any]) -> str:
    """The twin's relative error at the last layer over the first, at the prefill."""
    _, twin, _ = _series_by_layer(r, 0)
    layers = twin[1:-1]
    if len(layers) < 2 or layers[0] <= 0:
        return "-"
    return f"{layers[-1] / layers[0]:.2g}x over {len(layers)} layers"


def _routing(r: dict[str, Any]) -> str:
    """Routing of a mixture-of-experts model: ties admitted, flips (failures), the twin's own
    departures from the oracle's experts and the router inputs' worst ratio to the bound."""
    g = r.get("routing")
    if not g:
        return "-"
    text = f"{g['ties']} ties / {g['rows']} token-layers" + (f", {len(g['flips'])} FLIPS" if g["flips"] else "")
    twin = g.get("twin_departures", g.get("twin_ties"))  # (schema /1 called it twin_ties)
    if twin is not None:
        text += f" (twin: {twin} departures)"
    text += f"; router input ratio {g['worst_input_ratio']:.2f}"
    return text + (f"; router input departs at step {g['departure']['step']}" if g.get("departure") else "")


CAUSES = {"mlx-backend": "MLX back end", "port": "the port (mlx_impl)", "bound": "the bound"}
"""A departure's ``cause`` (set by the cause analysis) as the report words it."""


def op_text(d: dict[str, Any]) -> str:
    """``, op OP`` of a departure (``, op OP in layer K`` where the op named is in an
    earlier layer than the departing point: :func:`conformance.model.subpoints.name_op`),
    or ``""``."""
    if not d.get("op"):
        return ""
    layer = d.get("op_layer")
    elsewhere = layer is not None and d.get("point") != f"layer {layer}"
    return f", op {d['op']}" + (f" in layer {layer}" if elsewhere else "")


def _cause(d: dict[str, Any]) -> str:
    """``, op OP: CAUSE (detail)`` of a departure, as much as it carries (a candidate's
    sub-layer op: ``, op OP (detail)``)."""
    text = op_text(d)
    if d.get("cause"):
        text += f": {CAUSES.get(d['cause'], d['cause'])}"
        if d.get("cause_detail"):
            text += f" ({' '.join(str(d['cause_detail']).split())})"
    elif d.get("op_detail"):
        text += f" ({' '.join(str(d['op_detail']).split())})"
    return text


def verdict(r: dict[str, Any]) -> str:
    """One configuration's answer in a phrase: ``conforms``, ``departs at step S, POINT[, op
    OP]: CAUSE``, a greedy flip, a routing flip, a differing required anchor, or the
    CRASH/HANG status (model or DiT result)."""
    if "error" in r:
        first = (r["error"].get("detail") or "").strip().splitlines()[-1:] or [""]
        return f"{r['error']['status']}: {' '.join(first[0].split())[:160]}"
    d = r.get("departure")
    if r["passed"] and d and d.get("calibrated"):
        # Admitted only by the op-calibrated rule: say so, and why (bounds.calibrated_factor).
        c = d["calibrated"]
        return (f"conforms under the op-calibrated rule (rho {c['rho']:.3g} from {c.get('rho_op')}; worst ratio "
                f"{c['worst_ratio']:.3g}); the 2x rule departs at step {d['step']}, {d['point']}{_cause(d)}")
    if r["passed"]:
        return "conforms"
    if d:
        return f"departs at step {d['step']}, {d['point']}{_cause(d)}"
    g = r.get("routing") or {}
    if g.get("departure"):
        return f"departs at step {g['departure']['step']}, {g['departure']['point']}{_cause(g['departure'])}"
    flips = (r.get("tokens") or {}).get("flips") or []
    if flips:
        f = flips[0]
        return f"greedy token flips at step {f['step']} ({f['side']} vs oracle {f['oracle']}, not a tie)"
    if g.get("flips"):
        f = g["flips"][0]
        return f"experts flip at step {f['step']}, MoE layer {f['layer']} (not a tie)"
    bad = [a["name"] for a in r.get("anchors", []) if a.get("required") and not a.get("passed")]
    if bad:
        return f"anchor {', '.join(bad)} differs beyond the bound"
    return "fails (see the departures below)"


def _status(r: dict[str, Any]) -> str:
    """``PASS``, ``PASS (calibrated)`` (admitted by the op-calibrated rule only) or ``FAIL``."""
    if not r["passed"]:
        return "FAIL"
    return "PASS (calibrated)" if (r.get("departure") or {}).get("calibrated") else "PASS"


def summary_line(report: dict[str, Any]) -> str:
    """The run in one sentence: ``conforms N/N configurations.``, or ``N/M configurations
    conform; first: LABEL departs at ...``."""
    results = report.get("results", [])
    dit = report.get("dit", [])
    labelled = [(config_label(r), r) for r in results] + [(dit_label(d), d) for d in dit]
    passed = sum(r["passed"] for _, r in labelled)
    if passed == len(labelled):
        calibrated = sum(bool((r.get("departure") or {}).get("calibrated")) for _, r in labelled)
        return (f"conforms {passed}/{len(labelled)} configurations"
                + (f" ({calibrated} under the op-calibrated rule)." if calibrated else "."))
    label, first = next((lb, r) for lb, r in labelled if not r["passed"])
    return f"{passed}/{len(labelled)} configurations conform; first: {label} {verdict(first)}."


def _worst(r: dict[str, Any], key: str) -> float:
    return max(p[key] for p in r["points"])


def _sides(results: list[dict[str, Any]]) -> str:
    """Which port was judged (MLX below) and against which oracle, for the header."""
    candidates = sorted({r.get("candidate", "mlx_impl") for r in results})
    oracles = sorted({r.get("oracle", "twin") for r in results})
    return (f"MLX below is the candidate {', '.join(candidates) or 'mlx_impl'}; oracle: "
            f"{', '.join(oracles) or 'twin'} in float64 (twin: torch_reference, the twin in the test dtype the "
            "reference; transformers: its own model made float64, transformers in the test dtype the "
            "reference).")


_METHOD = (
    'Bound at every (step, point): per token, ||MLX - oracle|| <= 2 ||twin - oracle|| + 2 ulp x sqrt(D) '
    '(conformance/model/bounds.py says why and how error grows with depth). Errors are relative 2-norm '
    'errors against the float64 oracle.',
    "Ratio: the worst row's ||MLX - oracle|| / bound over all points (1 = at the bound). Depth growth: "
    "the twin's error at the last layer over its error at the first, at the prefill.",
    "Float64 (CPU back end only): MLX's float64 fast norms and RoPE round to float32 inside, so it is "
    "judged as a partly-float32 computation against the twin in float32 (the twin64's error is what the "
    "table and curves show as the twin's). Routing (mixture of experts): a token whose experts differ "
    "from the oracle's is a tie when MLX's own router-input error and router rounding can explain the "
    "swap, otherwise a flip (a failure); the trace continues with the oracle's experts there.",
)
"""The method paragraphs of both reports."""


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: header, one row per configuration, departures in full."""
    run = report["run"]
    results = report["results"]
    dit = report.get("dit", [])
    ran = [r for r in results if "error" not in r]
    passed = sum(r["passed"] for r in results) + sum(d["passed"] for d in dit)
    lines = [f"# Model conformance: {passed} / {len(results) + len(dit)} configurations conform "
             f"({len(results)} model, {len(dit)} DiT block)", "",
             *[f"- **{config_label(r)}**: {verdict(r)}" for r in results],
             *[f"- **{dit_label(d)}**: {verdict(d)}" for d in dit], "",
             *_generated_md(results),
             f"{run.get('backend', '?')} ({run.get('device', '?')}), mlx {run.get('mlx')}, torch "
             f"{run.get('torch')}, transformers {run.get('transformers')}, commit {run.get('commit')}, "
             f"{run.get('date')}; peak memory {_peak(run)}; MLX float32 matmuls: "
             f"{(run.get('matmul_precision') or {}).get('float32_matmul', 'not recorded')}. Steps: {_prefill(ran)}"
             ".", "",
             _sides(results), "",
             *[line for text in _METHOD for line in (text, "")],
             "| configuration | status | first departure | greedy tokens agree | worst MLX / twin rel. error "
             "| ratio | depth growth | routing | anchors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {config_label(r)} | {r['error']['status']} | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {config_label(r)} | {_status(r)} | {_departure(r)} | "
                     f"{_tokens(r)} | {_worst(r, 'rel_err'):.3g} / {_worst(r, 'peer_rel_err'):.3g} | "
                     f"{_worst(r, 'ratio'):.2f} | {_growth(r)} | {_routing(r)} | {_anchors(r)} |")
    for d in report.get("dit", []):
        if "error" in d:
            lines.append(f"| {dit_label(d)} | {d['error']['status']} | - | - | - | - | - | - | - |")
            continue
        lines.append(f"| {dit_label(d)} | {'PASS' if d['passed'] else 'FAIL'} | - | - | "
                     + " / ".join(f"{d['outputs'][k]['rel_err']:.3g}" for k in _DIT_OUTPUTS) + " (text / image) | - | - | - | "
                     # By name: model.json stores its keys sorted, so the dicts' order is not theirs.
                     + ("diffusers-float64: " + " / ".join(f"{d['anchor'][k]['rel_err']:.2g}" for k in _DIT_OUTPUTS)
                        if d["anchor"] else "-") + " |")
    failing = [r for r in results if not r["passed"]]
    for r in failing:
        d = r.get("departure") or {}
        if d.get("repro"):
            lines.append(f"- {config_label(r)} reproduce: `{d['repro']}`")
    if failing:
        lines += ["", "## Departures", ""]
        for r in failing:
            if "error" in r:
                lines += [f"### {config_label(r)}: {r['error']['status']}", "", "```",
                          r["error"]["detail"], "```", ""]
                continue
            if r["departure"]:
                lines += [f"### {config_label(r)}: step {r['departure']['step']}, {r['departure']['point']}",
                          "", "```", r["departure"]["message"], "```", ""]
            g = r.get("routing") or {}
            if g.get("departure"):
                lines += [f"### {config_label(r)}: step {g['departure']['step']}, {g['departure']['point']}",
                          "", "```", g["departure"]["message"], "```", ""]
            for f in g.get("flips", [])[:10]:
                lines.append(f"- {config_label(r)} step {f['step']}, MoE layer {f['layer']}, token {f['row']}: "
                             f"experts {f['side']} vs oracle {f['oracle']} (oracle router logits "
                             f"{f['oracle_logits']}, MLX {f['side_logits']}): not a tie")
            for f in r["tokens"]["flips"]:
                lines.append(f"- {config_label(r)} step {f['step']}: greedy token {f['side']} vs oracle "
                             f"{f['oracle']}, margin {f['margin']:.3g} > 2 x bound {f['bound']:.3g}")
    for d in dit:
        if "error" in d:
            lines += ["", f"### {dit_label(d)}: {d['error']['status']}", "", "```", d["error"]["detail"], "```"]
    notes = report.get("notes", [])
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _peak(run: dict[str, Any]) -> str:
    return f"{run['peak_rss_mb']:.0f} MiB" if run.get("peak_rss_mb") is not None else "not recorded"


def _prefill(ran: list[dict[str, Any]]) -> str:
    if not ran:
        return "?"
    lens = sorted({r["prompt_len"] for r in ran})
    kind = "text prompt" if any(r.get("prompt") for r in ran) else "random token ids"
    return f"prefill of {'/'.join(map(str, lens))} tokens ({kind}) + {ran[0]['steps']} cached decode steps"


def _quant_kind(r: dict[str, Any]) -> str:
    """``dense``, a quantized mode of ``--quantize`` or the checkpoint's own (pre-quantized)."""
    if not r.get("quant"):
        return "dense"
    return f"{r['quant']} (pre-quantized checkpoint)" if r.get("quantization") else str(r["quant"])


def _generated_md(results: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in results if r.get("generated")]
    if not rows:
        return []
    out = ["## Generated text (greedy)", "",
           "The oracle's greedy continuation, and MLX's own argmax at each step of the same sequence.", ""]
    for r in rows:
        out += [f"- **{config_label(r)}**, prompt {json.dumps(r['prompt']['text'])}"
                f"{' (chat template)' if r['prompt'].get('chat_template') else ''}:",
                f"  oracle {json.dumps(r['generated']['oracle'])}; MLX {json.dumps(r['generated']['mlx'])}"]
    return [*out, ""]


_CSS = ("body{font-family:sans-serif;margin:1.5em;max-width:80em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
        "th{background:#f4f4f4}.pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}"
        "pre{background:#f8f8f8;padding:.5em;white-space:pre-wrap}.text{font-family:monospace;white-space:pre-wrap}"
        "h1{font-size:1.5em}")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; ``rows`` cells are already HTML (escaped by the caller)."""
    return ("<table><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _status_html(r: dict[str, Any]) -> str:
    text = r["error"]["status"] if "error" in r else _status(r)
    return f"<span class='{'pass' if r['passed'] else 'fail'}'>{_esc(text)}</span>"


def _points_table(r: dict[str, Any]) -> str:
    """Every point at the prefill and at the last step (relative errors, ratio to the bound; a
    point over the bound in bold red), folded (``<details>``, no script)."""
    last = r["steps"]
    by = {(p["step"], p["index"]): p for p in r["points"]}
    indices = sorted({p["index"] for p in r["points"]})

    def cells(p: dict[str, Any] | None) -> list[str]:
        if p is None:
            return ["-"] * 3
        mark = "" if p["passed"] else " class='fail'"
        return [f"{p['rel_err']:.3g}", f"{p['peer_rel_err']:.3g}", f"<span{mark}>{p['ratio']:.2f}</span>"]

    rows = [[_esc(by.get((0, i), by.get((last, i), {"point": i}))["point"]), *cells(by.get((0, i))),
             *cells(by.get((last, i)))] for i in indices]
    return ("<details><summary>every point at the prefill and at step " + _esc(last) + "</summary>"
            + _table(["point", "MLX rel. error (prefill)", "twin", "ratio", f"MLX rel. error (step {last})",
                      "twin", "ratio"], rows) + "</details>")


def to_html(report: dict[str, Any]) -> str:
    """One self-contained page (no external scripts or styles). First screen: the verdict per
    configuration (conforms, or where it departs, at which op and why), the generated text;
    then the full table, the departures, notes, the method, and the plots per configuration."""
    run = report.get("run", {})
    results = report.get("results", [])
    dit = report.get("dit", [])
    ran = [r for r in results if "error" not in r]
    body = [f"<h1>Model conformance: {_esc(summary_line(report))}</h1>",
            f"<p>{_esc(run.get('backend', '?'))} ({_esc(run.get('device', '?'))}), mlx {_esc(run.get('mlx'))}, "
            f"torch {_esc(run.get('torch'))}, transformers {_esc(run.get('transformers'))}, commit "
            f"{_esc(run.get('commit'))}, {_esc(run.get('date'))}. <b>Peak memory</b> {_esc(_peak(run))}. "
            f"{_esc(_prefill(ran)[:1].upper() + _prefill(ran)[1:])}."
            + (f" Mutant planted: {_esc(report['mutant'])}." if report.get("mutant") else "") + "</p>"]
    rows = [[_esc(config_label(r)), _status_html(r), _esc(verdict(r)), _esc(_quant_kind(r)),
             "-" if "error" in r else _esc(_tokens(r)), _esc(r.get("seconds", "-"))] for r in results]
    rows += [[_esc(dit_label(d)), _status_html(d), _esc(verdict(d)), _esc(d["quant"] or "dense"), "-",
              _esc(d.get("seconds", "-"))] for d in dit]
    body.append(_table(["configuration", "status", "verdict", "weights", "greedy tokens agree", "seconds"], rows))
    gen = [r for r in results if r.get("generated")]
    if gen:
        body.append("<h2>Generated text (greedy)</h2><p>The oracle's greedy continuation, and MLX's own argmax "
                    "at each step of the same sequence (teacher-forced: where they differ, MLX would have "
                    "said otherwise there).</p>")
        body.append(_table(["configuration", "prompt", "oracle (float64)", "MLX"], [
            [_esc(config_label(r)),
             f"<span class='text'>{_esc(r['prompt']['text'])}</span>"
             + (" <i>(chat template)</i>" if r["prompt"].get("chat_template") else ""),
             f"<span class='text'>{_esc(r['generated']['oracle'])}</span>",
             f"<span class='text'>{_esc(r['generated']['mlx'])}</span>"] for r in gen]))
    body.append("<h2>All configurations</h2>")
    body.append(_table(
        ["configuration", "status", "first departure", "greedy tokens agree", "worst MLX / twin rel. error",
         "ratio", "depth growth", "routing", "anchors"],
        [[_esc(config_label(r)), _status_html(r)] + ["-"] * 7 if "error" in r else
         [_esc(config_label(r)), _status_html(r), _esc(_departure(r)), _esc(_tokens(r)),
          f"{_worst(r, 'rel_err'):.3g} / {_worst(r, 'peer_rel_err'):.3g}", f"{_worst(r, 'ratio'):.2f}",
          _esc(_growth(r)), _esc(_routing(r)), _esc(_anchors(r))] for r in results]))
    failing = [r for r in results + dit if not r["passed"]]
    if failing:
        body.append("<h2>Departures</h2>")
    for r in failing:
        label = dit_label(r) if "block" in r else config_label(r)
        if "error" in r:
            body.append(f"<h3>{_esc(label)}: {_esc(r['error']['status'])}</h3><pre>{_esc(r['error']['detail'])}</pre>")
            continue
        for d in [r.get("departure"), (r.get("routing") or {}).get("departure")]:
            if not d:
                continue
            body.append(f"<h3>{_esc(label)}: step {_esc(d['step'])}, {_esc(d['point'])}</h3>")
            facts = [("op", d.get("op")), ("cause", CAUSES.get(d.get("cause") or "", d.get("cause"))),
                     ("detail", d.get("cause_detail"))]
            if any(v for _, v in facts):
                body.append("<ul>" + "".join(f"<li><b>{k}</b>: {_esc(v)}</li>" for k, v in facts if v) + "</ul>")
            if d.get("repro"):
                body.append(f"<p>Reproduce:</p><pre>{_esc(d['repro'])}</pre>")
            body.append(f"<pre>{_esc(d['message'])}</pre>")
        flips = [f"step {f['step']}: greedy token {f['side']} vs oracle {f['oracle']}, margin "
                 f"{f['margin']:.3g} &gt; 2 x bound {f['bound']:.3g}" for f in (r.get("tokens") or {}).get("flips", [])]
        flips += [f"step {_esc(f['step'])}, MoE layer {_esc(f['layer'])}, token {_esc(f['row'])}: experts "
                  f"{_esc(f['side'])} vs oracle {_esc(f['oracle'])}: not a tie"
                  for f in (r.get("routing") or {}).get("flips", [])[:10]]
        if flips:
            body.append(f"<p>{_esc(label)}:</p><ul>" + "".join(f"<li>{f}</li>" for f in flips) + "</ul>")
    notes = report.get("notes", [])
    if notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    body.append("<h2>Method</h2>" + "".join(f"<p>{_esc(t)}</p>" for t in _METHOD))
    plotted = [r for r in results if "error" not in r]
    if plotted:
        body.append("<h2>Error against depth and decode step</h2>")
    for r in plotted:
        body.append(f"<h3>{_esc(config_label(r))}: {_esc(verdict(r))}</h3>")
        body.append(_plots(r))
        body.append(_points_table(r))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Model conformance</title>"
            f"<style>{_CSS}</style></head><body>" + "".join(body) + "</body></html>\n")


def write_model_report(report: dict[str, Any], out: Path) -> None:
    """Write ``model.json``, ``report.md`` and ``report.html`` into ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "model.json", report)
    write_text_atomic(out / "report.md", to_markdown(report))
    write_text_atomic(out / "report.html", to_html(report))
