"""How a reference call computes: in the input dtype (``"native"``, what a PyTorch user
gets, reproducing MLX's rounding points) or in float64 (``"float64"``, the oracle the
conformance harness measures both libraries against)."""

from __future__ import annotations

from typing import Literal

import torch

from torch_reference._errors import value_error

Precision = Literal["native", "float64"]
PRECISIONS: tuple[str, ...] = ("native", "float64")


def check_precision(where: str, precision: str) -> None:
    """Raise ``ValueError`` unless ``precision`` is ``"native"`` or ``"float64"``."""
    if precision not in PRECISIONS:
        raise value_error(where, f"precision must be one of {PRECISIONS} but got {precision!r}.")


def to_working(t: torch.Tensor | None, precision: str) -> torch.Tensor | None:
    """Widen a floating tensor to float64 for the oracle; leave it as is for ``"native"``.

    Integer tensors (indices, packed codes) are never converted."""
    if t is None or precision == "native" or not t.is_floating_point():
        return t
    return t.to(torch.float64)
