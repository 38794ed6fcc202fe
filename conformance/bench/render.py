"""Markdown and self-contained HTML (inline CSS and SVG, no scripts, no network) for a
benchmark run (``report.md``/``report.html``) and for a comparison with a baseline
(``comparison.md``/``comparison.html``)."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable
from typing import Any

from conformance.bench.baseline import (
    SIDE_NAMES,
    Comparison,
    SideChange,
    achieved,
    mlx_torch_ratio,
    roofline_shares,
)

GOAL_RATIO = 1.5
"""The project's goal (reported, never asserted): MLX within 1.5x of PyTorch's time."""
OVERHEAD_GOAL = 1.05
"""The layers' goal (reported): at most 5 % over the raw ``mx`` call at decode shapes."""


_FIXED_COST = (
    "every mx.eval hands the graph to MLX's CPU stream thread and waits for it: a fixed cost per "
    "call (x + 1 on one element: about 20 us on a quiet machine, 100 us under load), where "
    "PyTorch's eager kernels start at 5-10 us"
)

CPU_CAUSES: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (("nn.linear", "nn.multi_linear"), ("bfloat16", "float16"),
     "MLX's CPU back end multiplies half-precision matrices with its own single-threaded blocked kernel "
     "(mlx/backend/cpu/gemms/simd_gemm.h, float32 accumulation); only float32/float64 reach BLAS. "
     "PyTorch runs oneDNN/MKL bfloat16 kernels on every core."),
    (("nn.linear",), ("float32",),
     "At M = 1 MLX sends the product through cblas_sgemm (OpenBLAS via mlx_impl.cpu_backend), which "
     "streams the weight at about half the bandwidth of PyTorch's MKL GEMV; OpenBLAS's threads also "
     "spin-wait badly when another process holds a core (decode 8.5 ms quiet, 70-180 ms under load)."),
    (("nn.multi_linear",), ("float32",),
     f"A 0.2-0.3 ms op, so fixed costs weigh: {_FIXED_COST}."),
    (("quantization.quantized_matmul", "nn.quantized_linear"), ("bfloat16", "float16"),
     "MLX's CPU quantized matmul is single-threaded and, in float16/bfloat16, accumulates in the input "
     "dtype with a scalar loop (SEMANTICS.md), about 10x slower than its float32 path; torch_reference "
     "dequantizes once and runs a multi-threaded GEMM. Decode (M = 1) is still faster in MLX."),
    (("quantization.quantized_matmul", "nn.quantized_linear"), ("float32",),
     "MLX's CPU quantized matmul is single-threaded; torch_reference's dequantize + GEMM uses every core."),
    (("fast.scaled_dot_product_attention",), (),
     "MLX's CPU back end has no fused attention kernel: it evaluates the fallback graph ((scale * q) @ k.T, "
     "softmax in float32, @ v), materialising the [B, H, Lq, Lk] scores, with single-threaded softmax and, "
     "in half precision, single-threaded products (simd_gemm). PyTorch's CPU SDPA is a fused, "
     "multi-threaded flash-attention kernel."),
    (("fast.rms_norm", "nn.rms_norm", "fast.layer_norm", "nn.layer_norm", "fast.rope"), (),
     "On the CPU back end MLX's fast norms and RoPE are not fused kernels: MLX evaluates their fallback "
     "graphs (Square, Sum, Broadcast, ... one kernel each; mx.export_to_dot shows them), and at decode "
     f"size {_FIXED_COST}."),
    (("nn.embedding",), (),
     f"At one token the lookup is fixed cost: {_FIXED_COST}; index_policy='check' evaluates twice (the "
     "bounds check brings the indices' min and max to the host; see the overhead table). At 2048 tokens "
     "MLX's gather runs on one thread, PyTorch's on every core."),
    (("nn.repeat_kv", "nn.causal_mask"), (),
     "MLX's CPU copy and where kernels run on one thread; PyTorch's use every core."),
)
"""(ops, dtypes or () for all, reason): causes measured on MLX 0.32.4's CPU back end
(x86_64) for cells beyond GOAL_RATIO; the report prints the matching one."""


def cpu_cause(entry: dict[str, Any]) -> str:
    """The known reason a CPU cell misses the goal, or ''."""
    for ops, dtypes, text in CPU_CAUSES:
        if entry["op"] in ops and (not dtypes or entry["dtype"] in dtypes):
            return text
    return ""


def fmt_time(seconds: float | None) -> str:
    """``12.3 µs``, ``4.56 ms``, ``1.23 s``; ``-`` when absent."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _timing(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    return f"{fmt_time(t['median_s'])} ± {fmt_time(t['q3_s'] - t['q1_s'])} (n={t['n']})"


def _num(x: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def _share(x: float | None) -> str:
    """A roofline share as a percentage, two significant digits below 10 %."""
    if x is None:
        return "-"
    return f"{x:.0%}" if x >= 0.1 else f"{x * 100:.2g}%"


def _rate(x: float | None, unit: str) -> str:
    return "-" if x is None else f"{x / 1e9:.1f} {unit}"


def _md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bytes(n: float | None) -> str:
    if not n:
        return "?"
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def machine_lines(run: dict[str, Any]) -> list[str]:
    """The header facts every report starts with."""
    m, s, r = run["machine"], run["settings"], run["roofline"]
    cpu = m.get("mlx_cpu_backend") or {}
    blas = cpu.get("blas") or {}
    lines = [
        f"- Back end: **{m['backend']}** (MLX device {m['mlx_device']}, PyTorch device {m['torch_device']})",
        f"- Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {_bytes(m.get('memory_bytes'))} memory"
        + (f"; GPU {m['gpu']}" if m.get("gpu") else ""),
        f"- Versions: MLX {m['mlx']}, PyTorch {m['torch']}, NumPy {m['numpy']}, Python {m['python']}; "
        f"{m['platform']}; commit {m['commit']}; {m['date']}",
        (f"- MLX CPU back end: cache limit {_bytes(cpu.get('cache_limit'))}; BLAS "
         f"{blas.get('provider', '?')} ({'active' if blas.get('active') else 'NOT active'}"
         + (f", {blas['threads']} threads" if blas.get("threads") else "") + f"): {blas.get('reason', '')}")
        if m["backend"] == "cpu" else f"- MLX CPU back end: not used (MLX computes on {m['backend']})",
        f"- PyTorch: {m['torch_threads']} threads (torch.set_num_threads = cores), BLAS {m['torch_blas']}",
        f"- Shapes: **{s['shapes']}**"
        + (" (cases with a CPU shape ran it: see the shape column; the rest ran their full shape)"
           if s["shapes"] == "cpu" else "")
        + (" (smoke run: minimal shapes, one sample, timings mean nothing)" if s["shapes"] == "tiny" else ""),
        f"- Timing: warm-up, then samples until {s['budget']['min_samples']} samples and "
        f"{s['budget']['target_s']} s (at least {s['budget']['floor_samples']} past {s['budget']['cap_s']} s); "
        "median ± IQR reported; MLX ends each call with mx.eval, PyTorch syncs its device. "
        f"Run took {s.get('seconds', '?')} s.",
        f"- Roofline (measured): MLX {_rate(r['mlx']['bandwidth_Bps'], 'GB/s')}, "
        f"{_rate(r['mlx']['gemm_flops'], 'GFLOP/s')} (float32 GEMM N={r['mlx']['gemm_n']}); PyTorch "
        f"{_rate(r['torch']['bandwidth_Bps'], 'GB/s')}, {_rate(r['torch']['gemm_flops'], 'GFLOP/s')} "
        f"(N={r['torch']['gemm_n']}). Shares below are against the better of the two.",
    ]
    if m["torch_device"] != ("cpu" if m["backend"] == "cpu" else {"cuda": "cuda", "metal": "mps"}[m["backend"]]):
        lines.append(f"- NOTE: PyTorch ran on {m['torch_device']}, not on MLX's {m['backend']}: "
                     "this PyTorch build lacks that device, so the ratios compare different devices.")
    return lines


def _rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    peak = run["roofline"]["peak"]
    rows = []
    for e in run["results"]:
        bps, flops = achieved(e)
        rows.append({
            "entry": e,
            "ratio": mlx_torch_ratio(e),
            "ratio_raw": mlx_torch_ratio(e, "torch_raw"),
            "share": roofline_shares(e, peak),
            "bps": bps,
            "flops": flops,
        })
    return rows


def goal_summary(run: dict[str, Any]) -> tuple[int, int, list[str]]:
    """(cells within GOAL_RATIO, cells with both timings, keys beyond it)."""
    rows = [r for r in _rows(run) if r["ratio"] is not None]
    beyond = [r["entry"]["key"] for r in rows if r["ratio"] > GOAL_RATIO]
    return len(rows) - len(beyond), len(rows), beyond


def _overhead_items(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (pair, variant): names, timings and the layer/raw ratio (or an error)."""
    out = []
    for o in run.get("overhead", []):
        base = {"raw": o["raw"], "shape": o["shape"], "dtype": o["dtype"]}
        if "error" in o:
            out.append({**base, "name": o["layer"], "layer_t": None, "raw_t": None, "ratio": None,
                        "host": None, "error": o["error"]})
            continue
        for variant, v in o["variants"].items():
            name = o["layer"] if variant == "layer" else f"{o['layer']} ({variant})"
            out.append({**base, "name": name, "layer_t": v["timing"], "raw_t": o["raw_timing"],
                        "ratio": v["ratio"], "host": v.get("host_extra_s"), "error": ""})
    return out


def _overhead_cells(item: dict[str, Any]) -> list[str]:
    host = "-" if item["host"] is None else f"{item['host'] * 1e6:+.1f} µs"
    return [item["name"], item["raw"], item["shape"], item["dtype"], _timing(item["layer_t"]),
            _timing(item["raw_t"]), host, _num(item["ratio"], ".3f") if not item["error"] else item["error"]]


def _causes(run: dict[str, Any]) -> dict[str, list[str]]:
    """Known cause -> the cells beyond the goal it explains (CPU back end only)."""
    if run["machine"]["backend"] != "cpu":
        return {}
    out: dict[str, list[str]] = {}
    for r in _rows(run):
        if r["ratio"] is not None and r["ratio"] > GOAL_RATIO:
            cause = cpu_cause(r["entry"]) or "no known cause: investigate"
            out.setdefault(cause, []).append(r["entry"]["key"])
    return out


def _causes_md(run: dict[str, Any]) -> list[str]:
    causes = _causes(run)
    if not causes:
        return []
    lines = ["Why (MLX 0.32.4 CPU back end, measured):", ""]
    lines += [f"- {', '.join(keys)}: {text}" for text, keys in causes.items()]
    return [*lines, ""]


def render_report_md(run: dict[str, Any]) -> str:
    """``report.md`` of one benchmark run."""
    within, total, beyond = goal_summary(run)
    rows = []
    for r in _rows(run):
        e = r["entry"]
        rows.append([
            e["op"], e["case"], e["dtype"], e.get("shape", "-"), _timing(e.get("mlx")), _timing(e.get("torch")),
            _num(r["ratio"], ".2f", "x"), _timing(e.get("torch_raw")) + (f" {e['torch_raw_op']}" if e.get("torch_raw_op") else ""),
            _num(r["ratio_raw"], ".2f", "x"), _share(r["share"]["mlx"]), _share(r["share"]["torch"]),
            _rate(r["bps"], "GB/s"), _rate(r["flops"], "GFLOP/s"), e.get("note", ""),
        ])
    errors = [f"- `{r['entry']['key']}`: " + "; ".join(f"{k}: {v}" for k, v in r["entry"]["errors"].items())
              for r in _rows(run) if r["entry"].get("errors")]
    parts = [
        f"# Benchmark baseline: {run['machine']['backend']}",
        "",
        *machine_lines(run),
        "",
        f"**Goal** (reported, not asserted): mlx_impl within {GOAL_RATIO}x of torch_reference's time. "
        f"{within} of {total} cells are; beyond it: {', '.join(beyond) or 'none'}.",
        "",
        *_causes_md(run),
        "MLX/PyTorch is mlx_impl's median over torch_reference's (native precision; below 1 = MLX faster). "
        "'PyTorch op' is the idiomatic PyTorch call where one exists (context; torch_reference reproduces "
        "MLX's rounding and may cost more). Roofline share = the time the measured peaks allow for the op's "
        "byte/FLOP model over the measured median. GB/s and GFLOP/s are MLX's under that model.",
        "",
        "## Ops",
        "",
        _md_table(["op", "case", "dtype", "shape", "mlx_impl", "torch_reference", "MLX/PyTorch", "PyTorch op",
                   "MLX/op", "MLX roofline", "PyTorch roofline", "MLX GB/s", "MLX GFLOP/s", "note"], rows),
        "",
        "## Layer overhead over the raw mx call",
        "",
        f"Layer built once, layer and raw call timed interleaved (evaluated); goal: ratio <= {OVERHEAD_GOAL} "
        "at decode shapes. 'Host-side extra' is what the layer adds to building the lazy graph (best of "
        "3 x 200 calls, not evaluated): its Python checks, measured without the evaluation's noise. "
        "Embedding's default index_policy='check' syncs to check bounds (the 'check' rows); 'trusted' "
        "skips the check.",
        "",
        _md_table(["layer", "raw call", "shape", "dtype", "layer", "raw", "host-side extra", "layer/raw",
                   f"<= {OVERHEAD_GOAL}"],
                  [[*_overhead_cells(i), "-" if i["ratio"] is None else ("yes" if i["ratio"] <= OVERHEAD_GOAL else "NO")]
                   for i in _overhead_items(run)]) if run.get("overhead") else "(not run)",
        "",
        "## Errors",
        "",
        "\n".join(errors) if errors else "None.",
        "",
        "## Cost models",
        "",
        "\n".join(sorted({f"- {e['op']}: {e['cost']['model']}" for e in run["results"] if e.get("cost")})),
        "",
    ]
    return "\n".join(parts)


_CSS = """body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}
td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:middle;text-align:left}
.good{fill:#3c8d40}.warn{fill:#d89a1c}.bad{fill:#c43c3c}.axis{stroke:#333}small{color:#555}
td.num{text-align:right;font-variant-numeric:tabular-nums}.no{background:#fbe3e3}.yes{background:#e8f6e8}"""


def ratio_svg(ratio: float | None, *, good: float = 1.0, warn: float = GOAL_RATIO, span: float = 8.0) -> str:
    """A horizontal bar on a log scale centred at 1 (left: below 1, right: above), clipped at
    ``1/span`` and ``span``; green up to ``good``, amber up to ``warn``, red beyond."""
    width, height = 240, 16
    mid = width / 2
    if ratio is None or ratio <= 0 or not math.isfinite(ratio):
        return f'<svg width="{width}" height="{height}" role="img"><title>no ratio</title></svg>'
    pos = max(-1.0, min(1.0, math.log(ratio) / math.log(span)))
    x0, x1 = sorted((mid, mid + pos * mid))
    cls = "good" if ratio <= good else "warn" if ratio <= warn else "bad"
    return (f'<svg width="{width}" height="{height}" role="img"><title>{ratio:.3f}x</title>'
            f'<rect class="{cls}" x="{x0:.1f}" y="2" width="{max(x1 - x0, 1):.1f}" height="{height - 4}"/>'
            f'<line class="axis" x1="{mid}" y1="0" x2="{mid}" y2="{height}"/></svg>')


def _html_page(title: str, body: str) -> str:
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")


def _html_list(lines: list[str]) -> str:
    esc = html.escape
    return "<ul>" + "".join(f"<li>{esc(line.removeprefix('- ')).replace('**', '')}</li>" for line in lines) + "</ul>"


def render_report_html(run: dict[str, Any]) -> str:
    """``report.html``: the Markdown report's content with a ratio bar per op."""
    esc = html.escape
    within, total, beyond = goal_summary(run)
    trs = []
    for r in _rows(run):
        e = r["entry"]
        trs.append(
            f"<tr><td>{esc(e['op'])}</td><td>{esc(e['case'])}</td><td>{esc(e['dtype'])}</td>"
            f"<td><small>{esc(e.get('shape', '-'))}</small></td>"
            f"<td class=num>{esc(_timing(e.get('mlx')))}</td><td class=num>{esc(_timing(e.get('torch')))}</td>"
            f"<td class=num>{_num(r['ratio'], '.2f', 'x')}</td><td>{ratio_svg(r['ratio'])}</td>"
            f"<td class=num>{esc(_timing(e.get('torch_raw')))}<br><small>{esc(e.get('torch_raw_op', ''))}</small></td>"
            f"<td class=num>{_num(r['ratio_raw'], '.2f', 'x')}</td>"
            f"<td class=num>{_share(r['share']['mlx'])}</td><td class=num>{_share(r['share']['torch'])}</td>"
            f"<td class=num>{_rate(r['bps'], 'GB/s')}<br>{_rate(r['flops'], 'GFLOP/s')}</td>"
            f"<td><small>{esc(e.get('note', ''))}"
            + (f"<br><b>errors</b>: {esc(str(e['errors']))}" if e.get("errors") else "") + "</small></td></tr>")
    ovs = []
    for item in _overhead_items(run):
        ratio = item["ratio"]
        cls = "" if ratio is None else ("yes" if ratio <= OVERHEAD_GOAL else "no")
        cells = _overhead_cells(item)
        ovs.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells[:7])
                   + f"<td class='num {cls}'>{esc(cells[7])}</td>"
                   + f"<td>{ratio_svg(ratio, good=OVERHEAD_GOAL, warn=1.5, span=4.0)}</td></tr>")
    body = (
        f"<h1>Benchmark baseline: {esc(run['machine']['backend'])}</h1>{_html_list(machine_lines(run))}"
        f"<p><b>Goal</b> (reported, not asserted): mlx_impl within {GOAL_RATIO}x of torch_reference. "
        f"{within} of {total} cells are; beyond: {esc(', '.join(beyond) or 'none')}.</p>"
        + "".join(f"<p><small><b>{esc(', '.join(keys))}</b>: {esc(text)}</small></p>"
                  for text, keys in _causes(run).items())
        +         "<p>Bars: MLX/PyTorch on a log scale from 1/8 to 8, centred at 1 (left of the line: MLX faster); "
        f"green up to 1, amber up to {GOAL_RATIO}, red beyond.</p>"
        "<table><tr><th>op</th><th>case</th><th>dtype</th><th>shape</th><th>mlx_impl</th><th>torch_reference</th>"
        "<th colspan=2>MLX/PyTorch</th><th>PyTorch op</th><th>MLX/op</th><th>MLX roofline</th>"
        "<th>PyTorch roofline</th><th>MLX achieved</th><th>note</th></tr>" + "".join(trs) + "</table>"
        f"<h2>Layer overhead over the raw mx call</h2><p>Goal: at most {OVERHEAD_GOAL} at decode shapes; bars "
        "from 1/4 to 4, green up to the goal.</p><table><tr><th>layer</th><th>raw call</th><th>shape</th>"
        "<th>dtype</th><th>layer</th><th>raw</th><th>host-side extra</th><th colspan=2>layer/raw</th></tr>" + "".join(ovs) + "</table>"
    )
    return _html_page("MLX benchmark baseline", body)


def _change(c: SideChange) -> str:
    return "-" if c.change is None else f"{c.change:+.1%}"


def render_comparison_md(cmp: Comparison, base: dict[str, Any], new: dict[str, Any]) -> str:
    """``comparison.md``: every cell's change against the baseline, and the verdict."""
    regressions = cmp.regressions
    rows = []
    for b, n, changes in cmp.rows:
        for c in changes:
            if c.verdict == "not timed":
                continue
            rows.append([n["key"], SIDE_NAMES[c.side], fmt_time(c.base_s), fmt_time(c.new_s), _change(c),
                         fmt_time(c.noise_s), c.verdict.upper() if c.verdict in ("regressed", "error") else c.verdict,
                         _num(mlx_torch_ratio(n), ".2f", "x") if c.side == "mlx" else "",
                         _num(mlx_torch_ratio(b), ".2f", "x") if c.side == "mlx" else ""])
    parts = [
        f"# Benchmark comparison: {new['machine']['backend']}",
        "",
        f"**{'FAIL' if regressions else 'PASS'}**: {len(regressions)} regression(s) in {len(cmp.rows)} cells compared.",
        "",
        f"Rule: a cell regresses when mlx_impl's or torch_reference's median is more than "
        f"{cmp.threshold:.0%} above the baseline's AND the slowdown exceeds the two runs' IQRs added "
        "(the noise)" + (f" and {cmp.min_delta_s * 1e6:g} µs" if cmp.min_delta_s else "")
        + "; a cell that ran before and raises now also fails. The PyTorch op column is context only.",
        "",
        "Baseline:",
        *machine_lines(base),
        "",
        "Now:",
        *machine_lines(new),
        "",
    ]
    if new.get("retried"):
        parts += ["Measured twice (regressed the first time; each side kept its faster median): "
                  + ", ".join(new["retried"]), ""]
    if cmp.warnings:
        parts += ["Warnings (timings may not be comparable):", *[f"- {w}" for w in cmp.warnings], ""]
    if regressions:
        parts += ["## Regressions", "", *[f"- `{k}` {SIDE_NAMES[c.side]}: {fmt_time(c.base_s)} -> "
                                           f"{fmt_time(c.new_s)} ({_change(c)}, noise {fmt_time(c.noise_s)}), {c.verdict}"
                                           for k, c in regressions], ""]
    parts += ["## All cells", "",
              _md_table(["cell", "side", "baseline", "now", "change", "noise (IQRs)", "verdict",
                         "MLX/PyTorch now", "MLX/PyTorch baseline"], rows), ""]
    if cmp.only_base:
        parts += ["Only in the baseline (not run now): " + ", ".join(cmp.only_base), ""]
    if cmp.only_new:
        parts += ["New cells (not in the baseline): " + ", ".join(cmp.only_new), ""]
    return "\n".join(parts)


def render_comparison_html(cmp: Comparison, base: dict[str, Any], new: dict[str, Any]) -> str:
    """``comparison.html``: change bars (now / baseline) and MLX/PyTorch bars per cell."""
    esc = html.escape
    regressions = cmp.regressions
    trs = []
    for _, n, changes in cmp.rows:
        for c in changes:
            if c.verdict == "not timed":
                continue
            factor = None if c.change is None else 1.0 + c.change
            cls = "no" if c.verdict in ("regressed", "error") else ("yes" if c.verdict == "improved" else "")
            trs.append(
                f"<tr><td>{esc(n['key'])}</td><td>{esc(SIDE_NAMES[c.side])}</td>"
                f"<td class=num>{fmt_time(c.base_s)}</td><td class=num>{fmt_time(c.new_s)}</td>"
                f"<td class='num {cls}'>{_change(c)}</td>"
                f"<td>{ratio_svg(factor, good=1.0, warn=1.0 + cmp.threshold, span=4.0)}</td>"
                f"<td class=num>{fmt_time(c.noise_s)}</td><td class='{cls}'>{esc(c.verdict)}</td>"
                + (f"<td class=num>{_num(mlx_torch_ratio(n), '.2f', 'x')}</td><td>{ratio_svg(mlx_torch_ratio(n))}</td>"
                   if c.side == "mlx" else "<td></td><td></td>") + "</tr>")
    warn = "".join(f"<li>{esc(w)}</li>" for w in cmp.warnings)
    body = (
        f"<h1>Benchmark comparison: {esc(new['machine']['backend'])}</h1>"
        f"<p><b>{'FAIL' if regressions else 'PASS'}</b>: {len(regressions)} regression(s) in {len(cmp.rows)} cells.</p>"
        f"<p>Rule: regressed when the median is more than {cmp.threshold:.0%} above the baseline's AND the slowdown "
        "exceeds both runs' IQRs added. Change bars: now/baseline, log scale 1/4 to 4 (right = slower).</p>"
        + (f"<p>Measured twice (regressed the first time; each side kept its faster median): "
           f"{esc(', '.join(new['retried']))}</p>" if new.get("retried") else "")
        + (f"<p>Warnings:</p><ul>{warn}</ul>" if warn else "")
        + f"<h2>Baseline</h2>{_html_list(machine_lines(base))}<h2>Now</h2>{_html_list(machine_lines(new))}"
        "<table><tr><th>cell</th><th>side</th><th>baseline</th><th>now</th><th colspan=2>change</th>"
        "<th>noise</th><th>verdict</th><th colspan=2>MLX/PyTorch now</th></tr>" + "".join(trs) + "</table>"
        + (f"<p>Only in the baseline: {esc(', '.join(cmp.only_base))}</p>" if cmp.only_base else "")
        + (f"<p>New cells: {esc(', '.join(cmp.only_new))}</p>" if cmp.only_new else "")
    )
    return _html_page("MLX benchmark comparison", body)
