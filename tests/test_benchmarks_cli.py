"""The benchmark tooling around pytest-benchmark: the files it writes are pytest-benchmark's
own (``pytest-benchmark compare`` reads them, the committed baseline included), a planted
slowdown in a stored baseline fails ``--benchmark-compare-fail``, the report is rendered
from those files, the cost models, and the pairings. No assertion here depends on how
fast anything ran: the planted slowdown is a factor of 1000 in the stored medians."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.bench import cells, report
from conformance.bench.cli import BASELINES, BENCH_TESTS
from conformance.bench.costs import cost_of
from conformance.bench.overhead import summarise_blocks
from conformance.cli import main

ROOT = Path(__file__).resolve().parent.parent
# One op cell, its overhead pair and the tiny roofline points: enough for every file kind.
SUBSET = "nn.linear/decode/float32 or (overhead and nn.Linear and float32) or (peak and 32) or (peak and 1024)"
PLANT = 1000.0


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", BENCH_TESTS, "-q", "-p", "no:cacheprovider", "--benchmark-only",
           "--bench-shapes=tiny", "--bench-target-s=0.002", "-k", SUBSET, *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real pytest-benchmark run of the subset, saved as ``float32`` in a storage folder."""
    storage = tmp_path_factory.mktemp("storage")
    proc = _pytest(f"--benchmark-storage=file://{storage}", "--benchmark-save=float32")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = report.latest_files(storage)
    assert [f.name for f in files] == ["0001_float32.json"]
    return files[0]


def _scaled(source: Path, target: Path, factor: float) -> Path:
    data = json.loads(source.read_text())
    for bench in data["benchmarks"]:
        for stat in ("min", "max", "mean", "median", "q1", "q3", "iqr", "stddev", "ld15iqr", "hd15iqr", "total"):
            if isinstance(bench["stats"].get(stat), (int, float)):
                bench["stats"][stat] *= factor
    target.write_text(json.dumps(data))
    return target


def test_saved_run_is_pytest_benchmark_json_with_the_project_extra_info(saved):
    data = json.loads(saved.read_text())
    assert data["machine_info"]["conformance"]["float32_precision"] == "float32"
    kinds = {b["extra_info"]["kind"] for b in data["benchmarks"]}
    assert kinds == {"op", "peak", "overhead"}
    ops = {b["extra_info"]["side"]: b for b in data["benchmarks"] if b["extra_info"]["kind"] == "op"}
    assert set(ops) == {"mlx", "mlx_raw", "torch", "twin"}
    assert {b["group"] for b in ops.values()} == {"nn.linear/decode/float32"}
    assert ops["mlx"]["extra_info"]["paired_with"] == "F.linear"
    assert ops["mlx"]["extra_info"]["flops"] > 0 and ops["mlx"]["stats"]["rounds"] >= 5
    overhead = {b["extra_info"]["variant"]: b["extra_info"] for b in data["benchmarks"]
                if b["extra_info"]["kind"] == "overhead"}
    assert set(overhead) == {"layer", "raw"}  # the raw call is paired with itself: the placebo
    for info in overhead.values():
        assert info["paired"]["blocks"] >= 5 and info["paired"]["low"] <= info["paired"]["ratio"] <= info["paired"]["high"]


def test_a_planted_slowdown_fails_the_comparison(saved, tmp_path):
    # The stored medians shrunk 1000x: today's run looks 1000x slower than the baseline.
    planted = _scaled(saved, tmp_path / "planted.json", 1 / PLANT)
    proc = _pytest(f"--benchmark-compare={planted}", "--benchmark-compare-fail=median:30%")
    assert proc.returncode != 0
    assert "Performance has regressed" in proc.stdout + proc.stderr


def test_the_same_comparison_passes_without_the_plant(saved, tmp_path):
    # Control: the baseline made 1000x SLOWER, so the failure above is the plant's doing.
    generous = _scaled(saved, tmp_path / "generous.json", PLANT)
    proc = _pytest(f"--benchmark-compare={generous}", "--benchmark-compare-fail=median:30%")
    assert proc.returncode == 0, proc.stdout[-3000:]


def _pytest_benchmark_compare(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_benchmark", "compare", "--group-by=group",
                           *map(str, files)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


def test_pytest_benchmark_compare_reads_a_saved_run(saved):
    proc = _pytest_benchmark_compare(saved)
    assert proc.returncode == 0, proc.stderr
    assert "nn.linear/decode/float32" in proc.stdout


COMMITTED = sorted(BASELINES.glob("*/*/[0-9][0-9][0-9][0-9]_*.json"))


def test_committed_baselines_exist_and_pytest_benchmark_compare_reads_them():
    assert COMMITTED, f"no pytest-benchmark baseline under {BASELINES}"
    proc = _pytest_benchmark_compare(*COMMITTED)
    assert proc.returncode == 0, proc.stderr
    for path in COMMITTED:
        row = report.load_row(path)
        assert row.cells and row.peaks, path
        assert {"mlx", "twin"} <= {s for sides in row.cells.values() for s in sides}


def test_report_renders_from_the_files(saved, tmp_path):
    assert main(["bench", "report", str(saved), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert "nn.linear/decode/float32" in md and "F.linear" in md and "Precision row: float32" in md
    assert page.count("<svg") == 2  # the ratio chart and the roofline chart


def test_report_refuses_a_foreign_file(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    assert main(["bench", "report", str(bad), "--out", str(tmp_path)]) == 2
    assert "is not a pytest-benchmark JSON file" in capsys.readouterr().err


def _side(median: float, **info: Any) -> report.Side:
    return report.Side(median, 0.1 * median, 0.05 * median, median, 0.9 * median, 9, info)


def test_roofline_share_uses_the_peak_of_the_ops_own_dtype():
    row = report.Row("f", {}, "float32", peaks={("gemm", "float32"): 1e11, ("gemm", "bfloat16"): 4e11,
                                                ("bandwidth", "float32"): 1e10, ("bandwidth", "bfloat16"): 1e10})
    f32 = _side(1e-3, dtype="float32", flops=1e8, bytes=1e3)
    bf16 = _side(1e-3, dtype="bfloat16", flops=1e8, bytes=1e3)
    assert report.share(row, f32) == pytest.approx(1.0)   # 1e8 / 1e11 = 1 ms: at the roofline
    assert report.share(row, bf16) == pytest.approx(0.25)  # same work, 4x the bfloat16 peak
    memory = _side(2e-3, dtype="float32", flops=0, bytes=1e7)
    assert report.share(row, memory) == pytest.approx(0.5)
    faster_than_peak = _side(0.5e-3, dtype="float32", flops=1e8, bytes=0)
    assert report.share(row, faster_than_peak) == pytest.approx(2.0)  # share() itself never clips


def test_an_op_that_beats_the_roofline_benchmark_raises_the_peak():
    row = report.Row("f", {}, "float32", peaks={("gemm", "bfloat16"): 1e10, ("bandwidth", "bfloat16"): 1e9,
                                                ("bandwidth", "float32"): 5e9})
    fast = _side(1e-3, dtype="bfloat16", flops=1e8, bytes=1e3, cell="nn.linear/x/bfloat16", side="torch")
    slow = _side(4e-3, dtype="bfloat16", flops=1e8, bytes=1e3, cell="nn.linear/x/bfloat16", side="mlx")
    row.cells["nn.linear/x/bfloat16"] = {"torch": fast, "mlx": slow}
    report._raise_peaks_to_achieved(row)
    # 1e8 FLOPs in the fastest round 0.9 ms: the machine did 1.11e11 FLOP/s in bfloat16.
    assert row.peaks[("gemm", "bfloat16")] == pytest.approx(1e8 / 0.9e-3)
    assert row.peak_sources[("gemm", "bfloat16")] == "nn.linear/x/bfloat16 torch"
    assert row.peaks[("bandwidth", "bfloat16")] == 5e9  # memory is memory: the best over dtypes
    assert report.share(row, fast) == pytest.approx(0.9) and report.share(row, slow) == pytest.approx(0.225)


def test_headline_ratio_and_summary():
    row = report.Row("f", {}, "float32")
    row.cells["a/decode/float32"] = {"mlx": _side(2.0), "torch": _side(1.0), "twin": _side(100.0)}
    row.cells["b/decode/float32"] = {"mlx": _side(1.1), "torch": _side(1.0)}
    row.cells["c/decode/float32"] = {"mlx": _side(1.0)}  # no PyTorch op: not counted
    assert report.ratio(row.cells["a/decode/float32"], "mlx", "torch") == 2.0
    ok, total, beyond = report._summary(row)
    assert (ok, total) == (1, 2) and beyond == ["a/decode/float32 (2.00x)"]
    md = report.render_md([row])
    assert "**1 of 2**" in md and "0.02x" in md  # MLX/twin shown as context


def _overhead_row(layer_ratio: float, placebo_ratio: float) -> report.Row:
    row = report.Row("f", {}, "float32")
    group = "overhead/nn.Linear/decode: x [1, 8]/float32"
    paired = {"low": 0.9, "high": 1.2, "blocks": 40}
    # The medians say the opposite of the paired ratio: the verdict must follow the pairing.
    row.overhead[group] = {
        "layer": _side(1.0, against="raw", layer="nn.Linear", dtype="float32", paired={**paired, "ratio": layer_ratio}),
        "raw": _side(2.0, against="raw", layer="nn.Linear", dtype="float32", paired={**paired, "ratio": placebo_ratio}),
    }
    return row


def test_overhead_verdict_is_the_paired_ratio_with_the_placebo_beside_it():
    verdicts = report.overhead_verdicts(_overhead_row(1.06, 1.001))
    assert [(v.name, v.judged) for v in verdicts] == [("layer", "NO"), ("raw (placebo)", "context")]
    rows = report._overhead_rows(verdicts)
    assert rows[0][6].startswith("1.060x [0.900, 1.200]") and rows[0][8] == "paired, 40 blocks"
    # In time: (1.06 - 1) x the raw call's 2 s median; the placebo's 1.001 adds 2 ms.
    assert rows[0][7] == "+120.00 ms" and rows[1][7] == "+2.00 ms"
    assert report.added_per_call(report.overhead_verdicts(_overhead_row(0.99, 1.0))[0]) == "-20.00 ms"
    summary = report._overhead_summary(verdicts)
    assert "**0 of 1**" in summary and "nn.Linear layer float32 (1.060x)" in summary
    assert "Placebo (each raw call against itself): 1.001x to 1.001x" in summary
    assert report.overhead_verdicts(_overhead_row(1.04, 1.0))[0].judged == "yes"


class _FakeClock:
    """``time.perf_counter`` for paired_ratio: each timed call advances it by its cost, and
    every ``period``-th call (counted over both sides) by ``extra`` more: a periodic
    disturbance. Deterministic: no timing is measured, so nothing here depends on speed."""

    def __init__(self, period: int = 0, extra: float = 0.0) -> None:
        self.now, self.calls, self.period, self.extra = 0.0, 0, period, extra

    def perf_counter(self) -> float:
        return self.now

    def side(self, cost: float):
        def call() -> None:
            self.calls += 1
            self.now += cost + (self.extra if self.period and self.calls % self.period == 0 else 0.0)
        return call


@pytest.mark.parametrize(("cost", "period", "want"), [
    (1.10, 0, 1.10),  # a planted 10 % overhead reads 10 %
    (1.00, 0, 1.00),  # the placebo reads 1
    # A disturbance every 4th call: strict alternation (f g g f f g ...) would hand every
    # disturbed call to one side (its median then 1.25x); the random order spreads them.
    (1.00, 4, 1.00),
    (1.10, 4, 1.10),
])
def test_paired_ratio_reads_a_planted_overhead_and_ignores_a_periodic_disturbance(monkeypatch, cost, period, want):
    from conformance.bench import overhead

    clock = _FakeClock(period, extra=0.5)
    monkeypatch.setattr(overhead, "time", clock)
    got = overhead.paired_ratio(clock.side(cost), clock.side(1.0), seconds=2000.0)
    assert got["blocks"] >= 5
    assert got["ratio"] == pytest.approx(want, rel=1e-9)
    assert got["low"] <= got["ratio"] <= got["high"]


def test_summarise_blocks_is_the_median_with_its_5_to_95_spread():
    ratios = [1.0 + i / 100 for i in range(100)]  # 1.00 .. 1.99
    got = summarise_blocks(list(reversed(ratios)))
    assert got == {"ratio": pytest.approx(1.495), "low": 1.05, "high": 1.95, "blocks": 100}
    with pytest.raises(ValueError, match="no blocks"):
        summarise_blocks([])


def test_ratio_chart_is_log_scaled():
    svg = report.ratio_chart([("fast", 0.5), ("slow", 4.0), ("none", None)])
    widths = [float(w) for w in __import__("re").findall(r'<rect x="[\d.]+" y="\d+" width="([\d.]+)"', svg)]
    assert len(widths) == 2 and widths[1] == pytest.approx(2 * widths[0])  # log2(4) = 2 log2(2)


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


@pytest.mark.parametrize(("mode", "dtype", "expected"), [
    ("affine", "float32", "torch.ops.aten._weight_int4pack_mm_for_cpu"),
    ("affine", "bfloat16", "torch.ops.aten._weight_int4pack_mm_for_cpu"),
    ("mxfp4", "float32", "F.linear on the dequantized weight"),
])
def test_quantized_pairing_uses_pytorchs_int4_kernel_on_the_same_codes(mode, dtype, expected):
    from conformance.record import Case
    from conformance.registry import REGISTRY
    from conformance.strategies import fill

    record = REGISTRY["nn.quantized_linear"]
    group, bits = (64, 4) if mode == "affine" else (32, 4)
    case = Case({"x": fill((3, 256), "normal", "float32", 0), "weight": fill((64, 256), "normal", "float32", 1)},
                {"group_size": group, "bits": bits, "mode": mode})
    prepared = cells.prepare(record, case, dtype)
    # quantized_pairing checks the kernel's product against the dense one and falls back
    # (with the reason) when they disagree: the int4 name proves MLX's codes were repacked right.
    assert prepared.sides["torch"][0] == expected, prepared.reasons
    for _, fn in prepared.sides.values():
        fn()


def test_record_and_compare_commands_drive_pytest_benchmark(tmp_path):
    out = tmp_path / "base"
    cmd = [sys.executable, "-m", "conformance", "bench", "record", "--shapes", "tiny", "--target-s", "0.002",
           "--out", str(out), "--", "-k", SUBSET]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (saved,) = report.latest_files(out)
    assert saved.name == "0001_float32.json" and (out / "report.html").is_file()
    shutil.copy(saved, tmp_path / "keep.json")
    _scaled(tmp_path / "keep.json", saved, 1 / PLANT)
    cmd = [sys.executable, "-m", "conformance", "bench", "compare", "--shapes", "tiny", "--target-s", "0.002",
           "--baseline", str(out), "--", "-k", SUBSET]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode != 0 and "Performance has regressed" in proc.stdout + proc.stderr


def test_compare_without_a_baseline_says_what_to_do(tmp_path, capsys):
    assert main(["bench", "compare", "--baseline", str(tmp_path / "nowhere")]) == 2
    assert "record one first" in capsys.readouterr().err


def test_noise_is_relative_iqr():
    side = _side(2.0)
    assert side.noise == pytest.approx(0.1) and not math.isnan(side.noise)


@pytest.mark.parametrize(("op", "dtype", "shape"), [
    ("nn.linear", "float32", "x[2, 8], weight[4, 8], bias[4]"),
    ("nn.multi_linear", "bfloat16", "x[1, 2, 1, 8], weight[2, 4, 8]"),
    ("nn.rms_norm", "float32", "x[1, 1, 8], weight[8]; eps=1e-05, form='layer', stored_eps=1e-05"),
    ("nn.layer_norm", "bfloat16", "x[1, 2, 8], weight[8], bias[8]; eps=1e-05"),
    ("nn.embedding", "float32", "weight[10, 4], indices[1, 3]"),
    ("fast.scaled_dot_product_attention", "float32",
     "q[1, 4, 3, 8], k[1, 2, 3, 8], v[1, 2, 3, 8]; scale=0.35, mask='causal'"),
    ("nn.quantized_linear", "float32",
     "x[2, 64], weight[8, 64], wq[8, 8], scales[8, 1], qbiases[8, 1]; group_size=64, bits=4, mode='affine'"),
    ("quantization.quantized_matmul", "bfloat16",
     "x[1, 64], weight[8, 64], wq[8, 8], scales[8, 2]; group_size=32, bits=4, mode='mxfp4'"),
])
def test_standalone_reproducers_run_without_the_project(op, dtype, shape, tmp_path):
    from conformance.bench.repro import reproducer

    script = reproducer(op, dtype, shape)
    assert script is not None and "conformance" not in script and "mlx_impl" not in script
    path = tmp_path / "repro.py"
    path.write_text(script)
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True,
                          check=False, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"{op} {dtype}: MLX ")
