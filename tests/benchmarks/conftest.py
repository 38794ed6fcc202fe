"""pytest-benchmark set-up for the registry benchmarks (``tests/benchmarks/test_bench.py``).

Options (besides pytest-benchmark's own ``--benchmark-*``):

* ``--bench-device auto|cpu|gpu``: MLX's device (auto: Metal/CUDA when MLX has it);
* ``--bench-shapes auto|full|cpu|tiny``: auto = the CPU shapes on MLX's CPU back end, the
  full ones on a GPU; ``--benchmark-disable`` implies ``tiny`` (the CI smoke pass);
* ``--bench-target-s``: seconds of timed rounds per benchmark (at least 5 rounds).

How one benchmark is timed (:func:`timed`): the callable runs once OUTSIDE the samples
(compilation, first-use kernel builds, allocation), once more to size the run, then
``benchmark.pedantic`` takes warm-up rounds (50 ms worth, none for a call slower than
that: the sizing call warmed it) and ``rounds`` timed rounds of one call each (at least 5;
3 for the twin);
pytest-benchmark computes and stores the statistics. Every callable ends with ``mx.eval``
(MLX) or a device synchronization (PyTorch on CUDA/MPS).

Machine info added to pytest-benchmark's ``machine_info`` (compared, and warned about, by
``--benchmark-compare``): back end, MLX/PyTorch devices, CPU model and cores, versions,
BLAS, threads, and the float32 matmul precision (``tf32`` or ``float32``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "registry benchmarks")
    group.addoption("--bench-device", default="auto", choices=("auto", "cpu", "gpu"),
                    help="MLX device for the benchmarks (auto: Metal/CUDA when MLX has it, else the CPU)")
    group.addoption("--bench-shapes", default="auto", choices=("auto", "full", "cpu", "tiny"),
                    help="benchmark shapes (auto: cpu on MLX's CPU back end, full on a GPU)")
    group.addoption("--bench-target-s", type=float, default=0.4,
                    help="seconds of timed rounds per benchmark (at least 5 rounds)")


_SETUP: dict[str, Any] = {}


def bench_setup(config: pytest.Config) -> dict[str, Any]:
    """Device selection, MLX CPU tuning, PyTorch threads and precision, done once."""
    if not _SETUP:
        from conformance.bench import cells, machine

        backend, torch_device, tuning = cells.setup(config.getoption("--bench-device"))
        precision = machine.float32_precision(backend)
        if torch_device == "cuda":
            machine.match_torch_precision(precision)
        disabled = bool(config.getoption("benchmark_disable"))
        shapes = "tiny" if disabled else cells.resolve_shapes(config.getoption("--bench-shapes"), backend)
        _SETUP.update(backend=backend, torch_device=torch_device, tuning=tuning, precision=precision,
                      shapes=shapes, disabled=disabled, target_s=config.getoption("--bench-target-s"))
    return _SETUP


def pytest_benchmark_update_commit_info(config: pytest.Config, commit_info: dict[str, Any]) -> None:
    # A device machine runs a copy of the working tree whose .git may be another commit's
    # (measured: an H200 copy reported the previous session's commit, "dirty"): the
    # commit the runner names in CONFORMANCE_COMMIT wins, and says where it came from.
    from conformance.runinfo import COMMIT_ENV

    named = os.environ.get(COMMIT_ENV)
    if named:
        commit_info.update(id=named, source=COMMIT_ENV, git_id=commit_info.get("id"))


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    from conformance.bench import machine

    setup = bench_setup(config)
    info = machine.machine_info(setup["backend"], setup["torch_device"], setup["tuning"])
    # Date and commit change on every run: pytest-benchmark keeps them in its own
    # datetime/commit_info, and machine_info differences are warned about by compare.
    info.pop("date", None)
    info.pop("commit", None)
    # MLX's memory counters change with every run (and during one): not machine identity.
    tuning = info.get("mlx_cpu_backend")
    if isinstance(tuning, dict):
        info["mlx_cpu_backend"] = {k: v for k, v in tuning.items()
                                   if k not in ("cache_memory", "active_memory", "peak_memory")}
    machine_info["conformance"] = {**info, "shapes": setup["shapes"]}


def timed(benchmark: Any, fn: Callable[[], None], target_s: float, min_rounds: int = 5,
          max_rounds: int = 1000) -> None:
    """Time ``fn`` with pytest-benchmark, first-use costs kept out of the samples (see the
    module docstring); with ``--benchmark-disable`` it runs ``fn`` once. ``min_rounds`` is 3
    for the twin (context only: its slow cells would dominate the run). ``max_rounds`` caps
    the rounds of a fast call (the overhead pairs raise it: see test_bench.test_overhead)."""
    if benchmark.disabled:
        benchmark(fn)
        return
    fn()  # first call: compilation, kernel builds, allocation; never sampled
    t0 = time.perf_counter()
    fn()  # second call: sizes the run, and is the warm-up of a slow call
    per_call = max(time.perf_counter() - t0, 1e-7)
    rounds = int(min(max_rounds, max(min_rounds, target_s / per_call)))
    warmup = int(min(20, 0.05 / per_call))
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
