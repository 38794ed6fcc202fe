"""Markdown and HTML reports rendered from pytest-benchmark JSON files (one file per
precision row: ``float32`` on the CPU; ``tf32`` and ``float32`` on CUDA).

Everything is read from the files: ``machine_info["conformance"]`` (back end, versions,
precision), and each benchmark's ``stats`` (pytest-benchmark's median, IQR, stddev, min,
rounds) and ``extra_info`` (written by ``tests/benchmarks/test_bench.py``). Derived here:

* the headline ratio, MLX layer median / idiomatic PyTorch op median (same dtype, same
  process, so the same float32 precision), and for context MLX/raw MLX and MLX/twin;
* roofline shares, ``max(flops / gemm_peak[dtype], bytes / bandwidth_peak[dtype]) / median``,
  with the peaks measured in the same file (so the same precision), and raised to any
  rate an op of that dtype achieved (:func:`_raise_peaks_to_achieved`): never above 100 %,
  never clipped;
* noise: IQR / median and stddev / mean of every side;
* the layer-overhead table (each variant over the one it is judged against): the ratio of
  the two benchmarks' medians (context, with their IQR), and the PAIRED ratio that decides
  "within 5 %": the median over short blocks of the two sides alternating in one window,
  with the 5th-95th percentile of the blocks (``extra_info["paired"]``, see
  ``conformance.bench.overhead.paired_ratio``). Each raw call is also paired with itself
  (the placebo row): it reads 1.00 when the estimator is sound, and its spread is the
  run's resolution. A file recorded without the pairing is judged on the two benchmarks'
  fastest rounds instead, and says so. A variant that is raw MLX itself (extra_info
  ``context``: Embedding's ``checked_raw``) is shown, marked "context", and not judged: it
  is no layer.

The HTML is self-contained, with inline SVG charts (no dependency): the MLX/PyTorch ratio
per cell on a log scale, and the roofline share of MLX and PyTorch per cell.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADLINE_GOAL = 1.2
"""A cell counts as "on par" when MLX is within 1.2x of the idiomatic PyTorch op."""
OVERHEAD_GOAL = 1.05
"""A layer should cost at most 5 % over the raw MLX call it wraps."""
UPSTREAM_RATIO = 2.0
"""Raw MLX slower than PyTorch by this much: an MLX matter, listed with a reproducer."""


class ReportError(ValueError):
    """A file that is not a pytest-benchmark JSON of these benchmarks."""


@dataclass
class Side:
    """One benchmark's statistics (seconds) and extra_info."""

    median: float
    iqr: float
    stddev: float
    mean: float
    min: float
    rounds: int
    info: dict[str, Any]

    @property
    def noise(self) -> float:
        """IQR relative to the median."""
        return self.iqr / self.median if self.median > 0 else math.nan


@dataclass
class Row:
    """One precision row: a file's cells, peaks and overhead groups."""

    path: str
    machine: dict[str, Any]
    precision: str
    peaks: dict[tuple[str, str], float] = field(default_factory=dict)
    cells: dict[str, dict[str, Side]] = field(default_factory=dict)
    overhead: dict[str, dict[str, Side]] = field(default_factory=dict)
    peak_sources: dict[tuple[str, str], str] = field(default_factory=dict)
    """Where a peak came from when an op beat the roofline benchmarks (else theirs)."""


def _side(bench: dict[str, Any]) -> Side:
    s = bench["stats"]
    return Side(float(s["median"]), float(s["iqr"]), float(s["stddev"]), float(s["mean"]), float(s["min"]),
                int(s["rounds"]), dict(bench.get("extra_info") or {}))


def load_row(path: Path) -> Row:
    """Read one pytest-benchmark JSON file written by the registry benchmarks."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        benches = data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"[bench] {path} is not a pytest-benchmark JSON file ({type(exc).__name__}: {exc}).") from exc
    machine = (data.get("machine_info") or {}).get("conformance") or {}
    row = Row(str(path), machine, str(machine.get("float32_precision", "float32")))
    for bench in benches:
        side = _side(bench)
        kind = side.info.get("kind")
        if kind == "peak":
            key = (side.info["resource"], side.info["dtype"])
            row.peaks[key] = max(row.peaks.get(key, 0.0), float(side.info["work"]) / side.min)
        elif kind == "op":
            row.cells.setdefault(side.info["cell"], {})[side.info["side"]] = side
        elif kind == "overhead":
            row.overhead.setdefault(bench["group"], {})[side.info["variant"]] = side
    _raise_peaks_to_achieved(row)
    if not row.cells and not row.overhead:
        raise ReportError(f"[bench] {path} holds no registry benchmarks (no extra_info kind 'op' or 'overhead').")
    return row


def _raise_peaks_to_achieved(row: Row) -> None:
    """A peak is what the machine can do, so it is at least what any benchmark of the row
    achieved: the roofline benchmarks are short, and on a shared machine a CPU quota can
    throttle all their rounds, while an op cell in the same dtype ran at a higher rate
    (measured here: PyTorch's bfloat16 ``F.linear`` at 8x the throttled GEMM peak). Each
    peak is raised to the best rate (fastest round) of any benchmark in its dtype, and the
    source is recorded in ``peak_sources``. Bandwidth is a property of memory, not of the
    dtype: its peak is the best over every dtype. With peaks at least every achieved
    rate, and shares taken on medians (never below the fastest round), no share exceeds
    100 % by construction, without clipping any number."""
    for sides in row.cells.values():
        for side in sides.values():
            dtype = side.info.get("dtype", "float32")
            for resource, work in (("gemm", side.info.get("flops")), ("bandwidth", side.info.get("bytes"))):
                if work and side.min > 0:
                    rate = float(work) / side.min
                    if rate > row.peaks.get((resource, dtype), 0.0):
                        row.peaks[(resource, dtype)] = rate
                        row.peak_sources[(resource, dtype)] = f"{side.info.get('cell')} {side.info.get('side')}"
    dtypes = {dt for _, dt in row.peaks}
    best_bw = max((v for (res, _), v in row.peaks.items() if res == "bandwidth"), default=0.0)
    for dt in dtypes:
        if row.peaks.get(("bandwidth", dt), 0.0) < best_bw:
            source = next(k for k, v in row.peaks.items() if k[0] == "bandwidth" and v == best_bw)
            row.peaks[("bandwidth", dt)] = best_bw
            row.peak_sources[("bandwidth", dt)] = row.peak_sources.get(source, f"bandwidth {source[1]}")


def share(row: Row, side: Side) -> float | None:
    """Roofline share of ``side`` against the peaks of its dtype in this row (unclipped)."""
    dtype = side.info.get("dtype", "float32")
    flops, nbytes = float(side.info.get("flops") or 0), float(side.info.get("bytes") or 0)
    gemm, bw = row.peaks.get(("gemm", dtype)), row.peaks.get(("bandwidth", dtype))
    bound = max(flops / gemm if gemm else 0.0, nbytes / bw if bw else 0.0)
    return bound / side.median if bound > 0 and side.median > 0 else None


def ratio(sides: dict[str, Side], a: str, b: str) -> float | None:
    """``sides[a].median / sides[b].median`` where both ran."""
    if a in sides and b in sides and sides[b].median > 0:
        return sides[a].median / sides[b].median
    return None


def fmt_time(seconds: float | None) -> str:
    """``12.3 us`` / ``4.56 ms`` / ``1.23 s``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"


def _md_table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    return [*out, ""]


def _summary(row: Row) -> tuple[int, int, list[str]]:
    paired = [(k, ratio(s, "mlx", "torch")) for k, s in row.cells.items()]
    have = [(k, r) for k, r in paired if r is not None]
    beyond = [f"{k} ({r:.2f}x)" for k, r in have if r > HEADLINE_GOAL]
    return len(have) - len(beyond), len(have), beyond


def _cell_rows(row: Row) -> list[list[str]]:
    out = []
    for key, sides in row.cells.items():
        mlx = sides.get("mlx")
        torch = sides.get("torch")
        any_side = mlx or next(iter(sides.values()))
        out.append([
            key, any_side.info.get("shape", ""),
            f"{fmt_time(mlx.median if mlx else None)} ±{_pct(mlx.noise if mlx else None)}",
            f"{fmt_time(torch.median if torch else None)} ±{_pct(torch.noise if torch else None)}",
            str(any_side.info.get("paired_with") or any_side.info.get("reasons", {}).get("torch", "-")),
            _x(ratio(sides, "mlx", "torch")), _x(ratio(sides, "mlx", "mlx_raw")), _x(ratio(sides, "mlx", "twin")),
            _pct(share(row, mlx) if mlx else None), _pct(share(row, torch) if torch else None),
        ])
    return out


@dataclass
class OverheadVerdict:
    """One overhead variant against the side it is judged against (see the module docstring)."""

    group: str
    name: str
    """The variant, or ``"raw (placebo)"`` for a raw call paired with itself."""
    against: str
    side: Side
    base: Side
    ratio: float
    """The judged ratio: the paired block median (older files: the fastest rounds)."""
    evidence: str
    how: str
    judged: str
    """``yes`` / ``NO`` against :data:`OVERHEAD_GOAL`, or ``context`` (not a layer, or the placebo)."""


def overhead_verdicts(row: Row) -> list[OverheadVerdict]:
    """Every overhead variant of ``row`` with its verdict, placebos included."""
    out = []
    for group, variants in row.overhead.items():
        for name, side in variants.items():
            against = side.info.get("against", "raw")
            if against not in variants:
                continue
            base = variants[against]
            ratio, evidence, how = _overhead_verdict(side, base)
            if name == "raw":
                if not side.info.get("paired"):
                    continue  # an old file: no placebo to show
                name, judged = "raw (placebo)", "context"
            elif side.info.get("context"):
                judged = "context"
            else:
                judged = "yes" if ratio <= OVERHEAD_GOAL else "NO"
            out.append(OverheadVerdict(group, name, against, side, base, ratio, evidence, how, judged))
    return out


def added_per_call(v: OverheadVerdict) -> str:
    """What the variant adds to one call, in time: ``(judged ratio - 1) x`` the median of the
    call it is judged against (``+0.9 us``). A ratio depends on how long the raw call takes
    (a launch-bound GPU call is short, so the same host time is a larger share); this is the
    number to multiply by a model's layer calls per token."""
    added = (v.ratio - 1.0) * v.base.median
    return ("+" if added >= 0 else "-") + fmt_time(abs(added))


def _overhead_rows(verdicts: list[OverheadVerdict]) -> list[list[str]]:
    return [[v.group, v.name, v.against, f"{fmt_time(v.side.median)} ±{_pct(v.side.noise)}",
             f"{fmt_time(v.base.median)} ±{_pct(v.base.noise)}", _x(v.side.median / v.base.median),
             f"{v.ratio:.3f}x {v.evidence}", added_per_call(v), v.how, v.judged] for v in verdicts]


def _overhead_summary(verdicts: list[OverheadVerdict]) -> str:
    """One line over the overhead table: how many judged variants are within the goal, the
    misses, and the placebo ratios (the estimator's resolution in this run)."""
    judged = [v for v in verdicts if v.judged in ("yes", "NO")]
    missed = [f"{v.side.info.get('layer', '')} {v.name} {v.side.info.get('dtype', '')} ({v.ratio:.3f}x)"
              for v in judged if v.judged == "NO"]
    placebo = [v.ratio for v in verdicts if v.name == "raw (placebo)"]
    line = (f"**{len(judged) - len(missed)} of {len(judged)}** layer variants within "
            f"{round(100 * (OVERHEAD_GOAL - 1))} % of the MLX formulation they are judged against; "
            f"over: {', '.join(missed) or 'none'}.")
    if placebo:
        line += f" Placebo (each raw call against itself): {min(placebo):.3f}x to {max(placebo):.3f}x."
    return line


def _overhead_verdict(side: Side, base: Side) -> tuple[float, str, str]:
    """(the judged ratio, its evidence, how it was measured) for one overhead variant."""
    paired = side.info.get("paired")
    if paired:
        return (float(paired["ratio"]), f"[{paired['low']:.3f}, {paired['high']:.3f}]",
                f"paired, {paired['blocks']} blocks")
    # A file without the pairing (recorded with older code): the two benchmarks' fastest rounds.
    return side.min / base.min, f"({fmt_time(side.min)} / {fmt_time(base.min)})", "fastest rounds"


def _repro_scripts(row: Row) -> list[tuple[str, str]]:
    """One standalone reproducer per op (its worst raw-MLX/PyTorch cell beyond the limit)."""
    from conformance.bench.repro import reproducer

    worst: dict[str, tuple[float, str, Side]] = {}
    for key, sides in row.cells.items():
        r = ratio(sides, "mlx_raw", "torch")
        if r is not None and r >= UPSTREAM_RATIO:
            op = sides["mlx_raw"].info.get("op", "")
            if op not in worst or r > worst[op][0]:
                worst[op] = (r, key, sides["mlx_raw"])
    out = []
    for op, (_, key, side) in worst.items():
        script = reproducer(op, side.info.get("dtype", "float32"), side.info.get("shape", ""))
        if script:
            out.append((key, script))
    return out


def _upstream(row: Row) -> list[str]:
    lines = []
    for key, sides in row.cells.items():
        r = ratio(sides, "mlx_raw", "torch")
        if r is not None and r >= UPSTREAM_RATIO:
            raw = sides["mlx_raw"]
            lines.append(f"{key}: raw MLX `{raw.info.get('runs')}` takes {fmt_time(raw.median)}, "
                         f"{r:.1f}x `{sides['torch'].info.get('runs')}` ({fmt_time(sides['torch'].median)}), "
                         f"roofline share {_pct(share(row, raw))}; reproducer: "
                         f"`pytest tests/benchmarks/test_bench.py --benchmark-only -k '{key} and (mlx_raw or torch)'` "
                         f"(shape {raw.info.get('shape')})")
    return lines


def _machine_lines(row: Row) -> list[str]:
    m = row.machine
    return [f"- back end {m.get('backend')} (MLX {m.get('mlx_device')}, PyTorch {m.get('torch_device')}); "
            f"float32 precision **{row.precision}**; shapes {m.get('shapes')}",
            f"- CPU {m.get('cpu_model')}, {m.get('cpu_cores')} cores; GPU {m.get('gpu') or '-'}",
            f"- MLX {m.get('mlx')}, PyTorch {m.get('torch')} ({m.get('torch_blas')}, {m.get('torch_threads')} threads), "
            f"Python {m.get('python')}; MLX CPU back end {json.dumps(m.get('mlx_cpu_backend'))}",
            "- peaks (best fastest round of the roofline benchmarks, or of an op that beat them): "
            + ", ".join(f"{res} {dt} {v / 1e9:.1f} {'GFLOP/s' if res == 'gemm' else 'GB/s'}"
                        + (f" (from {row.peak_sources[(res, dt)]})" if (res, dt) in row.peak_sources else "")
                        for (res, dt), v in sorted(row.peaks.items())),
            f"- file: `{row.path}`"]


CELL_HEADER = ["cell (op/case/dtype)", "shape", "MLX layer ±IQR", "PyTorch op ±IQR", "PyTorch op",
               "MLX/PyTorch", "MLX/raw MLX", "MLX/twin", "MLX roofline", "PyTorch roofline"]
OVERHEAD_HEADER = ["group", "variant", "judged against", "variant ±IQR", "against ±IQR", "ratio of medians",
                   "judged ratio [5%, 95% of blocks]", "added per call", "measured as", "within 5%"]


def render_md(rows: list[Row]) -> str:
    """The Markdown report over every precision row."""
    out = ["# Benchmarks: mlx_impl against the PyTorch op a user would run", "",
           "Rendered from pytest-benchmark JSON (`pytest-benchmark compare` reads the same files). "
           f"Headline: MLX layer median / idiomatic PyTorch op median, same dtype and float32 precision; "
           f"on par = within {HEADLINE_GOAL}x. Twin (torch_reference) timings are context only. "
           "±IQR is the interquartile range over the median (noise). Roofline shares use peaks "
           "measured in the same dtype and precision (raised to any rate an op of that dtype achieved), never clipped.", ""]
    for row in rows:
        ok, total, beyond = _summary(row)
        out += [f"## Precision row: {row.precision}", "", *_machine_lines(row), "",
                f"**{ok} of {total}** cells with a PyTorch pairing are within {HEADLINE_GOAL}x; beyond: "
                + (", ".join(beyond) or "none"), ""]
        out += _md_table(CELL_HEADER, _cell_rows(row))
        verdicts = overhead_verdicts(row)
        if verdicts:
            out += ["### Layer overhead at decode (layer built once)", "", _overhead_summary(verdicts), "",
                    *_md_table(OVERHEAD_HEADER, _overhead_rows(verdicts))]
        upstream = _upstream(row)
        if upstream:
            out += [f"### MLX itself far from PyTorch (raw MLX >= {UPSTREAM_RATIO}x the PyTorch op)", ""]
            out += [f"- {line}" for line in upstream] + [""]
            for key, script in _repro_scripts(row):
                out += [f"Standalone reproducer ({key}; needs only mlx, torch, numpy):", "", "```python", script,
                        "```", ""]
        reasons = sorted({f"{k}: {side}: {why}" for k, sides in row.cells.items() for s in sides.values()
                          for side, why in (s.info.get("reasons") or {}).items()})
        if reasons:
            out += ["### Pairings and missing sides", ""] + [f"- {r}" for r in reasons] + [""]
    return "\n".join(out)


def ratio_chart(items: list[tuple[str, float | None]], *, span: float = 64.0) -> str:
    """Horizontal bars of ``ratio`` on a log2 scale centred at 1 (left: MLX faster)."""
    bar_h, label_w, width = 14, 330, 360
    height = bar_h * len(items) + 20
    mid = label_w + width / 2
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 60}" height="{height}" '
             'font-size="11" font-family="sans-serif">',
             f'<line x1="{mid}" y1="0" x2="{mid}" y2="{height}" stroke="#444"/>']
    half = math.log2(span)
    for i, (label, r) in enumerate(items):
        y = 10 + i * bar_h
        parts.append(f'<text x="{label_w - 4}" y="{y + 10}" text-anchor="end">{html.escape(label)}</text>')
        if r is None or r <= 0:
            continue
        v = max(-half, min(half, math.log2(r)))
        x0, x1 = sorted((mid, mid + v / half * width / 2))
        color = "#2a8" if r <= 1.0 else ("#db3" if r <= HEADLINE_GOAL else "#c44")
        parts.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar_h - 3}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + width + 4}" y="{y + 10}">{r:.2f}x</text>')
    parts.append("</svg>")
    return "".join(parts)


def share_chart(items: list[tuple[str, float | None, float | None]]) -> str:
    """Paired bars per cell: MLX (blue) and PyTorch (orange) roofline share, 0-100 %."""
    bar_h, label_w, width = 16, 330, 300
    height = bar_h * len(items) + 20
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 60}" height="{height}" '
             'font-size="11" font-family="sans-serif">']
    for i, (label, m, t) in enumerate(items):
        y = 10 + i * bar_h
        parts.append(f'<text x="{label_w - 4}" y="{y + 11}" text-anchor="end">{html.escape(label)}</text>')
        for j, (v, color) in enumerate(((m, "#37c"), (t, "#e83"))):
            if v is None:
                continue
            w = min(v, 1.0) * width  # bar length only; the printed value is unclipped
            parts.append(f'<rect x="{label_w}" y="{y + j * 7}" width="{max(w, 1):.1f}" height="6" fill="{color}"/>')
        parts.append(f'<text x="{label_w + width + 4}" y="{y + 11}">{_pct(m)} / {_pct(t)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#eee}")


def render_html(rows: list[Row]) -> str:
    """The self-contained HTML report with the two charts per precision row."""
    body = ["<h1>Benchmarks: mlx_impl against the PyTorch op a user would run</h1>",
            f"<p>Rendered from pytest-benchmark JSON. Headline: MLX layer / idiomatic PyTorch op (same dtype "
            f"and precision); on par = within {HEADLINE_GOAL}x. Twin timings are context only.</p>"]
    for row in rows:
        ok, total, beyond = _summary(row)
        body += [f"<h2>Precision row: {html.escape(row.precision)}</h2><ul>"]
        body += [f"<li>{html.escape(line[2:])}</li>" for line in _machine_lines(row)] + ["</ul>"]
        body.append(f"<p><b>{ok} of {total}</b> cells within {HEADLINE_GOAL}x; beyond: "
                    f"{html.escape(', '.join(beyond) or 'none')}</p>")
        body.append("<h3>MLX / PyTorch op (log scale; green: MLX faster)</h3>")
        body.append(ratio_chart([(k, ratio(s, "mlx", "torch")) for k, s in row.cells.items()]))
        body.append("<h3>Roofline share (blue MLX, orange PyTorch)</h3>")
        body.append(share_chart([(k, share(row, s["mlx"]) if "mlx" in s else None,
                                  share(row, s["torch"]) if "torch" in s else None) for k, s in row.cells.items()]))
        body.append(_html_table(CELL_HEADER, _cell_rows(row)))
        verdicts = overhead_verdicts(row)
        if verdicts:
            body += ["<h3>Layer overhead at decode</h3>",
                     f"<p>{html.escape(_overhead_summary(verdicts).replace('**', ''))}</p>",
                     _html_table(OVERHEAD_HEADER, _overhead_rows(verdicts))]
        upstream = _upstream(row)
        if upstream:
            body += ["<h3>MLX itself far from PyTorch</h3><ul>"] + [f"<li>{html.escape(u)}</li>" for u in upstream]
            body.append("</ul>")
            for key, script in _repro_scripts(row):
                body.append(f"<p>Standalone reproducer ({html.escape(key)}):</p><pre>{html.escape(script)}</pre>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Benchmarks</title><style>{_CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def latest_files(directory: Path) -> list[Path]:
    """The newest saved run of each precision under a ``--benchmark-storage`` folder
    (``<dir>/<machine id>/NNNN_<precision>.json``), in name order."""
    newest: dict[str, Path] = {}
    for path in sorted(directory.glob("*/[0-9][0-9][0-9][0-9]_*.json")):
        newest[path.name.split("_", 1)[1]] = path
    return [newest[k] for k in sorted(newest)]
