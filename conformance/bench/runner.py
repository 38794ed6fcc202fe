"""Run the registry's benchmark cases: every record's ``bench`` entries, every dtype they
list, ``mlx_impl`` against ``torch_reference`` (native precision) on the same device,
plus the idiomatic PyTorch op where one exists and the layer-overhead pairs.

What each timed call includes: the record's ``call`` on ready inputs (already converted,
rounded to the dtype, evaluated and, for CUDA, on the device). The record's call builds
the layer object too (``Linear(w, b)(x)``): a few attribute stores and shape checks,
identical in both libraries and negligible beside the op except at decode shapes, where
the overhead pairs (:mod:`conformance.bench.overhead`) measure the layer alone. MLX's side
ends with ``mx.eval`` of every output; PyTorch's runs under ``torch.inference_mode()``
and ends with ``torch.cuda.synchronize()`` on CUDA (``torch.mps.synchronize()`` on MPS).

Shapes (``shapes``): ``full`` runs each case's ``make()``; ``cpu`` uses ``cpu_make()``
where a record gives one (the full shape would take minutes per call on MLX's CPU back
end; the report names the shape that ran); ``tiny`` runs the minimal example of the
record's own Hypothesis strategy that MLX runs (Hypothesis, derandomized, generates the
simplest example first: the smallest sizes and first choices), which proves the code
path, not the speed.

Threads: PyTorch gets ``torch.set_num_threads(cores)`` (the CPUs this process may use);
MLX's CPU back end is tuned by ``mlx_impl.cpu_backend.tune_cpu`` (buffer-cache limit, an
optimized BLAS with ``cores`` threads for its matmuls). MLX's other CPU kernels run on
its one CPU stream thread: that is MLX's design, recorded, not tuned away.
"""

from __future__ import annotations

import functools
import time
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import torch
from hypothesis import HealthCheck, Phase, find, settings

import mlx_impl
import torch_reference
from conformance.bench import machine
from conformance.bench.baseline import SCHEMA, mlx_torch_ratio
from conformance.bench.costs import Cost, cost_of
from conformance.bench.overhead import FULL, PAIRS, TINY
from conformance.bench.raw_torch import RAW_TORCH
from conformance.bench.timing import TINY_BUDGET, Budget, Timing, measure, measure_interleaved
from conformance.dtypes import FORMATS, to_mlx, to_torch
from conformance.execute import prepare_inputs
from conformance.record import BenchCase, Case, OpRecord

SHAPES = ("auto", "full", "cpu", "tiny")


@dataclass(frozen=True)
class Cell:
    """One benchmark: a record's bench case at one dtype."""

    record: OpRecord
    bench: BenchCase
    dtype: str

    @property
    def key(self) -> str:
        """``op/case/dtype``: how baselines and comparisons name the cell."""
        return f"{self.record.name}/{self.bench.name}/{self.dtype}"


def bench_cells(records: Iterable[str] | None = None) -> list[Cell]:
    """Every benchmark cell of the registry (or of the named records), in registry order."""
    from conformance.registry import REGISTRY

    names = list(REGISTRY) if records is None else list(records)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        raise ValueError(f"[bench] unknown records {unknown}; known: {sorted(REGISTRY)}")
    return [Cell(REGISTRY[n], b, d) for n in names for b in REGISTRY[n].bench for d in b.dtypes]


def resolve_shapes(shapes: str, backend: str) -> str:
    """``auto`` means ``cpu`` on the CPU back end and ``full`` on a GPU."""
    if shapes not in SHAPES:
        raise ValueError(f"[bench] shapes must be one of {SHAPES} but got {shapes!r}.")
    if shapes == "auto":
        return "cpu" if backend == "cpu" else "full"
    return shapes


def tiny_case(record: OpRecord, mode: str, dtype: str) -> Case:
    """The smallest example of the record's strategy that MLX runs (see the module docstring)."""
    return _tiny_case(record.name, mode, dtype)


@functools.cache
def _tiny_case(name: str, mode: str, dtype: str) -> Case:
    from conformance.registry import REGISTRY

    record = REGISTRY[name]

    def mlx_runs(case: Case) -> bool:
        # Some minimal draws are inputs MLX itself refuses (mx.quantize of an nvfp4 row of
        # 16 raises in 0.32.4); the smoke run wants a shape the benchmark path can time.
        try:
            inputs = prepare_inputs(record, case, dtype)
            arrays = {k: to_mlx(v, dtype) for k, v in inputs.items()}
            mx.eval(_outputs(record.call(mlx_impl, arrays, case.params, {})))
        except Exception:
            return False
        return True

    # Hypothesis generates the simplest example first (smallest sizes, first choices);
    # derandomized and without shrinking this is deterministic and takes milliseconds.
    return find(record.cases(dtype, mode), mlx_runs,
                settings=settings(database=None, max_examples=50, deadline=None, derandomize=True,
                                  phases=[Phase.generate], suppress_health_check=list(HealthCheck)))


def build_case(cell: Cell, shapes: str) -> tuple[Case, str]:
    """The input for ``cell`` at ``shapes`` (``full``/``cpu``/``tiny``) and a note naming it."""
    bench = cell.bench
    if shapes == "tiny":
        return tiny_case(cell.record, bench.mode, cell.dtype), "tiny smoke shape (minimal Hypothesis example)"
    if shapes == "cpu" and bench.cpu_make is not None:
        return bench.cpu_make(), f"{bench.note}; CPU shape: {bench.cpu_note or 'smaller'}"
    return bench.make(), bench.note


def _outputs(out: Any) -> list[mx.array]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in items if o is not None]


def _torch_sync(torch_device: str) -> Callable[[], None]:
    if torch_device == "cuda":
        return torch.cuda.synchronize
    if torch_device == "mps":
        return torch.mps.synchronize
    return lambda: None


@dataclass
class Prepared:
    """Ready-to-time callables for one cell (each does its work and waits for it)."""

    mlx: Callable[[], None]
    torch: Callable[[], None]
    raw: Callable[[], None] | None
    raw_name: str
    shape: str
    cost: Callable[[], Cost]
    """The op's cost model on this input (from the MLX outputs of the last timed call,
    or of one call made now if none ran yet)."""


def prepare(record: OpRecord, case: Case, dtype: str, torch_device: str = "cpu") -> Prepared:
    """Convert ``case`` for both libraries (rounded to ``dtype``, derived arrays added,
    evaluated, on the device) and close the timed calls over the converted inputs."""
    inputs = prepare_inputs(record, case, dtype)
    params = case.params
    mx_arrays = {k: to_mlx(v, dtype) for k, v in inputs.items()}
    mx.eval(list(mx_arrays.values()))
    t_arrays = {k: to_torch(v, dtype).to(torch_device) for k, v in inputs.items()}
    sync = _torch_sync(torch_device)
    sync()
    last: list[list[mx.array]] = []

    def run_mlx() -> None:
        out = _outputs(record.call(mlx_impl, mx_arrays, params, {}))
        mx.eval(out)
        last[:] = [out]  # kept for the cost model's output size; freed by the next call

    def run_torch() -> None:
        record.call(torch_reference, t_arrays, params, {"precision": "native"})
        sync()

    raw: Callable[[], None] | None = None
    raw_name = ""
    if record.name in RAW_TORCH:
        raw_name, raw_call = RAW_TORCH[record.name]

        def run_raw() -> None:
            raw_call(t_arrays, params)
            sync()
        raw = run_raw

    def cost() -> Cost:
        if not last:
            run_mlx()
        out_bytes = sum(int(o.nbytes) for o in last[0])
        return cost_of(record.name, inputs, params, dtype, out_bytes)

    shape = ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())
    if params:
        shape += "; " + ", ".join(f"{k}={v!r}" for k, v in params.items())
    return Prepared(run_mlx, run_torch, raw, raw_name, shape, cost)


def _timed(fn: Callable[[], None], budget: Budget, *, torch_side: bool) -> tuple[Timing | None, str]:
    try:
        if torch_side:
            with torch.inference_mode():
                return measure(fn, budget), ""
        return measure(fn, budget), ""
    except Exception as exc:  # a raise on a benchmark input is itself a finding: recorded
        return None, f"{type(exc).__name__}: {exc}"


def run_cell(cell: Cell, case: Case, note: str, *, torch_device: str, budget: Budget,
             raw_torch: bool = True) -> dict[str, Any]:
    """Time one cell on both libraries (and the raw PyTorch op); JSON-ready result."""
    entry: dict[str, Any] = {
        "key": cell.key, "op": cell.record.name, "case": cell.bench.name, "dtype": cell.dtype,
        "mode": cell.bench.mode, "note": note, "errors": {},
    }
    try:
        prepared = prepare(cell.record, case, cell.dtype, torch_device)
    except Exception as exc:
        entry["errors"]["prepare"] = f"{type(exc).__name__}: {exc}"
        return entry
    entry["shape"] = prepared.shape
    sides: list[tuple[str, Callable[[], None] | None, bool]] = [
        ("mlx", prepared.mlx, False), ("torch", prepared.torch, True)]
    if raw_torch and prepared.raw is not None:
        sides.append(("torch_raw", prepared.raw, True))
        entry["torch_raw_op"] = prepared.raw_name
    for side, fn, torch_side in sides:
        if fn is None:
            continue
        timing, error = _timed(fn, budget, torch_side=torch_side)
        entry[side] = None if timing is None else timing.as_dict()
        if error:
            entry["errors"][side] = error
    if entry["mlx"] is not None:
        entry["cost"] = prepared.cost().as_dict()
    return entry


def host_seconds(thunk: Callable[[], Any], *, calls: int = 200, repeats: int = 3) -> float:
    """Seconds one call of ``thunk`` spends on the host building its lazy graph (no
    ``mx.eval``): the best of ``repeats`` runs of ``calls`` calls. Far less noisy than the
    evaluated time, and exactly where a layer's Python-side checks add cost."""
    return min(timeit.repeat(thunk, number=calls, repeat=repeats)) / calls


def run_overhead(dtype: str, *, tiny: bool, budget: Budget) -> list[dict[str, Any]]:
    """Every overhead pair at ``dtype``: the layer's median over the raw call's (evaluated),
    and the host-side time the layer adds to building the graph (not evaluated)."""
    sizes = TINY if tiny else FULL
    rows = []
    for pair in PAIRS:
        row: dict[str, Any] = {"layer": pair.name, "raw": pair.raw_name, "shape": pair.describe(sizes),
                               "dtype": dtype}
        try:
            thunks = pair.build(sizes, FORMATS[dtype].mx_dtype)
            names = [*pair.variants, "raw"]
            fns = [(lambda t=thunks[n]: mx.eval(t())) for n in names]
            timings = measure_interleaved(fns, budget)
            host = {n: host_seconds(thunks[n], calls=5 if tiny else 200, repeats=1 if tiny else 3)
                    for n in names}
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        by_name = dict(zip(names, timings, strict=True))
        raw = by_name.pop("raw")
        row["raw_timing"] = raw.as_dict()
        row["raw_host_s"] = host["raw"]
        row["variants"] = {n: {"timing": t.as_dict(), "ratio": t.median_s / raw.median_s,
                               "host_extra_s": host[n] - host["raw"]}
                           for n, t in by_name.items()}
        rows.append(row)
        del thunks
    return rows


@dataclass
class Options:
    """What one ``bench record`` / ``bench compare`` run measures."""

    device: str = "auto"
    shapes: str = "auto"
    records: list[str] | None = None
    keys: set[str] | None = None
    """Only these cells (``op/case/dtype``); compare's retry of regressed cells uses it."""
    roofline: dict[str, Any] | None = None
    """Reuse this roofline instead of measuring it again."""
    budget: Budget = field(default_factory=Budget)
    raw_torch: bool = True
    overhead: bool = True
    overhead_dtypes: tuple[str, ...] = ("float32", "bfloat16")
    progress: Callable[[str], None] = print


def setup(device: str) -> tuple[str, str, dict[str, Any]]:
    """Pick MLX's device, tune MLX's CPU back end, set PyTorch's threads; return
    (backend, PyTorch device, MLX CPU back end info)."""
    from mlx_impl import cpu_backend

    backend = machine.select_device(device)
    cores = machine.cpu_cores()
    torch.set_num_threads(cores)
    tuning = cpu_backend.tune_cpu(blas_threads=cores).as_dict()
    return backend, machine.torch_device_for(backend), tuning


def run(options: Options) -> dict[str, Any]:
    """The whole benchmark: machine, roofline, every cell, the overhead pairs (JSON-ready)."""
    started = time.perf_counter()
    backend, torch_device, tuning = setup(options.device)
    shapes = resolve_shapes(options.shapes, backend)
    tiny = shapes == "tiny"
    budget = TINY_BUDGET if tiny else options.budget
    say = options.progress
    cells = [c for c in bench_cells(options.records) if options.keys is None or c.key in options.keys]
    say(f"[bench] {backend} (MLX {mx.default_device()}, PyTorch {torch_device}), shapes {shapes}, "
        f"{len(cells)} cells")
    roofline = options.roofline or machine.measure_roofline(torch_device, tiny=tiny)
    peak = roofline["peak"]
    say(f"[bench] roofline: {peak['bandwidth_Bps'] / 1e9:.1f} GB/s, {peak['gemm_flops'] / 1e9:.1f} GFLOP/s "
        f"(float32 GEMM); MLX {roofline['mlx']['gemm_flops'] / 1e9:.1f}, "
        f"PyTorch {roofline['torch']['gemm_flops'] / 1e9:.1f} GFLOP/s")
    results = []
    cases: dict[tuple[str, str], tuple[Case, str]] = {}
    for i, cell in enumerate(cells):
        # One input per (record, bench case), reused for each dtype (the embedding table
        # alone is 512 MiB at full size): built on first use, dropped after its last dtype.
        # Tiny inputs are drawn per dtype, so they are not shared.
        key = (cell.record.name, cell.bench.name)
        t0 = time.perf_counter()
        try:
            if key not in cases or tiny:
                cases.clear()
                cases[key] = build_case(cell, shapes)
            case, note = cases[key]
        except Exception as exc:  # a broken BenchCase is reported, and the run goes on
            entry = {"key": cell.key, "op": cell.record.name, "case": cell.bench.name, "dtype": cell.dtype,
                     "mode": cell.bench.mode, "note": "", "errors": {"make": f"{type(exc).__name__}: {exc}"}}
        else:
            entry = run_cell(cell, case, note, torch_device=torch_device, budget=budget,
                             raw_torch=options.raw_torch)
        results.append(entry)
        ratio = mlx_torch_ratio(entry)
        say(f"  [{i + 1}/{len(cells)}] {cell.key}: "
            + (f"MLX/PyTorch {ratio:.2f}" if ratio is not None else f"errors {entry['errors']}")
            + f" ({time.perf_counter() - t0:.1f} s)")
    cases.clear()
    overhead: list[dict[str, Any]] = []
    if options.overhead and options.records is None and options.keys is None:
        for dtype in options.overhead_dtypes:
            overhead.extend(run_overhead(dtype, tiny=tiny, budget=budget))
        say(f"[bench] overhead pairs: {len(overhead)}")
    return {
        "schema": SCHEMA,
        "machine": machine.machine_info(backend, torch_device, tuning),
        "settings": {"device": options.device, "shapes": shapes, "budget": budget.as_dict(),
                     "raw_torch": options.raw_torch, "records": options.records,
                     "seconds": round(time.perf_counter() - started, 1)},
        "roofline": roofline,
        "results": results,
        "overhead": overhead,
    }

