"""The registry's benchmark cells and the ready-to-time callables of each.

A cell is one record's ``BenchCase`` at one dtype. :func:`prepare` converts its input for
both libraries (rounded to the dtype, derived arrays such as packed weights added,
evaluated, on the device) and returns one callable per *side*:

* ``mlx``: the ``mlx_impl`` layer through the record's ``call`` (what the suite tests);
* ``mlx_raw``: the fastest faithful raw MLX formulation (:data:`~conformance.bench.idiomatic.RAW_MLX`);
* ``torch``: the op a PyTorch user would call instead (the headline pairing);
* ``twin``: ``torch_reference`` in native precision (context only: it replays MLX's
  rounding points, and may be far slower than the idiomatic op).

Every callable finishes its work before returning: MLX sides end with ``mx.eval`` of every
output, PyTorch sides run under ``torch.inference_mode()`` and synchronize CUDA/MPS.

Shapes: ``full`` runs each case's ``make()``; ``cpu`` uses ``cpu_make()`` where a record
gives one; ``tiny`` runs the minimal example of the record's own Hypothesis strategy that
MLX runs (the smoke pass: proves the code path, not the speed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import torch
from hypothesis import HealthCheck, Phase, find, settings

import mlx_impl
import torch_reference
from conformance.bench import idiomatic, machine
from conformance.bench.costs import Cost, cost_of
from conformance.dtypes import mlx_to_numpy, to_mlx, to_torch
from conformance.execute import prepare_inputs
from conformance.record import BenchCase, Case, OpRecord

SHAPES = ("auto", "full", "cpu", "tiny")
SIDES = ("mlx", "mlx_raw", "torch", "twin")


@dataclass(frozen=True)
class Cell:
    """One benchmark: a record's bench case at one dtype."""

    record: OpRecord
    bench: BenchCase
    dtype: str

    @property
    def key(self) -> str:
        """``op/case/dtype``: the benchmark group and how reports name the cell."""
        return f"{self.record.name}/{self.bench.name}/{self.dtype}"

    def __repr__(self) -> str:
        # pytest-benchmark stores a parameter it cannot serialise as its repr, once per
        # benchmark: the whole record (functions, edge cases) made a baseline 8.7 MB.
        return f"Cell({self.key!r})"


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


def _outputs(out: Any) -> list[Any]:
    items = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in items if o is not None]


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
        return _tiny_case(cell.record.name, bench.mode, cell.dtype), "tiny smoke shape (minimal Hypothesis example)"
    if shapes == "cpu" and bench.cpu_make is not None:
        return bench.cpu_make(), f"{bench.note}; CPU shape: {bench.cpu_note or 'smaller'}"
    return bench.make(), bench.note


def torch_sync(torch_device: str) -> Callable[[], None]:
    """Wait for PyTorch's queued work on ``torch_device`` (a no-op on the CPU)."""
    if torch_device == "cuda":
        return torch.cuda.synchronize
    if torch_device == "mps":
        return torch.mps.synchronize
    return lambda: None


@dataclass
class Prepared:
    """Ready-to-time callables for one cell: ``sides[side] = (what it runs, callable)``."""

    sides: dict[str, tuple[str, Callable[[], None]]]
    shape: str
    cost: Cost
    reasons: dict[str, str] = field(default_factory=dict)
    """Why a side is missing or paired as it is (report text)."""


def prepare(record: OpRecord, case: Case, dtype: str, torch_device: str = "cpu") -> Prepared:
    """Convert ``case`` for both libraries and close every side's call over the inputs."""
    inputs = prepare_inputs(record, case, dtype)
    params = case.params
    mx_arrays = {k: to_mlx(v, dtype) for k, v in inputs.items()}
    mx.eval(list(mx_arrays.values()))
    t_arrays = {k: to_torch(v, dtype).to(torch_device) for k, v in inputs.items()}
    sync = torch_sync(torch_device)
    reasons: dict[str, str] = {}

    def mlx_side(call: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            mx.eval(_outputs(call()))
        return run

    def torch_side(call: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                call()
            sync()
        return run

    sides: dict[str, tuple[str, Callable[[], None]]] = {
        "mlx": (f"mlx_impl ({', '.join(record.api)})",
                mlx_side(lambda: record.call(mlx_impl, mx_arrays, params, {}))),
    }
    raw = idiomatic.RAW_MLX.get(record.name)
    if raw is not None:
        sides["mlx_raw"] = (raw.name, mlx_side(lambda: raw.call(mx_arrays, params)))
    else:
        reasons["mlx_raw"] = "no single raw MLX call: the layer is itself a composition of mx ops"
    pairing = idiomatic.TORCH_OPS.get(record.name)
    t_call_arrays: dict[str, Any] = dict(t_arrays)
    if record.name in idiomatic.QUANTIZED:
        dense = mx.dequantize(mx_arrays["wq"], mx_arrays["scales"], mx_arrays.get("qbiases"),
                              group_size=params["group_size"], bits=params["bits"], mode=params["mode"])
        t_call_arrays["dense_weight"] = to_torch(mlx_to_numpy(dense.astype(mx.float32)), dtype).to(torch_device)
        pairing, extra = idiomatic.quantized_pairing(inputs, t_call_arrays, params, torch_device)
        t_call_arrays.update(extra)
    if pairing is not None:
        chosen = pairing
        sides["torch"] = (chosen.name, torch_side(lambda: chosen.call(t_call_arrays, params)))
        if chosen.reason:
            reasons["torch"] = chosen.reason
    else:
        reasons["torch"] = idiomatic.NO_TORCH_OP.get(record.name, "no idiomatic PyTorch op listed")
    sides["twin"] = ("torch_reference (native precision)",
                     torch_side(lambda: record.call(torch_reference, t_arrays, params, {"precision": "native"})))
    out = _outputs(record.call(mlx_impl, mx_arrays, params, {}))
    mx.eval(out)
    cost = cost_of(record.name, inputs, params, dtype, sum(int(o.nbytes) for o in out))
    sync()
    shape = ", ".join(f"{k}{list(v.shape)}" for k, v in inputs.items())
    if params:
        shape += "; " + ", ".join(f"{k}={v!r}" for k, v in params.items())
    return Prepared(sides, shape, cost, reasons)


def setup(device: str) -> tuple[str, str, dict[str, Any]]:
    """Pick MLX's device, tune MLX's CPU back end, set PyTorch's threads; return
    (backend, PyTorch device, MLX CPU back end info)."""
    from mlx_impl import cpu_backend

    backend = machine.select_device(device)
    cores = machine.cpu_cores()
    torch.set_num_threads(cores)
    tuning = cpu_backend.tune_cpu(blas_threads=cores).as_dict()
    return backend, machine.torch_device_for(backend), tuning
