"""Named points inside the model, recorded on request: the twin of
``mlx_impl.models.points`` (the same names; see there)."""

from __future__ import annotations

import torch

Points = dict[str, tuple[torch.Tensor, dict[str, object]]]
"""op name -> (output, the op's inputs by argument name); names as in ``mlx_impl.models.points``."""


def record_point(points: Points, name: str, out: torch.Tensor, **inputs: object) -> torch.Tensor:
    """Store ``out`` and its op's ``inputs`` under ``name``; returns ``out``."""
    points[name] = (out, inputs)
    return out
