"""Token embedding: rows of a table picked by integer indices (Ollama ``nn.Embedding``).

The original is ``mx.take(weight, indices, axis=0)``. ``mx.take`` does NOT check bounds
(SEMANTICS.md, mlx #594): an index outside ``[-n, n)`` reads whatever memory lies there or
crashes the process, and a negative index inside ``[-n, 0)`` silently wraps. This layer
therefore never hands MLX an index it has not either checked or clamped, unless the caller
explicitly says the indices are trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import mlx.core as mx
import numpy as np

from mlx_impl._dtypes import INTEGER_DTYPES
from mlx_impl._errors import index_error, type_error, value_error
from mlx_impl._fast_path import FAST_PATH_ERRORS, PLAN, CheckedItem, FastPathModule, item_of
from mlx_impl.fast.norms import module_array

IndexPolicy = Literal["check", "clip", "trusted"]
INDEX_POLICIES: tuple[str, ...] = ("check", "clip", "trusted")


def _check_policy(policy: object) -> str:
    """``policy`` if it is one of :data:`INDEX_POLICIES`; ``TypeError``/``ValueError`` otherwise."""
    # Type first: `not in` on a non-str (a NumPy array, say) can raise its own error.
    if not isinstance(policy, str):
        raise type_error(
            "Embedding",
            f"index_policy must be a str, one of {INDEX_POLICIES}, but got {type(policy).__name__}.",
        )
    if policy not in INDEX_POLICIES:
        raise value_error("Embedding", f"index_policy must be one of {INDEX_POLICIES} but got {policy!r}.")
    return policy


class Embedding(FastPathModule):
    """Look up rows: ``y[...] = weight[indices[...]]`` via ``mx.take(weight, indices, axis=0)``.

    The contract: valid indices are ``[0, num_embeddings)``. Negative indices are NOT
    Python-style "from the end" indices here; they are out of range.

    Args:
        weight: ``[n, d]`` floating table.
        index_policy: what to do about indices outside ``[0, n)``:

            - ``"check"`` (default): the lookup reads clamped indices and an out-of-range
              flag is computed in the same graph; both are evaluated together (ONE device
              sync per call: the returned array is already evaluated, which is the price of
              memory safety), and if the flag is set ``IndexError`` names the first
              offending value (row-major order), its position and ``n``. Use ``"clip"`` or
              ``"trusted"`` to keep the lookup lazy.
            - ``"clip"``: clamp every index into ``[0, n - 1]`` on the device, without a
              sync (an out-of-range token silently becomes the first or last row).
            - ``"trusted"``: no check and no clamp; the caller GUARANTEES that every index is
              in ``[0, n)``. An out-of-range index is undefined behaviour: MLX reads
              arbitrary memory (wrong rows, or other data) or crashes the process.

    Shape:
        ``indices: [...]`` (any shape, including 0-D and empty) ``-> [..., d]``.

    Dtypes:
        Any integer index dtype (signed or unsigned, 8 to 64 bits); float and bool indices
        raise ``TypeError``. The output has ``weight``'s dtype and its rows bit-exactly.

    Raises:
        TypeError: non-array or non-floating ``weight``; ``index_policy`` not a ``str``;
            non-array or non-integer ``indices``.
        ValueError: ``weight`` not 2-D; unknown ``index_policy``.
        IndexError: (``"check"`` only) an index outside ``[0, n)``; (every policy) a
            non-empty ``indices`` with an empty table (``n == 0``), a shape-only check.

    Example:
        >>> import mlx.core as mx
        >>> table = mx.array([[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]])
        >>> Embedding(table)(mx.array([2, 0]))
        array([[2, 2.5],
               [0, 0.5]], dtype=float32)
    """

    index_policy = CheckedItem(_check_policy)
    """The index policy, a private item of the module's dict (see mlx_impl._fast_path),
    checked whenever it is set: an unknown one raises (it would otherwise reach the
    unchecked ``mx.take``); setting it drops the ``"check"`` plan (:data:`_CheckPlan`)."""

    def __init__(self, weight: mx.array, *, index_policy: IndexPolicy = "check") -> None:
        super().__init__()
        if not isinstance(weight, mx.array):
            raise type_error(
                "Embedding", f"weight must be an mx.array but got {type(weight).__name__}."
            )
        if weight.ndim != 2:
            raise value_error(
                "Embedding", f"weight must be 2-D [n, d] but got shape {weight.shape}."
            )
        if not mx.issubdtype(weight.dtype, mx.floating):
            raise type_error(
                "Embedding", f"weight must have a floating dtype but got {weight.dtype}."
            )
        self.weight = weight
        self.index_policy = index_policy

    @property
    def num_embeddings(self) -> int:
        """Number of rows ``n``; valid indices are ``[0, n)``."""
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        """Row width ``d``."""
        return int(self.weight.shape[1])

    def __call__(self, indices: mx.array) -> mx.array:
        """Return ``weight[indices]`` under ``self.index_policy``; see the class docstring."""
        # The happy paths, in one frame and without the module's attribute hook (see
        # mlx_impl._fast_path; each helper call, attribute or dtype read is ~1 % of
        # a decode lookup on the CPU). The table is an array, so one of the module's items
        # (Module.__setattr__); anything the fast paths do not take (a non-array, an
        # empty table, a float index dtype, the clip policy) goes to _checked_call, which
        # checks everything in the original order and raises the original errors.
        failed = False
        try:
            weight = self["weight"]
            # The plan of the last "check" lookup (see _CheckPlan) holds while the table and
            # the indices' dtype and shape are the same (decode repeats one shape): one
            # identity and two equality tests. A plan exists only under the "check" policy
            # (setting the policy drops it: FastPathModule), so a hit needs no policy read.
            plan = item_of(self, PLAN)
            if plan is None or plan[0] is not weight or not (indices.dtype == plan[1] and indices.shape == plan[2]):
                policy = self["_index_policy"]
                if policy == "trusted" and isinstance(indices, mx.array) and weight.size:  # see _checked_call
                    return mx.take(weight, indices, axis=0)
                plan = _check_plan(weight, indices) if policy == "check" else None
                if plan is not None:
                    self[PLAN] = plan
            if plan is not None:
                out, bad = plan[3](weight, indices, plan[4])
                mx.eval(out, bad)
                if not bad.item():
                    return out
                failed = True
        except FAST_PATH_ERRORS:
            weight = module_array(self, "weight")
        if failed:  # raised here, not in the try: an IndexError is one of FAST_PATH_ERRORS
            raise _out_of_range(indices, weight.shape[0])
        return self._checked_call(weight, indices)

    def _checked_call(self, weight: mx.array, indices: object) -> mx.array:
        """Every policy with every check written out (the first ones raise the errors)."""
        if not isinstance(indices, mx.array):
            raise type_error(
                "Embedding", f"indices must be an mx.array but got {type(indices).__name__}."
            )
        # mx.integer covers int8..int64 and uint8..uint64, not bool.
        if not mx.issubdtype(indices.dtype, mx.integer):
            raise type_error(
                "Embedding", f"indices must have an integer dtype but got {indices.dtype}."
            )
        n = int(weight.shape[0])
        if n == 0 and indices.size > 0:
            # Shapes only, so free under every policy: no row exists to check, clip or trust.
            raise index_error(
                "Embedding",
                f"cannot look up {indices.size} indices (shape {tuple(indices.shape)}) in an "
                f"empty table (num_embeddings=0, weight shape {tuple(weight.shape)}); "
                "only an empty indices array is allowed.",
            )
        policy = self.index_policy
        if policy == "check" and indices.size > 0:
            return _checked_take(weight, indices)
        if policy == "clip" and n > 0:
            # (n == 0 means `indices` is empty here: nothing to clamp, and a bound of -1
            # would not even convert to an unsigned index dtype.)
            indices = mx.clip(indices, 0, _high(indices.dtype, n))
        return mx.take(weight, indices, axis=0)


def _checked_take(weight: mx.array, indices: mx.array) -> mx.array:
    """``weight[indices]`` evaluated (``weight: [n, d]`` with ``n > 0``, ``indices:
    [...]`` non-empty, of an integer dtype -> ``[..., d]``), or ``IndexError`` if an index
    is outside ``[0, n)``.

    One evaluation of ONE compiled graph does it all: the gather reads CLAMPED indices (so
    a bad index never reaches the gather) and the out-of-range flag (an index the clamp
    changed) is computed beside it; ``mx.eval(out, bad)`` runs them together, and only
    then does the host look at the flag. Checking first and gathering after cost a second
    evaluation (1.9x ``mx.take`` at decode on the CPU); a compiled clamp + flag with the
    gather outside the compiled graph cost ~1 us more than the graph with the gather in
    it, and a shapeless trace ~1 us more than one traced for the indices' shape (both
    measured at decode against ``checked_raw`` in ``conformance/bench/overhead.py``), so
    the first :data:`_SHAPED_LIMIT` index shapes of a row width get a trace of their own
    (decode is one shape) and later ones share a shapeless trace (prefill lengths are
    unbounded). ``Embedding.__call__`` runs the same plan inline (its fast path), found
    through the layer's own :data:`_CheckPlan`.
    The gather copies rows, so the result is bit-identical to ``mx.take`` either way
    (tests/benchmarks/test_layers_at_best.py checks it, across table widths, heights, index
    dtypes and ranks). The returned array is already evaluated."""
    shape = weight.shape
    key = (shape, indices.dtype, indices.shape)
    gather, bound = _plan(key)
    out, bad = gather(weight, indices, bound)
    mx.eval(out, bad)
    if not bad.item():
        return out
    raise _out_of_range(indices, shape[0])


def _out_of_range(indices: mx.array, n: int) -> IndexError:
    """The error for the first index outside ``[0, n)`` in row-major order (found on the
    host: the failure path only)."""
    values = np.array(indices)
    wrong = (values < 0) | (values >= n)
    flat = int(np.argmax(wrong.reshape(-1)))
    position = tuple(int(i) for i in np.unravel_index(flat, values.shape))
    value = int(values.reshape(-1)[flat])
    return index_error(
        "Embedding",
        f"index {value} at position {position} is out of range [0, {n}) "
        f"for num_embeddings={n} (indices shape {tuple(values.shape)}).",
    )


_Gather = Callable[[mx.array, mx.array, mx.array], tuple[mx.array, mx.array]]
_Plan = tuple[_Gather, mx.array]
_PlanKey = tuple[tuple[int, ...], mx.Dtype, tuple[int, ...]]

_CheckPlan = tuple[mx.array, mx.Dtype, tuple[int, ...], _Gather, mx.array]
"""One ``Embedding``'s plan for its ``"check"`` fast path, for the table, index dtype and
index shape of its last lookup, kept as its :data:`mlx_impl._fast_path.PLAN`: the table it
was made for (identity is the test; a replaced table drops the plan, see
``FastPathModule``), the index dtype and shape, and :func:`_plan`'s compiled gather and
clamp bound."""

_CACHE_LIMIT = 64
"""Row widths kept in :data:`_GATHERS` (a model has a handful of tables)."""

_PLAN_LIMIT = 1024
"""Entries kept in :data:`_PLANS` (a table, an index dtype and an index shape each)."""

_SHAPED_LIMIT = 32
"""Index shapes per row width traced for their own shape; later shapes use the shapeless trace."""

_GATHERS: dict[int, tuple[_Gather, _Gather, set[tuple[int, ...]]]] = {}
"""Row width ``d`` -> its compiled checked gathers, shaped and shapeless, and the index
shapes given to the shaped one (:func:`_checked_gathers`)."""

_PLANS: dict[_PlanKey, _Plan] = {}
"""``(table shape, index dtype, index shape)`` -> (the compiled gather for it, the clamp
bound): one dict lookup per call finds both (:func:`_plan`)."""


def _plan(key: _PlanKey) -> _Plan:
    """The compiled checked gather and the clamp bound for ``key = ((n, d), index dtype,
    index shape)``, ``n > 0``, made once and kept in :data:`_PLANS`. The bound is the
    largest valid index ``n - 1`` as a scalar of the index dtype (see :func:`_high`), an
    INPUT of the graph, not a constant (see :func:`_checked_gathers`)."""
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    (n, d), dtype, index_shape = key
    gathers = _GATHERS.get(d)
    if gathers is None:
        gathers = _checked_gathers(d)
    shaped, shapeless, seen = gathers
    if index_shape not in seen and len(seen) < _SHAPED_LIMIT:
        seen.add(index_shape)
    gather = shaped if index_shape in seen else shapeless
    if len(_PLANS) >= _PLAN_LIMIT:
        _PLANS.clear()
    plan = _PLANS[key] = (gather, mx.array(_high(dtype, n), dtype=dtype))
    return plan


def _check_plan(weight: mx.array, indices: object) -> _CheckPlan | None:
    """The ``"check"`` fast path's plan for ``weight: [n, d]`` and ``indices``, or ``None``
    where the fast path does not apply (a non-array or non-integer ``indices``, empty
    ``indices``, an empty table: the checked path raises or answers those)."""
    if not isinstance(indices, mx.array) or indices.dtype not in INTEGER_DTYPES or not indices.size:
        return None
    shape = weight.shape
    if not shape[0]:
        return None
    key = (shape, indices.dtype, indices.shape)
    gather, bound = _plan(key)
    return weight, key[1], key[2], gather, bound


def _checked_gathers(d: int) -> tuple[_Gather, _Gather, set[tuple[int, ...]]]:
    """The compiled ``(weight [n, d], indices [...], high) -> (weight[clip(indices, 0,
    high)] [..., d], any index outside [0, high])`` for tables of row width ``d``, traced
    per index shape and shapeless, made once per ``d`` and kept in :data:`_GATHERS`.

    ONE pair of functions per row width, because a shapeless trace keeps the gather's slice
    size ``(1, d)`` of its first call (one function shared across widths answered a
    ``[5, 4]`` table with 12 columns). The bound ``high`` is an INPUT, not a constant of the
    graph: a constant is compiled into the fused clamp kernel, and MLX's CPU back end
    JIT-compiles a new kernel for each one (~0.5 s per table height, measured)."""

    def gather(weight: mx.array, indices: mx.array, high: mx.array) -> tuple[mx.array, mx.array]:
        safe = mx.clip(indices, 0, high)
        # Indexing, not mx.take: the same gather, and only clamped indices reach it (the
        # tests forbid mx.take on the checked path).
        return weight[safe], mx.any(safe != indices)

    if len(_GATHERS) >= _CACHE_LIMIT:
        _GATHERS.clear()
        _PLANS.clear()  # plans hold the functions dropped here
    gathers = _GATHERS[d] = (mx.compile(gather), mx.compile(gather, shapeless=True), set())
    return gathers


def _high(dtype: mx.Dtype, n: int) -> int:
    """The largest valid index ``n - 1``, capped at the index dtype's max: clamping or
    comparing with a bound the dtype cannot hold raises in MLX (int8 vs 31999), and such a
    bound is never reached anyway."""
    return min(n - 1, int(mx.iinfo(dtype).max))
