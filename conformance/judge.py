"""Judge one output: MLX against the PyTorch peer and the float64 oracle.

Returns a :class:`Verdict` that says whether the output conforms and, when it does not,
what differs, where and by how much, in words a person can act on.

The float64 oracle arbitrates: when MLX fails the comparison with the peer but is itself
closer to the oracle than the peer (within the oracle-only bound: ``floor_ulps`` output ulps
at the row's largest magnitude plus the derived accumulation bound, with non-finite values
exactly where the oracle has them, and the peer measurably worse), the verdict is
``"more_accurate"``: it passes and the report shows "MLX more accurate". For ops that must be
bit-identical, MLX is more accurate where every differing element is the correctly rounded
oracle value (within half an output ulp) and no farther from the oracle than the peer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.dtypes import FORMATS
from conformance.tolerance import Tolerance, accumulation_factor


@dataclass(frozen=True)
class ErrorStats:
    """Worst errors of one library against the oracle (finite positions only)."""

    max_abs: float
    max_rel: float
    max_ulp: float

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "max_ulp": self.max_ulp}


NO_ERROR = ErrorStats(0.0, 0.0, 0.0)


@dataclass
class Verdict:
    """The outcome of comparing one output.

    ``kind`` is ``"ok"``, ``"more_accurate"`` (passed: MLX is closer to the float64 oracle
    than the peer), ``"shape"``, ``"dtype"``, ``"nonfinite"`` or ``"value"``.
    ``ulp_errors`` holds MLX's per-element errors in output ulps at the row's largest
    magnitude (for the report's distribution plots).
    """

    passed: bool
    kind: str
    message: str
    mlx_error: ErrorStats = NO_ERROR
    peer_error: ErrorStats = NO_ERROR
    ulp_errors: np.ndarray = field(default_factory=lambda: np.zeros(0))
    worst: dict[str, Any] = field(default_factory=dict)


def _fmt_index(flat: int, shape: tuple[int, ...]) -> str:
    return str(tuple(int(i) for i in np.unravel_index(flat, shape))) if shape else "()"


def _stats(err: np.ndarray, oracle: np.ndarray, ulp: np.ndarray) -> ErrorStats:
    if err.size == 0:
        return NO_ERROR
    rel = err / np.maximum(np.abs(oracle), np.finfo(np.float64).tiny)
    return ErrorStats(float(err.max()), float(rel.max()), float((err / ulp).max()))


def judge(
    mlx_out: np.ndarray,
    peer_out: np.ndarray,
    oracle_out: np.ndarray,
    *,
    mlx_dtype: str,
    peer_dtype: str,
    tolerance: Tolerance,
    magnitude: np.ndarray | None = None,
    accumulation_terms: int | None = None,
) -> Verdict:
    """Compare one output array.

    Args:
        mlx_out, peer_out: the results as exact NumPy copies (half precision widened).
        oracle_out: the float64 oracle from the same rounded inputs.
        mlx_dtype, peer_dtype: the libraries' own output dtype names.
        tolerance: the op's policy (:mod:`conformance.tolerance`).
        magnitude: ``|x| @ |w|.T``-style magnitudes for the accumulation bound.
        accumulation_terms: K for the accumulation bound.

    Shape: all three arrays have the same shape (anything else is a ``"shape"`` verdict).
    """
    if not (mlx_out.shape == peer_out.shape == oracle_out.shape):
        return Verdict(
            False,
            "shape",
            f"Shape mismatch: MLX {mlx_out.shape}, PyTorch {peer_out.shape}, "
            f"oracle {oracle_out.shape}.",
        )
    if mlx_dtype != peer_dtype:
        return Verdict(False, "dtype", f"Dtype mismatch: MLX {mlx_dtype}, PyTorch {peer_dtype}.")
    if tolerance.exact or mlx_dtype not in FORMATS:
        verdict = _judge_exact(mlx_out, peer_out)
        if not verdict.passed and mlx_dtype in FORMATS:
            return _exact_more_accurate(mlx_out, peer_out, oracle_out, mlx_dtype) or verdict
        return verdict
    return _judge_rounded(
        mlx_out.astype(np.float64),
        peer_out.astype(np.float64),
        oracle_out.astype(np.float64),
        mlx_dtype,
        tolerance,
        magnitude,
        accumulation_terms,
    )


def _judge_exact(mlx_out: np.ndarray, peer_out: np.ndarray) -> Verdict:
    both_nan = np.zeros(mlx_out.shape, dtype=bool)
    if np.issubdtype(mlx_out.dtype, np.floating):
        both_nan = np.isnan(mlx_out) & np.isnan(peer_out)
        # Bit identity: +0 and -0 differ, so compare signs of zeros too.
        differs = ~both_nan & (
            (mlx_out != peer_out) | (np.signbit(mlx_out) != np.signbit(peer_out))
        )
    else:
        differs = mlx_out != peer_out
    count = int(differs.sum())
    if count == 0:
        return Verdict(True, "ok", "bit-identical")
    first = int(np.flatnonzero(differs)[0])
    where = _fmt_index(first, mlx_out.shape)
    return Verdict(
        False,
        "value",
        f"Not bit-identical: {count} / {mlx_out.size} elements differ; first at index {where}: "
        f"MLX {mlx_out.flat[first]!r}, PyTorch {peer_out.flat[first]!r}.",
        worst={
            "index": where,
            "mlx": float(mlx_out.flat[first]),
            "peer": float(peer_out.flat[first]),
        },
    )


def _exact_more_accurate(
    mlx_out: np.ndarray, peer_out: np.ndarray, oracle_out: np.ndarray, dtype: str
) -> Verdict | None:
    """For a must-be-identical float op: MLX differs from the peer only where MLX is the
    correctly rounded oracle value and the peer is not closer (e.g. one rounding of
    ``q * scale + bias`` where the peer reproduces the CPU back end's two)."""
    m, p, o = (a.astype(np.float64) for a in (mlx_out, peer_out, oracle_out))
    if m.shape != o.shape:
        return None
    with np.errstate(invalid="ignore"):
        differs = ~(np.isnan(m) & np.isnan(p)) & ((m != p) | (np.signbit(m) != np.signbit(p)))
        finite = np.isfinite(o) & np.isfinite(m)
        err_m, err_p = np.abs(m - o), np.abs(p - o)
    half_ulp = 0.5 * FORMATS[dtype].ulp(np.where(np.isfinite(o), o, 0.0))
    ok = finite & (err_m <= half_ulp) & (err_m <= np.where(np.isfinite(p), err_p, np.inf))
    if not differs.any() or not ok[differs].all() or not (err_m[differs] < err_p[differs]).any():
        return None
    count = int(differs.sum())
    return Verdict(
        True, "more_accurate",
        f"MLX more accurate: {count} / {m.size} elements differ from the peer, each one the "
        f"correctly rounded float64 oracle value where the peer's is farther.",
    )


def _more_accurate(
    m: np.ndarray, p: np.ndarray, o: np.ndarray, fmt: Any, tol: Tolerance,
    magnitude: np.ndarray | None, terms: int | None, rows_shape: tuple[int, int],
) -> Verdict | None:
    """MLX within the oracle-only bound and the peer measurably worse (see module doc)."""
    max_finite = fmt.max_finite
    may_overflow = np.abs(np.nan_to_num(o, nan=0.0)) >= max_finite
    if magnitude is not None:
        may_overflow |= np.abs(magnitude) >= FORMATS["float32"].max_finite
    # MLX's non-finite values must sit where the oracle's are (or where overflow is admissible).
    nan_bad = (np.isnan(m) != np.isnan(o)) & ~may_overflow
    inf_bad = np.isinf(m) & ~(np.isinf(o) & (m == o)) & ~may_overflow
    if (nan_bad | inf_bad).any():
        return None
    finite = np.isfinite(m) & np.isfinite(o)
    with np.errstate(invalid="ignore"):
        err_m = np.where(finite, np.abs(m - o), 0.0)
        err_p = np.where(finite, np.abs(p - o), 0.0)
    o_rows = np.where(finite, np.abs(o), 0.0).reshape(rows_shape)
    row_scale = fmt.ulp(o_rows.max(axis=1, keepdims=True))
    bound = np.broadcast_to(tol.floor_ulps * row_scale, o_rows.shape).reshape(o.shape)
    if magnitude is not None and terms is not None:
        u = fmt.unit_roundoff if tol.accumulates_in_input_dtype else FORMATS["float32"].unit_roundoff
        bound = np.maximum(bound, accumulation_factor(terms, u, tol.input_unit_roundoff) * np.abs(magnitude)
                           + tol.floor_ulps * fmt.ulp(np.where(finite, o, 0.0)))
    if (err_m > bound).any():
        return None
    peer_nonfinite = (~np.isfinite(p) & np.isfinite(o) & ~may_overflow).sum()
    peer_worse = bool(peer_nonfinite) or float(np.nan_to_num(err_p, nan=np.inf).max()) > float(err_m.max())
    if not peer_worse:
        return None
    return Verdict(
        True, "more_accurate",
        f"MLX more accurate: within {tol.floor_ulps:g} ulp (or the derived accumulation bound) "
        f"of the float64 oracle everywhere, worst {float(err_m.max()):.3g}; the peer is worse "
        f"(worst finite error {float(np.nan_to_num(err_p, nan=0.0).max()):.3g}, "
        f"{int(peer_nonfinite)} non-finite where the oracle is finite).",
    )


def _judge_nonfinite(
    m: np.ndarray, p: np.ndarray, o: np.ndarray, max_finite: float, magnitude: np.ndarray | None
) -> Verdict | None:
    """NaN positions must match, and so must infinities and their signs, except where an
    overflow is legitimate: where the exact result, or (for sums) the magnitude of the
    terms, reaches the dtype's largest finite value, whether and how a partial sum
    overflows depends on the summation order, so either library may be non-finite there
    (a finite answer is then judged against the oracle)."""
    may_overflow = np.abs(np.nan_to_num(o, nan=0.0)) >= max_finite
    if magnitude is not None:
        # Partial sums live in a float32 accumulator: only terms that can overflow float32
        # make the outcome order-dependent. A kernel that overflows a narrower accumulator
        # where the result is finite is an expected divergence, not an admissible overflow.
        may_overflow |= np.abs(magnitude) >= FORMATS["float32"].max_finite
    # Where an overflow is order-dependent, so is its outcome: a partial sum may overflow
    # either way before the rest arrives, and inf - inf is NaN. There any non-finite value
    # is admissible (finite values are still judged against the oracle); elsewhere NaN and
    # infinity positions, and the infinities' signs, must match exactly.
    nan_mismatch = np.isnan(m) != np.isnan(p)
    inf_mismatch = (np.isinf(m) | np.isinf(p)) & (m != p) & ~(np.isnan(m) | np.isnan(p))
    bad = (nan_mismatch | inf_mismatch) & ~(may_overflow & ~np.isnan(o))
    if not bad.any():
        return None
    first = int(np.flatnonzero(bad)[0])
    return Verdict(
        False,
        "nonfinite",
        f"Non-finite values differ at {int(bad.sum())} / {m.size} elements; first at index "
        f"{_fmt_index(first, m.shape)}: MLX {m.flat[first]!r}, PyTorch {p.flat[first]!r}, "
        f"float64 oracle {o.flat[first]!r}.",
        worst={"index": _fmt_index(first, m.shape), "mlx": float(m.flat[first]),
               "peer": float(p.flat[first]), "oracle": float(o.flat[first])},
    )


def _judge_rounded(
    m: np.ndarray,
    p: np.ndarray,
    o: np.ndarray,
    dtype: str,
    tol: Tolerance,
    magnitude: np.ndarray | None,
    terms: int | None,
) -> Verdict:
    fmt = FORMATS[dtype]
    rows_shape = (-1, o.shape[-1]) if o.ndim >= 1 and o.size else (1, max(o.size, 1))
    mismatch = _judge_nonfinite(m, p, o, fmt.max_finite, magnitude)
    if mismatch is not None:
        return _more_accurate(m, p, o, fmt, tol, magnitude, terms, rows_shape) or mismatch
    # Judge every position where MLX and the oracle are finite; where only the peer
    # overflowed (admissibly), MLX still answers to the oracle.
    finite = np.isfinite(m) & np.isfinite(o)
    with np.errstate(invalid="ignore"):  # inf - inf where both overflowed: excluded below
        err_m = np.where(finite, np.abs(m - o), 0.0)
        err_p = np.where(finite & np.isfinite(p), np.abs(p - o), 0.0)
    ulp_at = fmt.ulp(np.where(finite, o, 0.0))

    o_rows = np.where(finite, np.abs(o), 0.0).reshape(rows_shape)
    peer_row_max = err_p.reshape(rows_shape).max(axis=1, keepdims=True)
    row_scale = fmt.ulp(o_rows.max(axis=1, keepdims=True))
    bound = tol.peer_factor * peer_row_max + tol.floor_ulps * row_scale
    bound = np.broadcast_to(bound, o_rows.shape).reshape(o.shape)
    if magnitude is not None and terms is not None:
        u = fmt.unit_roundoff if tol.accumulates_in_input_dtype else FORMATS["float32"].unit_roundoff
        accumulated = accumulation_factor(terms, u, tol.input_unit_roundoff) * np.abs(magnitude)
        bound = np.maximum(bound, accumulated + tol.floor_ulps * ulp_at)

    # Errors in ulps are counted at the row's largest magnitude (the scale the bound uses):
    # counted at each element's own magnitude, a near-zero result of a cancelling sum would
    # report millions of "ulps" for an error no float32 computation can avoid.
    row_ulp = np.broadcast_to(row_scale, o_rows.shape).reshape(o.shape)
    mlx_stats = _stats(err_m[finite], o[finite], row_ulp[finite])
    peer_stats = _stats(err_p[finite], o[finite], row_ulp[finite])
    ulp_errors = (err_m / row_ulp)[finite]
    violations = err_m > bound
    if not violations.any():
        return Verdict(True, "ok", "within tolerance", mlx_stats, peer_stats, ulp_errors)
    better = _more_accurate(m, p, o, fmt, tol, magnitude, terms, rows_shape)
    if better is not None:
        better.mlx_error, better.peer_error, better.ulp_errors = mlx_stats, peer_stats, ulp_errors
        return better

    excess = np.where(violations, err_m / np.maximum(bound, np.finfo(np.float64).tiny), 0.0)
    worst = int(np.argmax(excess))
    where = _fmt_index(worst, o.shape)
    count = int(violations.sum())
    message = (
        f"Mismatched elements: {count} / {o.size} ({100.0 * count / o.size:.2g}%).\n"
        f"Worst at index {where}: MLX {m.flat[worst]!r}, PyTorch {p.flat[worst]!r}, "
        f"float64 oracle {o.flat[worst]!r}.\n"
        f"|MLX - oracle| = {err_m.flat[worst]:.6g} ({err_m.flat[worst] / row_ulp.flat[worst]:.3g} "
        f"{dtype} ulp of the row's largest value) > bound {bound.flat[worst]:.6g} "
        f"(= {tol.peer_factor:g} x PyTorch's worst row error + {tol.floor_ulps:g} ulp"
        f"{', or the gamma_K summation bound' if terms is not None else ''}"
        f"{' with TF32 inputs' if tol.input_unit_roundoff else ''}).\n"
        f"MLX worst: abs {mlx_stats.max_abs:.3g}, rel {mlx_stats.max_rel:.3g}, "
        f"{mlx_stats.max_ulp:.3g} ulp; PyTorch worst: abs {peer_stats.max_abs:.3g}, "
        f"rel {peer_stats.max_rel:.3g}, {peer_stats.max_ulp:.3g} ulp.\n"
        f"Tolerance reason: {tol.reason}"
    )
    return Verdict(
        False,
        "value",
        message,
        mlx_stats,
        peer_stats,
        ulp_errors,
        worst={
            "index": where,
            "mlx": float(m.flat[worst]),
            "peer": float(p.flat[worst]),
            "oracle": float(o.flat[worst]),
            "bound": float(bound.flat[worst]),
        },
    )
