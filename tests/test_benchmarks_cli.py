"""``python -m conformance bench``: baseline loading and its error messages, the
regression rule on synthetic runs, atomic writes, the timing and cost helpers, and one
tiny end-to-end record + compare."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.bench import cli as bench_cli
from conformance.bench.baseline import (
    SCHEMA,
    BaselineError,
    compare,
    judge_side,
    keep_faster,
    load_baseline,
)
from conformance.bench.costs import cost_of
from conformance.bench.render import (
    ratio_svg,
    render_comparison_html,
    render_comparison_md,
    render_report_md,
)
from conformance.bench.timing import Budget, Timing, measure
from conformance.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _timing(median: float, iqr: float = 0.0, n: int = 9) -> dict[str, Any]:
    return Timing(median, median - iqr / 2, median + iqr / 2, median - iqr, n).as_dict()


def _run(cells: dict[str, tuple[float, float, float, float]]) -> dict[str, Any]:
    """A synthetic run: key -> (mlx median, mlx IQR, torch median, torch IQR)."""
    machine = {"backend": "cpu", "cpu_model": "Test CPU", "cpu_cores": 2, "gpu": "", "mlx": "0.32.4",
               "torch": "2.13.0", "mlx_device": "Device(cpu, 0)", "torch_device": "cpu", "memory_bytes": 2**34,
               "numpy": "2", "python": "3.11", "platform": "Linux", "commit": "abc", "date": "today",
               "torch_threads": 2, "torch_blas": "mkl",
               "mlx_cpu_backend": {"cache_limit": 2**30, "blas": {"provider": "test", "active": True, "reason": ""}}}
    results = []
    for key, (m, mi, t, ti) in cells.items():
        op, case, dtype = key.split("/")
        results.append({"key": key, "op": op, "case": case, "dtype": dtype, "mode": "default", "note": "",
                        "shape": "x[1, 8]", "errors": {}, "cost": {"flops": 1e6, "bytes": 1e6, "model": "test"},
                        "mlx": _timing(m, mi), "torch": _timing(t, ti)})
    return {"schema": SCHEMA, "machine": machine,
            "settings": {"shapes": "cpu", "budget": Budget().as_dict(), "seconds": 1.0},
            "roofline": {"mlx": {"bandwidth_Bps": 1e10, "gemm_flops": 1e11, "gemm_n": 1024},
                         "torch": {"bandwidth_Bps": 2e10, "gemm_flops": 2e11, "gemm_n": 1024},
                         "peak": {"bandwidth_Bps": 2e10, "gemm_flops": 2e11}},
            "results": results, "overhead": []}


def _write(path: Path, payload: Any) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload), encoding="utf-8")
    return path


# ---- baseline files that cannot be used: exit 2 with a one-line reason ---------------

def test_missing_baseline_is_a_clear_message(tmp_path, capsys):
    assert main(["bench", "compare", "--baseline", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "no baseline at" in err and "bench record" in err


def test_missing_baseline_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "conformance", "bench", "compare", "--baseline",
                           str(tmp_path / "baseline.json")], cwd=ROOT, capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("[bench] no baseline at")


@pytest.mark.parametrize(("payload", "expected"), [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ({"schema": "mlx-conformance-report/1", "runs": []}, "schema 'mlx-conformance-report/1'"),
    ([1, 2, 3], "schema 'list'"),
    ({"schema": SCHEMA, "machine": {}, "settings": {}, "roofline": {}}, "missing section 'results'"),
    ({"schema": SCHEMA, "machine": {}, "settings": {}, "roofline": {}, "results": [{"key": "a/b/c", "mlx": {}}]},
     "lacks median_s"),
])
def test_unusable_baseline_is_a_clear_message(tmp_path, capsys, payload, expected):
    path = _write(tmp_path / "baseline.json", payload)
    with pytest.raises(BaselineError, match=r"(?i)record a new baseline"):
        load_baseline(path)
    assert main(["bench", "compare", "--baseline", str(path), "--current", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err


def test_corrupt_current_run_is_refused_too(tmp_path, capsys):
    base = _write(tmp_path / "baseline.json", _run({"nn.linear/decode/float32": (1.0, 0.01, 1.0, 0.01)}))
    current = _write(tmp_path / "current.json", "{")
    assert main(["bench", "compare", "--baseline", str(base), "--current", str(current)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


# ---- the regression rule ---------------------------------------------------------------

def test_a_clear_slowdown_is_a_regression():
    base = _run({"nn.linear/decode/float32": (1.0e-3, 1e-5, 1.0e-3, 1e-5)})
    new = _run({"nn.linear/decode/float32": (2.0e-3, 1e-5, 1.0e-3, 1e-5)})
    cmp = compare(base, new)
    assert [(k, c.side, c.verdict) for k, c in cmp.regressions] == [("nn.linear/decode/float32", "mlx", "regressed")]
    assert cmp.regressions[0][1].change == pytest.approx(1.0)


def test_torch_reference_is_judged_as_well():
    base = _run({"a/b/float32": (1.0, 0.01, 1.0, 0.01)})
    new = _run({"a/b/float32": (1.0, 0.01, 1.5, 0.01)})
    assert [c.side for _, c in compare(base, new).regressions] == ["torch"]


def test_noise_is_tolerated():
    # 40 % slower, but the samples spread over more than the slowdown: not a regression.
    base = _run({"a/b/float32": (1.0, 0.3, 1.0, 0.0)})
    new = _run({"a/b/float32": (1.4, 0.2, 1.0, 0.0)})
    change = compare(base, new).rows[0][2][0]
    assert change.verdict == "ok" and change.noise_s == pytest.approx(0.5)


def test_small_change_is_tolerated_even_when_precise():
    base = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)})
    new = _run({"a/b/float32": (1.2, 0.0, 1.0, 0.0)})
    assert compare(base, new).regressions == []


@pytest.mark.parametrize(("base", "new", "threshold", "verdict"), [
    ((1.0, 0.0), (1.26, 0.0), 0.25, "regressed"),
    ((1.0, 0.0), (1.24, 0.0), 0.25, "ok"),
    ((1.0, 0.1), (1.3, 0.19), 0.25, "regressed"),   # 0.3 > 0.29 of noise
    ((1.0, 0.1), (1.3, 0.21), 0.25, "ok"),          # 0.3 < 0.31 of noise
    ((1.0, 0.0), (1.4, 0.0), 0.5, "ok"),
    ((2.0, 0.0), (1.0, 0.0), 0.25, "improved"),
])
def test_rule_boundaries(base, new, threshold, verdict):
    b, n = _timing(base[0], base[1]), _timing(new[0], new[1])
    assert judge_side("mlx", b, n, threshold).verdict == verdict


def test_a_cell_that_now_raises_fails_and_missing_cells_are_listed():
    base = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0), "gone/b/float32": (1.0, 0.0, 1.0, 0.0)})
    new = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0), "new/b/float32": (1.0, 0.0, 1.0, 0.0)})
    new["results"][0]["mlx"] = None
    new["results"][0]["errors"] = {"mlx": "ValueError: boom"}
    cmp = compare(base, new)
    assert [(k, c.verdict) for k, c in cmp.regressions] == [("a/b/float32", "error")]
    assert cmp.only_base == ["gone/b/float32"] and cmp.only_new == ["new/b/float32"]


def test_machine_differences_are_warned_about():
    base = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)})
    new = copy.deepcopy(base)
    new["machine"]["cpu_model"] = "Other CPU"
    assert any("cpu_model differs" in w for w in compare(base, new).warnings)


def test_compare_cli_exit_codes_and_files(tmp_path, capsys):
    base = _write(tmp_path / "baseline.json", _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)}))
    slow = _write(tmp_path / "slow.json", _run({"a/b/float32": (2.0, 0.0, 1.0, 0.0)}))
    same = _write(tmp_path / "same.json", _run({"a/b/float32": (1.1, 0.0, 1.0, 0.0)}))
    out = tmp_path / "cmp"
    assert main(["bench", "compare", "--baseline", str(base), "--current", str(slow), "--out", str(out)]) == 1
    assert "REGRESSED a/b/float32 mlx" in capsys.readouterr().out
    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert "**FAIL**: 1 regression(s)" in md and "+100.0%" in md
    assert "<svg" in (out / "comparison.html").read_text(encoding="utf-8")
    assert main(["bench", "compare", "--baseline", str(base), "--current", str(same), "--out", str(out)]) == 0
    assert "**PASS**" in (out / "comparison.md").read_text(encoding="utf-8")
    # A threshold of 150 % tolerates the 2x slowdown.
    assert main(["bench", "compare", "--baseline", str(tmp_path), "--current", str(slow), "--out", str(out),
                 "--threshold", "1.5"]) == 0


# ---- atomic writes ---------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_baseline_intact(tmp_path):
    old = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)})
    bench_cli.write_run(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"baseline.json", "report.md", "report.html"}
    broken = _run({"a/b/float32": (2.0, 0.0, 1.0, 0.0)})
    broken["settings"]["unserialisable"] = object()  # json.dumps fails part-way through
    with pytest.raises(TypeError):
        bench_cli.write_run(broken, tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files (no temporary left behind), same bytes
    assert load_baseline(tmp_path)["results"][0]["mlx"]["median_s"] == 1.0


def test_an_interrupted_replace_leaves_no_partial_file(tmp_path, monkeypatch):
    bench_cli.write_run(_run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)}), tmp_path)
    original = (tmp_path / "baseline.json").read_bytes()

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        bench_cli.write_run(_run({"a/b/float32": (3.0, 0.0, 1.0, 0.0)}), tmp_path)
    assert (tmp_path / "baseline.json").read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json", "report.html", "report.md"]


# ---- timing, costs, rendering ----------------------------------------------------------

def test_timing_quartiles():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (t.median_s, t.q1_s, t.q3_s, t.iqr_s, t.min_s, t.n) == (3.0, 2.0, 4.0, 2.0, 1.0, 5)
    assert Timing.from_dict(t.as_dict()) == t
    with pytest.raises(ValueError):
        Timing.from_samples([])


def test_measure_takes_the_minimum_samples_and_stops_slow_calls_early():
    calls = []
    # Warm-up: calls until warmup_s has passed or max_warmup_calls were made.
    fast = measure(lambda: calls.append(1), Budget(target_s=0.0, min_samples=7, warmup_s=60.0, max_warmup_calls=2))
    assert fast.n == 7 and len(calls) == 7 + 2
    import time

    def nap() -> None:
        calls.append(1)
        time.sleep(0.02)

    calls.clear()
    slow = measure(nap, Budget(target_s=10.0, min_samples=50, cap_s=0.05, floor_samples=3, warmup_s=1.0,
                               max_warmup_calls=2))
    assert slow.n == 3 and slow.median_s >= 0.02 and len(calls) == 3 + 2
    # A call longer than cap_s is its own warm-up: its first call is the first sample.
    calls.clear()
    slower = measure(nap, Budget(target_s=10.0, min_samples=50, cap_s=0.01, floor_samples=3, warmup_s=1.0,
                                 max_warmup_calls=5))
    assert slower.n == 3 and len(calls) == 3


def test_cost_models():
    x, w = np.zeros((128, 64), np.float32), np.zeros((32, 64), np.float32)
    linear = cost_of("nn.linear", {"x": x, "weight": w}, {}, "bfloat16", out_bytes=128 * 32 * 2)
    assert linear.flops == 2 * 128 * 32 * 64
    assert linear.bytes == (x.size + w.size) * 2 + 128 * 32 * 2
    q = np.zeros((1, 4, 6, 8), np.float32)
    kv = np.zeros((1, 2, 6, 8), np.float32)
    causal = cost_of("fast.scaled_dot_product_attention", {"q": q, "k": kv, "v": kv}, {"mask": "causal"},
                     "float32", 0)
    assert causal.flops == 4 * 4 * (6 * 7 // 2) * 8  # 21 of 36 (query, key) pairs kept
    table, idx = np.zeros((1000, 16), np.float32), np.zeros((1, 3), np.int32)
    emb = cost_of("nn.embedding", {"weight": table, "indices": idx}, {}, "float32", out_bytes=3 * 16 * 4)
    assert emb.bytes == idx.nbytes + 2 * 3 * 16 * 4  # the picked rows, not the table


def test_ratio_bars_are_log_scaled_and_clipped():
    assert 'class="good"' in ratio_svg(0.5) and 'class="warn"' in ratio_svg(1.2)
    assert 'class="bad"' in ratio_svg(100.0) and 'width="120.0"' in ratio_svg(100.0)
    assert "no ratio" in ratio_svg(None)


def test_report_states_goal_and_errors():
    run = _run({"a/b/float32": (3.0, 0.0, 1.0, 0.0), "c/d/float32": (1.0, 0.0, 1.0, 0.0)})
    run["results"][1]["errors"] = {"torch": "RuntimeError: x"}
    md = render_report_md(run)
    assert "1 of 2 cells are; beyond it: a/b/float32" in md
    assert "`c/d/float32`: torch: RuntimeError: x" in md
    html = render_comparison_html(compare(run, run), run, run)
    assert html.startswith("<!doctype html>") and "<script" not in html


# ---- end to end, at tiny shapes --------------------------------------------------------

def test_record_then_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cpu-test"
    args = ["--record", "nn.rms_norm", "--record", "nn.linear", "--out", str(out)]
    assert main(["bench", "record", "--shapes", "tiny", "--device", "cpu", *args]) == 0
    run = load_baseline(out)
    assert run["settings"]["shapes"] == "tiny"
    assert {e["key"] for e in run["results"]} == {f"{op}/{case}/{d}" for op in ("nn.rms_norm", "nn.linear")
                                                  for case in ("decode", "prefill", "dit")
                                                  for d in ("float32", "bfloat16")}
    assert all(e["mlx"] and e["torch"] and not e["errors"] for e in run["results"])
    assert run["machine"]["mlx_cpu_backend"]["cache_limit"] > 0
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "tiny" in report and "MLX/PyTorch" in report
    # Compared with itself: nothing changed. Run again (tiny timings are single samples,
    # so a huge threshold keeps this about the plumbing, not the noise).
    assert main(["bench", "compare", "--baseline", str(out), "--current", str(out / "baseline.json")]) == 0
    assert main(["bench", "compare", "--device", "cpu", "--baseline", str(out), "--threshold", "1000",
                 "--record", "nn.rms_norm"]) == 0
    current = load_baseline(out / "current.json")
    assert current["settings"]["shapes"] == "tiny"
    assert "Only in the baseline (not run now): nn.linear" in (out / "comparison.md").read_text(encoding="utf-8")
    # A baseline a million times faster: the cell regresses, is measured again, and still fails.
    fast = load_baseline(out)
    for entry in fast["results"]:
        if entry["key"] == "nn.rms_norm/decode/float32":
            entry["mlx"] = {**entry["mlx"], "median_s": entry["mlx"]["median_s"] * 1e-6, "q1_s": 0.0, "q3_s": 0.0}
    _write(out / "fast.json", fast)
    assert main(["bench", "compare", "--device", "cpu", "--baseline", str(out / "fast.json"), "--out", str(out),
                 "--record", "nn.rms_norm"]) == 1
    # (Other tiny cells may be retried too: their single samples have no IQR to absorb noise.)
    assert "nn.rms_norm/decode/float32" in load_baseline(out / "current.json")["retried"]
    text = (out / "comparison.md").read_text(encoding="utf-8")
    assert "Measured twice" in text and "nn.rms_norm/decode/float32" in text


def test_overhead_pairs_at_tiny_sizes_are_reported():
    from conformance.bench.overhead import PAIRS
    from conformance.bench.runner import run_overhead
    from conformance.bench.timing import TINY_BUDGET

    rows = run_overhead("float32", tiny=True, budget=TINY_BUDGET)
    assert [r["layer"] for r in rows] == [p.name for p in PAIRS]
    assert all("error" not in r for r in rows), [r.get("error") for r in rows]
    embedding = rows[-1]
    assert set(embedding["variants"]) == {"check", "trusted"} and "prefill: 4 tokens" in embedding["shape"]
    for row in rows:
        for v in row["variants"].values():
            assert v["ratio"] == pytest.approx(v["timing"]["median_s"] / row["raw_timing"]["median_s"])
            assert isinstance(v["host_extra_s"], float)
    run = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0)})
    run["overhead"] = rows
    md = render_report_md(run)
    assert "| nn.Embedding (check) | mx.take | decode: 1 token, table [50, 64] | float32 |" in md


def test_a_retry_keeps_the_faster_median_per_side():
    base = _run({"a/b/float32": (1.0, 0.0, 1.0, 0.0), "c/d/float32": (1.0, 0.0, 1.0, 0.0)})
    first = _run({"a/b/float32": (2.0, 0.0, 1.0, 0.0), "c/d/float32": (2.0, 0.0, 1.0, 0.0)})
    assert len(compare(base, first).regressions) == 2
    # The retry: a/b was a burst of load (fast again), c/d is really slower; torch got slower
    # in the retry and keeps its first, faster median.
    retry = _run({"a/b/float32": (1.05, 0.0, 3.0, 0.0), "c/d/float32": (2.1, 0.0, 1.0, 0.0)})
    assert keep_faster(first, retry) == ["a/b/float32", "c/d/float32"]
    after = compare(base, first)
    assert [(k, c.side) for k, c in after.regressions] == [("c/d/float32", "mlx")]
    assert first["results"][0]["torch"]["median_s"] == 1.0 and first["retried"] == ["a/b/float32", "c/d/float32"]
    md = render_comparison_md(after, base, first)
    assert "Measured twice" in md and "**FAIL**: 1 regression(s)" in md


def test_min_delta_ignores_small_absolute_slowdowns():
    b, n = _timing(50e-6), _timing(180e-6)
    assert judge_side("mlx", b, n, 0.25).verdict == "regressed"
    assert judge_side("mlx", b, n, 0.25, min_delta_s=200e-6).verdict == "ok"
    assert judge_side("mlx", _timing(1e-3), _timing(2e-3), 0.25, min_delta_s=200e-6).verdict == "regressed"
    base = _run({"a/b/float32": (50e-6, 0.0, 1.0, 0.0)})
    new = _run({"a/b/float32": (180e-6, 0.0, 1.0, 0.0)})
    cmp = compare(base, new, min_delta_s=200e-6)
    assert cmp.regressions == [] and "and 200 µs" in render_comparison_md(cmp, base, new)
