"""Rotary embedding of one layer type, from its :class:`~mlx_impl.models.config.RopeSpec`.

``default`` and ``linear`` RoPE go through the project's ``mlx_impl.fast.rope`` (``linear``
is its position ``scale = 1 / factor``). Llama 3's and YaRN's scaled inverse frequencies
are not a ``base``; the project's ``fast.rope`` takes none other, so those call
``mx.fast.rope`` with explicit ``freqs`` (periods ``1 / inv_freq``), the kernel
``fast.rope`` wraps. YaRN's attention factor multiplies cos and sin in transformers; the
rotation is linear, so it is applied to the rotated features after the rotation.
"""

from __future__ import annotations

import mlx.core as mx

from mlx_impl.fast import rope as fast_rope
from mlx_impl.models.config import RopeSpec


class LayerRoPE:
    """``rope(x, offset)`` for ``x: [B, H, L, D]``: rotates the first ``spec.dims`` features
    of position ``offset + t``; the rest pass through."""

    def __init__(self, spec: RopeSpec) -> None:
        self.spec = spec
        # mx.fast.rope's freqs are periods: theta = position / freqs.
        self._freqs = (
            mx.array([1.0 / f for f in spec.inv_freq()], dtype=mx.float32)
            if spec.rope_type in ("llama3", "yarn")
            else None
        )
        self._factor = spec.attention_factor

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        s = self.spec
        if self._freqs is None:
            return fast_rope(
                x, s.dims, traditional=s.traditional, base=s.theta, scale=s.position_scale,
                offset=offset,
            )
        y = mx.fast.rope(
            x, s.dims, traditional=s.traditional, base=None, scale=1.0, offset=offset,
            freqs=self._freqs,
        )
        if self._factor == 1.0:
            return y
        factor = mx.array(self._factor, dtype=y.dtype)
        if s.dims == y.shape[-1]:
            return y * factor
        return mx.concatenate([y[..., : s.dims] * factor, y[..., s.dims :]], axis=-1)
