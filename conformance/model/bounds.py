"""Bounds for model-level conformance: one hidden state or logits row at one (step, layer).

The ops' rule, applied per point (``conformance/tolerance.py``): every element of MLX's
hidden state ``h_mlx`` at a layer satisfies

    |h_mlx - h_oracle| <= 2 * max_row |h_twin - h_oracle| + 2 ulp(max_row |h_oracle|)

where a row is one token's hidden vector (or logits), the twin is ``torch_reference`` in
the test dtype (the same rounding points as MLX) and the oracle the twin in float64 from
the same rounded weights and tokens.

How error grows with depth, and why the bound is relative to the twin at the same point.
A decoder is a residual map ``h_{l+1} = h_l + f_l(h_l)``. A side that rounds makes a local
error ``r_l`` (``|r_l| <= c_l u |h_l|``: c_l the ops' own constants, u the dtype's unit
roundoff) and carries the earlier error through the layer's Jacobian:
``e_{l+1} = (I + J_l) e_l + r_l``, so ``|e_L| <= sum_l prod_{k>l} ||I + J_k|| c_l u |h|``.
With ``||I + J_k|| ~ 1`` (a well-conditioned residual stream) the error grows LINEARLY
with depth; a layer that amplifies makes it grow geometrically from there on. The twin
computes the same function with the same rounding points, so its error at layer l
contains the same products of ``||I + J_k||``: measuring MLX against it at the same
(step, layer) needs no model of the Jacobians, and a constant factor 2 (plus 2 ulp for a
twin that happens to round exactly) holds at every depth. Decode steps grow the same way:
the cache holds each side's own keys and values, so step s carries the prefix's error, in
MLX and in the twin alike. The report shows both curves (relative error per layer, per
step) and the linear reference ``(l + 1) * e_1``, so a geometric blow-up is visible.

The external anchors (transformers float64, diffusers float64) are partly float32 inside
(RMSNorm statistics, RoPE tables), so they answer to the oracle like a float32
computation: ``|anchor - oracle| <= 2 * max_row |twin_float32 - oracle| + 2 float32 ulp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conformance.dtypes import FORMATS
from conformance.judge import Verdict, judge
from conformance.tolerance import Tolerance

MODEL_TOLERANCE = Tolerance(
    reason=(
        "Model point (one layer's hidden state or the logits at one decode step): MLX and "
        "the twin round at the same points, so the twin's error at the same (step, layer) "
        "already contains the depth and step growth; MLX may make 2x the twin's worst row "
        "error plus 2 ulp of the row's largest value (conformance/model/bounds.py)."
    ),
)


@dataclass(frozen=True)
class PointCheck:
    """One side's comparison at one point against the oracle.

    ``rel_err`` is ``max |side - oracle| / max |oracle|`` (the growth curves);
    ``peer_rel_err`` the twin's. ``bound_row`` is the bound per row ([rows]) for the
    tie rule of greedy tokens.
    """

    passed: bool
    kind: str
    message: str
    rel_err: float
    peer_rel_err: float
    max_ulp: float
    bound_row: np.ndarray


def _rel(err: np.ndarray, scale: float) -> float:
    finite = err[np.isfinite(err)]
    if finite.size == 0:
        return 0.0 if err.size == 0 else float("inf")
    return float(finite.max() / max(scale, np.finfo(np.float64).tiny))


def check_point(side: np.ndarray, peer: np.ndarray, oracle: np.ndarray, dtype: str) -> PointCheck:
    """Judge ``side`` against ``oracle`` with the twin ``peer`` as the reference.

    Shape: all ``[..., D]`` (rows are the last axis), float64 copies.
    ``dtype``: the test dtype whose ulp the floor uses (``float32`` for the anchors).
    """
    verdict: Verdict = judge(side, peer, oracle, mlx_dtype=dtype, peer_dtype=dtype, tolerance=MODEL_TOLERANCE)
    fmt = FORMATS[dtype]
    with np.errstate(invalid="ignore"):
        err_s = np.abs(side - oracle)
        err_p = np.abs(peer - oracle)
    scale = float(np.nanmax(np.abs(np.where(np.isfinite(oracle), oracle, 0.0)))) if oracle.size else 0.0
    rows = oracle.reshape(-1, oracle.shape[-1]) if oracle.ndim else oracle.reshape(1, 1)
    peer_rows = np.where(np.isfinite(err_p), err_p, 0.0).reshape(rows.shape)
    bound_row = 2.0 * peer_rows.max(axis=1) + 2.0 * fmt.ulp(np.abs(np.nan_to_num(rows)).max(axis=1))
    return PointCheck(verdict.passed, verdict.kind, verdict.message, _rel(err_s, scale), _rel(err_p, scale),
                      verdict.mlx_error.max_ulp, bound_row)


def greedy_flip_is_tie(oracle_row: np.ndarray, side_choice: int, bound: float) -> bool:
    """Whether the side's argmax ``side_choice`` differing from the oracle's is a tie.

    Each logit of the side may be ``bound`` from the oracle's, so a flip is admissible
    exactly when the oracle's margin between its own choice and the side's is at most
    ``2 * bound`` (both logits moved toward each other). ``oracle_row: [vocab]``.
    """
    best = int(np.argmax(oracle_row))
    return bool(oracle_row[best] - oracle_row[side_choice] <= 2.0 * bound)
