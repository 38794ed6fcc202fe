"""Per-layer key/value caches for cached decoding (mlx-lm's ``KVCache`` role).

``KVCache`` keeps every key; ``SlidingWindowCache`` keeps only the last ``window`` keys
(trimmed after each update, like mlx-lm's ``RotatingKVCache`` without its ring buffer),
so a decode step's memory stays bounded. Both record the absolute position of each kept
key, from which the attention mask is built: the mask, not the storage, decides what a
query sees, so a prefill longer than the window still attends exactly as transformers
does (query ``i`` sees key ``j`` iff ``i - window < j <= i``).
"""

from __future__ import annotations

import mlx.core as mx


class KVCache:
    """All keys and values so far: ``keys: [B, Hkv, T, D]``; ``offset`` = tokens seen."""

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append ``keys``/``values: [B, Hkv, L, D]``; return everything kept, the new ones last."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = mx.concatenate([self.keys, keys], axis=2)
            self.values = mx.concatenate([self.values, values], axis=2)
        self.offset += keys.shape[2]
        return self.keys, self.values

    def key_positions(self, length: int) -> mx.array:
        """Absolute positions ``[length]`` of the ``length`` keys returned last."""
        return mx.arange(self.offset - length, self.offset)

    def trim(self) -> None:
        """Nothing to drop: a full-attention layer keeps every key."""


class SlidingWindowCache(KVCache):
    """Keeps the last ``window`` keys; the mask hides the ones a query may not see.

    ``update_and_fetch`` returns the kept keys AND the new ones (a prefill longer than the
    window needs all of them); :meth:`trim` then drops what no later query can see.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"[SlidingWindowCache] window must be >= 1 but got {window}.")
        self.window = window

    def trim(self) -> None:
        """Keep the last ``window - 1`` keys: the next query (position ``offset``) sees keys
        ``offset - window + 1 .. offset``, the last of which it brings itself."""
        if self.keys is None or self.values is None:
            return
        keep = self.window - 1
        if self.keys.shape[2] > keep:
            start = self.keys.shape[2] - keep
            self.keys = self.keys[:, :, start:, :]
            self.values = self.values[:, :, start:, :]


def make_cache(model: object) -> list[KVCache]:
    """One cache per decoder layer of ``model`` (a ``mlx_impl.models.Model``).

    Sliding-window layers get a :class:`SlidingWindowCache` of the model's window, the
    others a :class:`KVCache`.
    """
    args = model.args  # type: ignore[attr-defined]
    return [
        SlidingWindowCache(args.sliding_window) if t == "sliding_attention" else KVCache()
        for t in args.layer_types
    ]
