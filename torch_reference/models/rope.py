"""Rotary embedding of one layer type: the twin of ``mlx_impl.models.rope``.

``default``/``linear`` RoPE call ``torch_reference.fast.rope``. Llama 3's and YaRN's scaled
inverse frequencies are no ``base``, so those rotate here with the same conventions: native
precision takes MLX's route (float32 periods ``1 / inv_freq``, inverted in float32, angles
in float32, cos/sin cast to x's dtype, the rotation rounded in x's dtype); ``float64``
uses the exact inverse frequencies and float64 throughout. YaRN's attention factor scales
the rotated features after the rotation (the rotation is linear).
"""

from __future__ import annotations

import torch

from torch_reference.fast import rope as fast_rope
from torch_reference.models.config import RopeSpec


class LayerRoPE:
    """``rope(x, offset, precision)`` for ``x: [B, H, L, D]``: rotates the first
    ``spec.dims`` features of position ``offset + t``; the rest pass through."""

    def __init__(self, spec: RopeSpec) -> None:
        self.spec = spec
        self._inv64 = torch.tensor(spec.inv_freq(), dtype=torch.float64)
        # MLX is handed float32 periods and inverts them in float32.
        self._inv32 = 1.0 / (1.0 / self._inv64).to(torch.float32)

    def __call__(self, x: torch.Tensor, offset: int, precision: str) -> torch.Tensor:
        s = self.spec
        if s.rope_type not in ("llama3", "yarn"):
            return fast_rope(
                x, s.dims, traditional=s.traditional, base=s.theta, scale=s.position_scale,
                offset=offset, precision=precision,
            )
        if precision == "float64":
            x = x.to(torch.float64)
            inv = self._inv64
        else:
            inv = self._inv32
        inv = inv.to(x.device)
        pos = torch.arange(offset, offset + x.shape[-2], dtype=inv.dtype, device=x.device)
        theta = pos[:, None] * inv[None, :]
        cos, sin = torch.cos(theta).to(x.dtype), torch.sin(theta).to(x.dtype)
        half = s.dims // 2
        if s.traditional:
            x1, x2 = x[..., 0 : s.dims : 2], x[..., 1 : s.dims : 2]
        else:
            x1, x2 = x[..., :half], x[..., half : s.dims]
        y1 = x1 * cos - x2 * sin
        y2 = x1 * sin + x2 * cos
        rotated = (
            torch.stack([y1, y2], dim=-1).flatten(-2)
            if s.traditional
            else torch.cat([y1, y2], dim=-1)
        )
        if s.attention_factor != 1.0:
            rotated = rotated * torch.tensor(s.attention_factor, dtype=rotated.dtype, device=x.device)
        return torch.cat([rotated, x[..., s.dims :]], dim=-1)
