"""The tolerance policy: when is MLX's answer close enough?

Agreement is judged against a float64 oracle computed by ``torch_reference`` from the SAME
already-rounded inputs, never against the PyTorch peer alone:

* ``err_mlx = |mlx - oracle|`` and ``err_peer = |peer - oracle|``, where the peer is
  ``torch_reference`` computing in the test dtype (what a PyTorch user gets).
* A row (the last axis, where norms, softmax and dot products live) passes when every
  element satisfies ``err_mlx <= peer_factor * max(err_peer over the row)
  + floor_ulps * ulp(max |oracle| over the row)``: MLX may be at most a small stated
  factor worse than PyTorch, and a few output ulps of slack cover a peer that happens to
  round exactly. The ulp is the output dtype's spacing at the row's largest magnitude, so
  cancellation inside a row is not punished and a bug confined to small rows is not hidden
  by large ones elsewhere.
* ``exact`` ops (quantize, gathers, masks) must be bit-identical to the peer.
* ``accumulation_terms``: ops that accumulate K-term dot products (matmuls) may sum in
  any order; BLAS libraries differ (a sequential sum in MLX's reference BLAS, blocked SIMD
  sums in PyTorch's), so one library can be several times more accurate than the other on
  a given element. The bound then also admits the classic worst-case error of a K-term
  sum, ``gamma_K * (|x| @ |w|.T)`` with ``gamma_K = K u / (1 - K u)`` (Higham, *Accuracy
  and Stability of Numerical Algorithms*, §3.1), where u is float32's unit roundoff, or
  the input dtype's for a kernel known to accumulate in it (MLX's x86 CPU quantized
  matmul in float16/bfloat16, SEMANTICS.md). That is a proof, not a fit.

* ``input_unit_roundoff``: a kernel that rounds its float32 INPUTS to a narrower format
  before multiplying (MLX's float32 matmuls at TF32 precision, ``MLX_ENABLE_TF32=1``, the
  default on CUDA and on M5-class Apple GPUs: inputs rounded to nearest with a 10-bit
  mantissa, unit roundoff ``u_in = 2^-11``, products exact in float32, then a float32 sum).
  Each product then carries two input roundings, ``|x^ w^ - x w| <= (2 u_in + u_in^2) |x w|``,
  and the sum adds float32's gamma_K, so the bound is
  ``((1 + u_in)^2 (1 + gamma_K) - 1) * (|x| @ |w|.T)`` — derived from the format, not fitted.
  Measured on an H200 (mlx 0.32.4): max |MLX - exact| / (|x| @ |w|.T) = 6.0e-5 against this
  bound's 9.8e-4, and MLX equals a round-to-nearest TF32 emulation to 5.7e-8 (truncation
  would be 1.6e-4 off), so the inputs are rounded to nearest (reports/conformance/cuda-h200-triage/TRIAGE.md).

No number here is tuned: the defaults come from the argument above, and an op that
needs more states its reason next to its record.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_PEER_FACTOR = 2.0
DEFAULT_FLOOR_ULPS = 2.0


@dataclass(frozen=True)
class Tolerance:
    """One op's tolerance and the numerical reason for it.

    Args:
        reason: why these numbers; printed in failures and in the report.
        peer_factor: how many times PyTorch's own error MLX may make.
        floor_ulps: slack in output-dtype ulps at the row's largest magnitude.
        exact: the output must be bit-identical (discrete results).
        accumulation_terms: given a case's arrays and params, the number of terms K
            accumulated per output; enables the gamma_K bound (needs the record's
            ``magnitude`` function).
        accumulates_in_input_dtype: the kernel rounds every partial sum to the input
            dtype (u of that dtype) rather than accumulating in float32; or a function of
            the case's params saying so (a record whose modes differ); see :func:`for_case`.
    """

    reason: str
    peer_factor: float = DEFAULT_PEER_FACTOR
    floor_ulps: float = DEFAULT_FLOOR_ULPS
    exact: bool = False
    accumulation_terms: Callable[[Mapping[str, Any], Mapping[str, Any]], int] | None = None
    accumulates_in_input_dtype: bool | Callable[[Mapping[str, Any]], bool] = False
    input_unit_roundoff: float = 0.0
    """Unit roundoff of a narrower format the kernel rounds its inputs to before the
    products (TF32: ``2^-11``); 0 when the inputs are used as they are."""

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("[Tolerance] every tolerance states its reason.")
        if self.peer_factor < 1 or self.floor_ulps < 0:
            raise ValueError(
                f"[Tolerance] peer_factor must be >= 1 and floor_ulps >= 0 but got "
                f"{self.peer_factor} and {self.floor_ulps}."
            )


EXACT = Tolerance(
    reason="Discrete or data-movement op: no rounding happens, so any difference is a bug.",
    exact=True,
)

ROUNDED = Tolerance(
    reason=(
        "Both libraries round the same float64-exact quantity; MLX may differ from the "
        f"oracle by at most {DEFAULT_PEER_FACTOR:g}x PyTorch's error plus "
        f"{DEFAULT_FLOOR_ULPS:g} output ulps (accumulation order may differ)."
    ),
)


def for_case(tolerance: Tolerance, params: Mapping[str, Any]) -> Tolerance:
    """``tolerance`` with its per-case choices resolved for one case's ``params``."""
    if callable(tolerance.accumulates_in_input_dtype):
        return dataclasses.replace(
            tolerance, accumulates_in_input_dtype=bool(tolerance.accumulates_in_input_dtype(params))
        )
    return tolerance


TF32_UNIT_ROUNDOFF = 2.0**-11
"""TF32 keeps float32's 8-bit exponent and 10 mantissa bits: rounding to nearest has a
relative error of at most 2^-11."""

TF32_ENV = "MLX_ENABLE_TF32"
TF32_BACKENDS: tuple[str, ...] = ("cuda", "metal")
"""Back ends whose float32 matmuls MLX runs at TF32 when ``MLX_ENABLE_TF32`` is on: CUDA
(default on) and Metal on M5-class Apple GPUs (same variable). MLX's CPU back end never does."""


def tf32_enabled(backend: str, env: Mapping[str, str] | None = None) -> bool:
    """Whether MLX's float32 matmuls run at TF32 precision on ``backend``: the
    ``MLX_ENABLE_TF32`` variable (``"0"`` turns it off; unset means MLX's default, on)
    on CUDA and Metal; never on the CPU. On a Metal GPU older than M5 the variable has no
    effect and the bound is merely looser than needed there (it is still a bound)."""
    if backend not in TF32_BACKENDS:
        return False
    value = (os.environ if env is None else env).get(TF32_ENV, "1").strip()
    return value not in ("0", "false", "False", "")


def with_matmul_precision(tolerance: Tolerance, backend: str, dtype: str) -> Tolerance:
    """``tolerance`` for a float32 matmul-based op as MLX runs it on ``backend``: under TF32
    the accumulation bound also admits the inputs' rounding to a 10-bit mantissa (see the
    module docstring); unchanged for other dtypes, back ends, or with TF32 off."""
    if dtype != "float32" or not tf32_enabled(backend) or tolerance.accumulation_terms is None:
        return tolerance
    return dataclasses.replace(
        tolerance,
        input_unit_roundoff=TF32_UNIT_ROUNDOFF,
        reason=tolerance.reason + (
            f" With {TF32_ENV} on ({backend}), MLX rounds the float32 inputs to TF32 (10-bit "
            "mantissa, u_in = 2^-11) before the products: the bound becomes "
            "((1 + u_in)^2 (1 + gamma_K) - 1) * magnitude."
        ),
    )


def accumulation_factor(terms: int, unit_roundoff: float, input_unit_roundoff: float = 0.0) -> float:
    """The relative worst-case factor of a K-term dot product whose inputs are first rounded
    with unit roundoff ``input_unit_roundoff``: ``(1 + u_in)^2 (1 + gamma_K) - 1``."""
    g = gamma(terms, unit_roundoff)
    return (1.0 + input_unit_roundoff) ** 2 * (1.0 + g) - 1.0


def gamma(terms: int, unit_roundoff: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative worst-case error bound of an
    n-term recursive sum in a format of unit roundoff ``u``."""
    nu = terms * unit_roundoff
    if nu >= 1:
        return float("inf")
    return nu / (1 - nu)
