"""pytest-benchmark view of the registry's benchmark cells and the layer-overhead pairs.

Every registry ``BenchCase`` at every dtype it lists is two benchmarks, ``mlx`` (mlx_impl,
ending in ``mx.eval``) and ``torch`` (torch_reference in native precision), in one group
named ``op/case/dtype`` so ``pytest-benchmark compare`` lines them up; the overhead pairs
are grouped ``overhead/<layer>/<shape>/<dtype>`` (each layer variant and the raw mx call).

Shapes: with benchmarks enabled, the shapes ``python -m conformance bench record`` uses
(``cpu_make`` on MLX's CPU back end, ``make`` on a GPU). With ``--benchmark-disable`` (the
CI smoke pass, ``nox -s bench_smoke``) each benchmark runs ONCE at a tiny shape: the
simplest example of the record's own Hypothesis strategy that MLX runs
(:func:`conformance.bench.runner.tiny_case`), and the overhead pairs at ``overhead.TINY``
sizes. That proves every benchmark builds its inputs and runs on both libraries; it never
asserts a time.

    pytest tests/benchmarks -q --benchmark-disable            # smoke
    pytest tests/benchmarks --benchmark-autosave               # measure; then pytest-benchmark compare
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import pytest
import torch

from conformance.bench import runner
from conformance.bench.overhead import FULL, PAIRS, TINY
from conformance.dtypes import FORMATS

CELLS = runner.bench_cells()
OVERHEAD = [(pair, dtype, variant) for pair in PAIRS for dtype in ("float32", "bfloat16")
            for variant in (*pair.variants, "raw")]


@pytest.fixture(scope="session")
def bench_setup() -> tuple[str, str]:
    """(back end, PyTorch device) with MLX's CPU back end tuned as ``bench record`` tunes it."""
    backend, torch_device, _ = runner.setup("auto")
    return backend, torch_device


def _tiny(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("benchmark_disable"))


_LAST: dict[tuple[str, bool], runner.Prepared] = {}


def _prepared(cell: runner.Cell, tiny: bool, backend: str, torch_device: str) -> runner.Prepared:
    # The mlx and torch benchmarks of one cell run next to each other: keep one cell's
    # inputs alive (at full size an embedding table is 512 MiB), not every cell's.
    key = (cell.key, tiny)
    if key not in _LAST:
        _LAST.clear()
        case, _ = runner.build_case(cell, "tiny" if tiny else runner.resolve_shapes("auto", backend))
        _LAST[key] = runner.prepare(cell.record, case, cell.dtype, torch_device)
    return _LAST[key]


@pytest.mark.parametrize("side", ("mlx", "torch"))
@pytest.mark.parametrize("cell", CELLS, ids=[c.key for c in CELLS])
def test_op(benchmark: Any, request: pytest.FixtureRequest, bench_setup: tuple[str, str],
            cell: runner.Cell, side: str) -> None:
    backend, torch_device = bench_setup
    prepared = _prepared(cell, _tiny(request), backend, torch_device)
    benchmark.group = cell.key
    benchmark.extra_info.update(side=side, backend=backend, shape=prepared.shape)
    if side == "mlx":
        benchmark(prepared.mlx)
        benchmark.extra_info.update(prepared.cost().as_dict())
    else:
        with torch.inference_mode():
            benchmark(prepared.torch)


@pytest.mark.parametrize(("pair", "dtype", "variant"), OVERHEAD,
                         ids=[f"{p.name}-{p.shape.split(':')[0]}-{d}-{v}" for p, d, v in OVERHEAD])
def test_overhead(benchmark: Any, request: pytest.FixtureRequest, bench_setup: tuple[str, str],
                  pair: Any, dtype: str, variant: str) -> None:
    sizes = TINY if _tiny(request) else FULL
    thunk = pair.build(sizes, FORMATS[dtype].mx_dtype)[variant]
    benchmark.group = f"overhead/{pair.name}/{pair.describe(sizes)}/{dtype}"
    benchmark.extra_info.update(raw=pair.raw_name, variant=variant)
    benchmark(lambda: mx.eval(thunk()))
