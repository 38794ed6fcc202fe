"""Token embedding: PyTorch twin of ``mlx_impl.nn.embedding``.

The same contract and index policies as the MLX layer, with the same errors raised by this
code itself (never by ``F.embedding``'s own message): valid indices are ``[0, n)``.
"""

from __future__ import annotations

from typing import Literal

import torch

from torch_reference._errors import index_error, type_error, value_error
from torch_reference._precision import check_precision, to_working

IndexPolicy = Literal["check", "clip", "trusted"]
INDEX_POLICIES: tuple[str, ...] = ("check", "clip", "trusted")

# The integer dtypes MLX has (bool excluded). torch's uint16/32/64 lack most CPU kernels
# (min, clamp, comparisons), so indices are widened to int64 before any arithmetic.
INTEGER_DTYPES = (
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint8,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Embedding(torch.nn.Module):
    """Look up rows: ``y[...] = weight[indices[...]]`` (MLX: ``mx.take(weight, indices, 0)``).

    The contract: valid indices are ``[0, num_embeddings)``; negative indices are out of
    range (no Python-style wrap-around).

    Args:
        weight: ``[n, d]`` floating table (a frozen ``Parameter``).
        index_policy: ``"check"`` (default): every index is verified to lie in ``[0, n)``
            before the lookup (a min/max reduction read on the host, i.e. a sync); otherwise
            ``IndexError`` naming the first offending value (row-major order), its position
            and ``n``. ``"clip"``: indices are clamped into ``[0, n - 1]``. ``"trusted"``: no
            check; the caller guarantees the range. (Where MLX would read arbitrary memory,
            this twin's ``index_select`` raises PyTorch's own ``IndexError``; that difference
            is outside the contract.)

    Shape:
        ``indices: [...]`` (any shape, including 0-D and empty) ``-> [..., d]``.

    Dtypes:
        Any integer index dtype; float and bool indices raise ``TypeError``. The output has
        ``weight``'s dtype (``precision="native"``) and its rows bit-exactly, or float64
        (``precision="float64"``, the rows widened exactly).

    Raises:
        TypeError: non-tensor or non-floating ``weight``; ``index_policy`` not a ``str``;
            non-tensor or non-integer ``indices``.
        ValueError: ``weight`` not 2-D; unknown ``index_policy`` or ``precision``.
        IndexError: (``"check"`` only) an index outside ``[0, n)``; (every policy) a
            non-empty ``indices`` with an empty table (``n == 0``), a shape-only check.

    Example:
        >>> import torch
        >>> table = torch.tensor([[0.0, 0.5], [1.0, 1.5], [2.0, 2.5]])
        >>> Embedding(table)(torch.tensor([2, 0]))
        tensor([[2.0000, 2.5000],
                [0.0000, 0.5000]])
    """

    def __init__(self, weight: torch.Tensor, *, index_policy: IndexPolicy = "check") -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor):
            raise type_error(
                "Embedding", f"weight must be a torch.Tensor but got {type(weight).__name__}."
            )
        if weight.ndim != 2:
            raise value_error(
                "Embedding", f"weight must be 2-D [n, d] but got shape {tuple(weight.shape)}."
            )
        if weight.dtype not in FLOATING_DTYPES:
            raise type_error(
                "Embedding", f"weight must have a floating dtype but got {weight.dtype}."
            )
        # Type first: `not in` on a non-str (a NumPy array, say) can raise its own error.
        if not isinstance(index_policy, str):
            raise type_error(
                "Embedding",
                f"index_policy must be a str, one of {INDEX_POLICIES}, but got "
                f"{type(index_policy).__name__}.",
            )
        if index_policy not in INDEX_POLICIES:
            raise value_error(
                "Embedding",
                f"index_policy must be one of {INDEX_POLICIES} but got {index_policy!r}.",
            )
        self.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
        self.index_policy = index_policy

    @property
    def num_embeddings(self) -> int:
        """Number of rows ``n``; valid indices are ``[0, n)``."""
        return int(self.weight.shape[0])

    @property
    def embedding_dim(self) -> int:
        """Row width ``d``."""
        return int(self.weight.shape[1])

    def forward(self, indices: torch.Tensor, *, precision: str = "native") -> torch.Tensor:
        """Return ``weight[indices]`` under ``self.index_policy``; see the class docstring."""
        check_precision("Embedding", precision)
        if not isinstance(indices, torch.Tensor):
            raise type_error(
                "Embedding", f"indices must be a torch.Tensor but got {type(indices).__name__}."
            )
        if indices.dtype not in INTEGER_DTYPES:
            raise type_error(
                "Embedding", f"indices must have an integer dtype but got {indices.dtype}."
            )
        n = self.num_embeddings
        if n == 0 and indices.numel() > 0:
            # Shapes only, so free under every policy: no row exists to check, clip or trust.
            raise index_error(
                "Embedding",
                f"cannot look up {indices.numel()} indices (shape {tuple(indices.shape)}) in an "
                f"empty table (num_embeddings=0, weight shape {tuple(self.weight.shape)}); "
                "only an empty indices array is allowed.",
            )
        idx = _as_int64(indices)
        if self.index_policy == "check":
            _check_in_range(indices, idx, n)
        elif self.index_policy == "clip" and n > 0:
            # n == 0 means `indices` is empty here: nothing to clamp (as in mlx_impl).
            clipped = idx.clamp(0, n - 1)
            if indices.dtype == torch.uint64:
                # uint64 values >= 2**63 wrapped to negatives in _as_int64; they are huge, so
                # they clamp to the LAST row, as MLX's unsigned clip does.
                clipped = torch.where(idx < 0, torch.full_like(idx, n - 1), clipped)
            idx = clipped
        # Rows first, then widened: widening is exact, so this is the same float64 value as
        # widening the table, without a transient float64 copy of all of it (2.1 GB for a
        # 128k-row, width-2048 table, at every decode step of the oracle).
        rows = to_working(self.weight.index_select(0, idx.reshape(-1)), precision)
        assert rows is not None
        return rows.reshape(*indices.shape, self.embedding_dim)


def _as_int64(indices: torch.Tensor) -> torch.Tensor:
    """Widen any integer index tensor to int64 (uint64 >= 2**63 wraps to negative)."""
    return indices.to(torch.int64)


def _check_in_range(indices: torch.Tensor, idx: torch.Tensor, n: int) -> None:
    """Raise ``IndexError`` unless every index is in ``[0, n)`` (``idx`` is the int64 view)."""
    if idx.numel() == 0:
        return
    low, high = torch.aminmax(idx)
    if int(low) >= 0 and int(high) < n:
        return
    bad = ((idx < 0) | (idx >= n)).reshape(-1)
    flat = int(torch.nonzero(bad)[0, 0])
    position = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), tuple(idx.shape)))
    value = int(idx.reshape(-1)[flat])
    if indices.dtype == torch.uint64 and value < 0:
        value += 2**64  # report the unsigned value the caller passed, not its int64 wrap
    raise index_error(
        "Embedding",
        f"index {value} at position {position} is out of range [0, {n}) "
        f"for num_embeddings={n} (indices shape {tuple(indices.shape)}).",
    )
