"""Back-end facts the suite relies on (issue 8): MLX's float32 matmul precision (TF32) and
its derived bound, the run header (precision, how it was set, the project's own commit),
the standalone reproducers, mlx_impl's empty-size guards, and the conventions measured on
MLX's CUDA back end (pinned where a GPU runs them; skipped with the reason elsewhere)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conformance.execute import backend_name
from conformance.judge import judge
from conformance.repro import GUARDED_BUGS, divergences, reproducer
from conformance.runinfo import matmul_precision, project_commit
from conformance.tolerance import (
    TF32_UNIT_ROUNDOFF,
    Tolerance,
    accumulation_factor,
    tf32_enabled,
    with_matmul_precision,
)
from mlx_impl import fast, nn

ON_GPU = mx.default_device().type == mx.DeviceType.gpu
ON_CUDA = ON_GPU and not mx.metal.is_available()


def _to_tf32(a: np.ndarray) -> np.ndarray:
    """Round float32 to TF32 (10-bit mantissa) to nearest, ties to even, as float64."""
    b = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    b = (b + 0x0FFF + ((b >> 13) & 1)) & ~np.uint64(0x1FFF)
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def test_tf32_setting_follows_the_variable_on_gpus_only() -> None:
    assert tf32_enabled("cuda", {}) and tf32_enabled("metal", {})  # MLX's default: on
    assert not tf32_enabled("cuda", {"MLX_ENABLE_TF32": "0"})
    assert not tf32_enabled("cpu", {"MLX_ENABLE_TF32": "1"})
    assert matmul_precision("cuda", {})["how_set"].startswith("MLX's default")
    assert matmul_precision("cuda", {"MLX_ENABLE_TF32": "0"})["float32_matmul"] == "float32"
    assert matmul_precision("cpu", {})["float32_matmul"] == "float32"


def test_tf32_bound_admits_tf32_inputs_and_nothing_coarser(monkeypatch: pytest.MonkeyPatch) -> None:
    # A product of TF32-rounded inputs summed in float32 passes the derived bound; the same
    # product of bfloat16-rounded inputs (7-bit mantissa, u = 2^-8) fails it where the
    # rounding is systematic (random errors cancel and can hide under a worst-case bound).
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    w = rng.standard_normal((8, 512)).astype(np.float32)
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    magnitude = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    tf32 = (_to_tf32(x) @ _to_tf32(w).T).astype(np.float32)
    base = Tolerance(reason="test", accumulation_terms=lambda a, p: 512)
    monkeypatch.setenv("MLX_ENABLE_TF32", "1")
    tol = with_matmul_precision(base, "cuda", "float32")
    assert tol.input_unit_roundoff == TF32_UNIT_ROUNDOFF
    assert with_matmul_precision(base, "cpu", "float32") is base
    assert with_matmul_precision(base, "cuda", "float16") is base
    peer = exact.astype(np.float32)
    kw = dict(mlx_dtype="float32", peer_dtype="float32", magnitude=magnitude, accumulation_terms=512)
    assert judge(tf32, peer, exact, tolerance=tol, **kw).passed
    assert not judge(tf32, peer, exact, tolerance=base, **kw).passed  # TF32 is not float32
    ones = np.full((1, 512), 1 + 2.0**-9, np.float32)  # exact in TF32, rounds to 1 in bfloat16
    exact1 = ones.astype(np.float64) @ ones.astype(np.float64).T
    kw1 = dict(kw, magnitude=exact1)
    assert judge(np.float32(_to_tf32(ones) @ _to_tf32(ones).T), exact1.astype(np.float32), exact1,
                 tolerance=tol, **kw1).passed
    assert not judge(np.full((1, 1), 512.0, np.float32), exact1.astype(np.float32), exact1,
                     tolerance=tol, **kw1).passed
    assert accumulation_factor(512, 2.0**-24, TF32_UNIT_ROUNDOFF) == pytest.approx(
        (1 + 2.0**-11) ** 2 * (1 + 512 * 2.0**-24 / (1 - 512 * 2.0**-24)) - 1)


def test_commit_is_the_project_dirs_own(tmp_path: Path) -> None:
    assert project_commit(env={"CONFORMANCE_COMMIT": "abc123"}) == "abc123"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    outer = tmp_path / "other-checkout"
    (outer / "copy").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(outer)], check=True)
    # A copy of the project inside another repository: that repository's HEAD is not ours.
    assert project_commit(outer / "copy", env={}) == "unknown"
    assert project_commit(tmp_path / "nowhere", env={}) == "unknown"


@pytest.mark.parametrize("name", sorted([*divergences(), *GUARDED_BUGS]))
def test_reproducers_use_mlx_and_numpy_only(name: str) -> None:
    script = reproducer(name)
    tree = ast.parse(script)
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"mlx", "numpy"}
    assert "float64" in script


@pytest.mark.parametrize("name", ["cpu_half_accumulator_overflow", "cuda_half_product_overflow",
                                  "cuda_half_sum_overflow", "cuda_dequantize_1bit"])
def test_reproducers_run_and_print_both_results(name: str, tmp_path: Path) -> None:
    path = tmp_path / "repro.py"
    path.write_text(reproducer(name))
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, check=True)
    assert "float64" in out.stdout and "MLX" in out.stdout


def test_empty_sizes_never_reach_the_kernels() -> None:
    # mx.addmm with an empty batch: SIGFPE on CUDA; fast norms over D = 0: SIGFPE on CUDA;
    # zero rows: a CUDA graph error; MLX's CPU sum over an empty axis can hang.
    y = nn.Linear(mx.ones((3, 4)), mx.ones(3))(mx.ones((5, 0, 4)))
    assert y.shape == (5, 0, 3) and y.dtype == mx.float32
    assert fast.rms_norm(mx.ones((2, 0)), None, 1e-5).shape == (2, 0)
    assert fast.layer_norm(mx.ones((0, 4)), mx.ones(4, mx.float16), None, 1e-5).dtype == mx.float32
    assert nn.RMSNorm(mx.ones((4,)))(mx.ones((0, 4))).shape == (0, 4)
    assert nn.LayerNorm(mx.ones((0,)))(mx.ones((2, 0))).shape == (2, 0)
    assert fast.RoPE(8)(mx.ones((1, 2, 0, 8))).shape == (1, 2, 0, 8)


def test_composed_layer_norm_means_are_mlx_cpu_means() -> None:
    # nn.LayerNorm writes mx.mean out (float32 sum, rounded, times 1/D rounded) so that the
    # CUDA float16 sum cannot overflow; on the CPU the layer is the same bits as the same
    # formula written with mx.mean (eps: Go's float32 scalar cast to x's dtype).
    x = mx.array(np.random.default_rng(3).standard_normal((4, 333)).astype(np.float32) * 300)
    with mx.stream(mx.cpu):  # one summation order: the CPU's
        for dtype in (mx.float32, mx.float16, mx.bfloat16):
            a, w = x.astype(dtype), mx.ones((333,), dtype=dtype)
            centered = a - mx.mean(a, axis=-1, keepdims=True)
            variance = mx.mean(centered * centered, axis=-1, keepdims=True)
            eps = mx.array(1e-5, dtype=mx.float32).astype(dtype)
            ref = centered * mx.rsqrt(variance + eps) * w
            got = nn.LayerNorm(w, eps=1e-5)(a)
            assert mx.array_equal(got.astype(mx.float32), ref.astype(mx.float32)).item()


def test_one_bit_affine_is_refused_on_cuda_only() -> None:
    from mlx_impl import quantization

    if ON_CUDA:
        with pytest.raises(ValueError, match=r"^\[quantize\] 1-bit affine .* CUDA"):
            quantization.quantize(mx.ones((2, 64)), 64, 1)
    else:
        assert quantization.quantize(mx.ones((2, 64)), 64, 1)[0].shape == (2, 2)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
@pytest.mark.parametrize(("bits", "group"), [(4, 64), (8, 64), (4, 128)])
def test_single_group_affine_guard_adds_exact_zeros(monkeypatch: pytest.MonkeyPatch, dtype: mx.Dtype, bits: int,
                                                    group: int) -> None:
    # The CUDA guard (one group per row, several rows: a zero group appended) must not change
    # a bit of the product: forced on here, it must equal MLX's own unpadded product.
    from mlx_impl import quantization

    w = mx.random.normal((192, group), key=mx.random.key(1)).astype(dtype)
    x = mx.random.normal((2, 12, group), key=mx.random.key(2)).astype(dtype)
    wq, s, b = quantization.quantize(w, group, bits, "affine")
    want = quantization.quantized_matmul(x, wq, s, b, True, group, bits, "affine")
    with mx.stream(mx.cpu):
        monkeypatch.setattr(quantization, "_on_cuda", lambda: True)
        got = quantization.quantized_matmul(x, wq, s, b, True, group, bits, "affine")
    if dtype != mx.float16:  # float16 takes the (also guarded) float32 route when forced
        assert got.dtype == want.dtype and mx.array_equal(got, want).item()
    assert got.shape == (2, 12, 192)


@pytest.mark.skipif(not ON_CUDA, reason="pins an MLX CUDA (Hopper) bug that mlx_impl guards; this run is on "
                    f"{backend_name()}")
def test_mlx_cuda_single_group_affine_qmm_is_wrong_and_mlx_impl_is_not() -> None:
    from mlx_impl import quantization

    w = mx.random.normal((192, 64), key=mx.random.key(1)).astype(mx.bfloat16)
    x = mx.random.normal((12, 64), key=mx.random.key(2)).astype(mx.bfloat16)
    wq, s, b = mx.quantize(w, group_size=64, bits=4, stream=mx.cpu)
    exact = np.array(x.astype(mx.float32), np.float64) @ np.array(
        mx.dequantize(wq, s, b, group_size=64, bits=4, dtype=mx.float32, stream=mx.cpu), np.float64).T

    def rel(y: mx.array) -> float:
        return float(np.linalg.norm(np.array(y.astype(mx.float32), np.float64) - exact) / np.linalg.norm(exact))

    ours = rel(quantization.quantized_matmul(x, wq, s, b, True, 64, 4, "affine"))
    assert ours < 2e-2, ours  # bfloat16 output rounding and the dequantized weight's
    if mx.cuda.is_available() and mx.device_info().get("compute_capability_major") == 9:
        # Still wrong in MLX itself: when this fails, MLX has fixed it and the guard can go.
        assert rel(mx.quantized_matmul(x, wq, s, b, group_size=64, bits=4)) > 0.5


@pytest.mark.skipif(not ON_CUDA, reason="pins MLX's CUDA back end's conventions; this run is on "
                    f"{backend_name()}")
def test_cuda_conventions_measured_on_h200() -> None:
    # Affine dequantize: one rounding of q*scale+bias on CUDA (the CPU rounds q*scale first).
    w = mx.array(np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32) * 3).astype(mx.bfloat16)
    wq, s, b = mx.quantize(w, group_size=64, bits=4, stream=mx.cpu)
    q = np.array(mx.dequantize(wq, mx.ones(s.shape), mx.zeros(s.shape), group_size=64, bits=4, stream=mx.cpu))
    once = mx.array(q.astype(np.float64) * np.repeat(np.array(s.astype(mx.float32)), 64, -1)
                    + np.repeat(np.array(b.astype(mx.float32)), 64, -1)).astype(mx.bfloat16)
    assert mx.array_equal(mx.dequantize(wq, s, b, group_size=64, bits=4), once).item()
    # FP quantize: a negative weight that rounds to zero keeps its sign on CUDA (-0), and an
    # all-zero mxfp8 group's scale byte is 0 there (127 on the CPU): equal values either way.
    zeros = mx.zeros((1, 32))
    assert int(np.array(mx.quantize(zeros, group_size=32, bits=8, mode="mxfp8")[1])[0, 0]) == 0
    assert int(np.array(mx.quantize(zeros, group_size=32, bits=8, mode="mxfp8", stream=mx.cpu)[1])[0, 0]) == 127


def test_report_shows_more_accurate_cells_as_conforming() -> None:
    from conformance.report import render_html, render_markdown, summary

    cell = {"op": "fast.scaled_dot_product_attention", "dtype": "float16", "mode": "none", "examples": 50,
            "edge_cases": 0, "mlx": {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 1.0},
            "peer": {"max_abs": 0.0, "max_rel": 0.0, "max_ulp": 9.0}, "ulp_histogram": [0] * 9,
            "status": "more-accurate", "more_accurate": 3, "first_more_accurate": "MLX more accurate: ...",
            "first_failure": "", "reproduce": ""}
    run = {"backend": "cuda", "matmul_precision": matmul_precision("cuda", {}),
           "supports": {"float64": False, "affine_1bit": False}}
    report = {"runs": [run], "cells": [cell, {**cell, "dtype": "float32", "status": "fail",
                                              "first_failure": "x"}]}
    assert summary(report)["cells_failed"] == 1 and summary(report)["cells_more_accurate"] == 1
    text = render_markdown(report)
    assert "MLX-MORE-ACCURATE" in text and "float32 matmuls at tf32" in text and "float64 no" in text
    assert "MLX-MORE-ACCURATE" in render_html(report)
