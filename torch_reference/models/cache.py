"""Per-layer key/value caches: the twin of ``mlx_impl.models.cache``.

``KVCache`` keeps every key; ``SlidingWindowCache`` keeps the last ``window - 1`` after
each step. Each records the absolute positions of what it returns, from which the mask is
built (query ``i`` sees key ``j`` iff ``j <= i`` and, sliding, ``j > i - window``).
"""

from __future__ import annotations

import torch


class KVCache:
    """All keys and values so far: ``keys: [B, Hkv, T, D]``; ``offset`` = tokens seen."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.offset = 0

    def update_and_fetch(
        self, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``keys``/``values: [B, Hkv, L, D]``; return everything kept, new ones last."""
        if self.keys is None or self.values is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=2)
            self.values = torch.cat([self.values, values], dim=2)
        self.offset += keys.shape[2]
        return self.keys, self.values

    def key_positions(self, length: int) -> torch.Tensor:
        """Absolute positions ``[length]`` of the ``length`` keys returned last."""
        device = None if self.keys is None else self.keys.device
        return torch.arange(self.offset - length, self.offset, device=device)

    def trim(self) -> None:
        """Nothing to drop: a full-attention layer keeps every key."""


class SlidingWindowCache(KVCache):
    """Keeps the last ``window - 1`` keys between calls; the mask does the rest."""

    def __init__(self, window: int) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"[SlidingWindowCache] window must be >= 1 but got {window}.")
        self.window = window

    def trim(self) -> None:
        """Drop keys no later query can see (the next one sees ``window - 1`` old keys)."""
        if self.keys is None or self.values is None:
            return
        keep = self.window - 1
        if self.keys.shape[2] > keep:
            self.keys = self.keys[:, :, self.keys.shape[2] - keep :, :]
            self.values = self.values[:, :, self.values.shape[2] - keep :, :]


def make_cache(model: object) -> list[KVCache]:
    """One cache per decoder layer of ``model`` (a ``torch_reference.models.Model``)."""
    args = model.args  # type: ignore[attr-defined]
    return [
        SlidingWindowCache(args.sliding_window) if t == "sliding_attention" else KVCache()
        for t in args.layer_types
    ]
