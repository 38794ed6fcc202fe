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

No number here is tuned: the defaults come from the argument above, and an op that
needs more states its reason next to its record.
"""

from __future__ import annotations

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
            dtype (u of that dtype) rather than accumulating in float32.
    """

    reason: str
    peer_factor: float = DEFAULT_PEER_FACTOR
    floor_ulps: float = DEFAULT_FLOOR_ULPS
    exact: bool = False
    accumulation_terms: Callable[[Mapping[str, Any], Mapping[str, Any]], int] | None = None
    accumulates_in_input_dtype: bool = False

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


def gamma(terms: int, unit_roundoff: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: the relative worst-case error bound of an
    n-term recursive sum in a format of unit roundoff ``u``."""
    nu = terms * unit_roundoff
    if nu >= 1:
        return float("inf")
    return nu / (1 - nu)
