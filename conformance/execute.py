"""Run one case of one record on MLX, the PyTorch peer and the float64 oracle, and judge it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
import torch

import mlx_impl
import torch_reference
from conformance.dtypes import dtype_name, mlx_to_numpy, round_to, to_mlx, to_torch, torch_to_numpy
from conformance.judge import Verdict, judge
from conformance.record import Call, Case, OpRecord
from conformance.tolerance import for_case, tf32_enabled


def backend_name() -> str:
    """``"cpu"``, ``"metal"`` or ``"cuda"``: where MLX's default device computes."""
    if mx.default_device() == mx.cpu:
        return "cpu"
    if mx.metal.is_available():
        return "metal"
    return "cuda"


def peer_device(backend: str) -> torch.device:
    """Where the PyTorch peer computes: the run's device (CUDA tensors in a CUDA run, at
    PyTorch's speed and with its GPU arithmetic). On Metal the peer stays on the CPU: MPS
    has no float64, which the reference uses for correctly rounded sqrt and division.
    The float64 oracle always computes on the CPU. ``CONFORMANCE_PEER_DEVICE=cpu`` keeps the
    peer on the CPU everywhere."""
    if os.environ.get("CONFORMANCE_PEER_DEVICE", "") == "cpu":
        return torch.device("cpu")
    if backend == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def configure_peer_precision(backend: str) -> None:
    """Run the peer's float32 matmuls at the precision MLX uses on this back end: TF32
    where MLX_ENABLE_TF32 is on (CUDA), full float32 otherwise."""
    if backend == "cuda" and torch.cuda.is_available():
        tf32 = tf32_enabled(backend)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


@dataclass
class CaseResult:
    """The verdicts of every output of one case, and the case itself for reproduction."""

    case: Case
    dtype: str
    verdicts: list[Verdict] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        """True when no output failed and nothing raised."""
        return not self.error and all(v.passed for v in self.verdicts)

    def message(self) -> str:
        """What failed, where and by how much."""
        lines = [f"dtype {self.dtype}; input {self.case.describe()}"]
        if self.error:
            lines.append(self.error)
        for i, v in enumerate(self.verdicts):
            if not v.passed:
                lines.append(f"output {i}: {v.message}")
        return "\n".join(lines)


def _as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def prepare_inputs(record: OpRecord, case: Case, dtype: str) -> dict[str, np.ndarray]:
    """Round float inputs to ``dtype`` (as exact float32) and add the record's derived arrays."""
    arrays = {
        k: round_to(v, dtype) if np.issubdtype(v.dtype, np.floating) else v
        for k, v in case.arrays.items()
    }
    if record.derive is not None:
        arrays.update(record.derive(arrays, case.params, dtype))
    return arrays


def run_case(
    record: OpRecord, case: Case, dtype: str, *, mlx_call: Call | None = None, backend: str = ""
) -> CaseResult:
    """Compute the case three ways and judge every output.

    ``mlx_call`` replaces the record's MLX side (meta-tests plant mutants through it).
    """
    result = CaseResult(case, dtype)
    inputs = prepare_inputs(record, case, dtype)
    params = case.params
    call = mlx_call or record.call
    backend = backend or backend_name()
    device = peer_device(backend)
    configure_peer_precision(backend)
    outcomes: dict[str, Any] = {}
    for side, run in (
        ("MLX", lambda: call(mlx_impl, {k: to_mlx(v, dtype) for k, v in inputs.items()}, params, {})),
        ("PyTorch", lambda: record.call(
            torch_reference, {k: to_torch(v, dtype).to(device) for k, v in inputs.items()}, params,
            {"precision": "native"})),
        ("oracle", lambda: record.call(
            torch_reference, {k: to_torch(v, dtype) for k, v in inputs.items()}, params,
            {"precision": "float64"})),
    ):
        try:
            out = _as_tuple(run())
            if side == "MLX":
                mx.eval(*out)
            outcomes[side] = out
        except Exception as exc:  # a raise on a valid input is itself a finding
            outcomes[side] = exc
    raised = {s: o for s, o in outcomes.items() if isinstance(o, Exception)}
    if raised:
        result.error = "; ".join(f"{s} raised {type(e).__name__}: {e}" for s, e in raised.items())
        return result
    mlx_out, peer_out, oracle_out = outcomes["MLX"], outcomes["PyTorch"], outcomes["oracle"]
    if not (len(mlx_out) == len(peer_out) == len(oracle_out)):
        result.error = (
            f"Output count differs: MLX {len(mlx_out)}, PyTorch {len(peer_out)}, "
            f"oracle {len(oracle_out)}."
        )
        return result
    tolerance = for_case(record.tolerance(backend, dtype), params)
    magnitude = None
    terms = None
    if tolerance.accumulation_terms is not None and record.magnitude is not None:
        wide = {k: v.astype(np.float64) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in inputs.items()}
        magnitude = record.magnitude(wide, params)
        terms = tolerance.accumulation_terms(inputs, params)
    for m, p, o in zip(mlx_out, peer_out, oracle_out, strict=True):
        if m is None or p is None or o is None:
            if not (m is None and p is None and o is None):
                result.error = "One library returned None where the others returned an array."
            continue
        result.verdicts.append(
            judge(
                mlx_to_numpy(m),
                torch_to_numpy(p),
                torch_to_numpy(o.to(torch.float64) if o.is_floating_point() else o),
                mlx_dtype=dtype_name(m),
                peer_dtype=dtype_name(p),
                tolerance=tolerance,
                magnitude=magnitude,
                accumulation_terms=terms,
            )
        )
    return result


def both_refuse(record: OpRecord, case: Case, dtype: str, raises: type[Exception]) -> list[str]:
    """Run a bad input on both libraries; return the problems (empty when both refused well).

    A good refusal raises ``raises`` (or a subclass) with a message that starts with the
    op's bracketed name, before any kernel runs.
    """
    problems = []
    device = peer_device(backend_name())  # the reference refuses what the run's back end lacks
    for lib, convert, kw in (
        (mlx_impl, to_mlx, {}),
        (torch_reference, lambda v, d: to_torch(v, d).to(device), {"precision": "native"}),
    ):
        arrays = {k: convert(v, dtype) for k, v in case.arrays.items()}
        try:
            out = record.call(lib, arrays, case.params, kw)
            if lib is mlx_impl:
                mx.eval(*_as_tuple(out))
        except raises as exc:
            if not str(exc).startswith("["):
                problems.append(f"{lib.__name__}: message lacks the bracketed op name: {exc}")
            continue
        except Exception as exc:
            problems.append(f"{lib.__name__}: raised {type(exc).__name__} ({exc}), expected {raises.__name__}")
            continue
        problems.append(f"{lib.__name__}: accepted the input, expected {raises.__name__}")
    return problems
