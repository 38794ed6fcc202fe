"""Error bounds and runners for the whole-model tests, with their numerical justification.

Error measure of one step: ``max |a - r| / max |r|`` over the step's logits (relative to
the logits' scale; the tiny models' logits are O(1..10), never near 0 everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

EPS32 = 2.0**-23  # float32 machine epsilon (twice the unit roundoff)


def inner_length(args: Any, positions: int) -> int:
    """The longest dot product of one forward pass: hidden, intermediate, head_dim, or the
    number of attended keys."""
    return max(args.hidden_size, args.intermediate_size, args.head_dim, positions)


def tol_float32(num_layers: int, k: int) -> float:
    """A float32 forward against an exact one (float64).

    A float32 dot product of length K errs by about ``sqrt(K) * u`` relative (the
    probabilistic bound of Higham and Mary; ``u = EPS32 / 2``); each layer chains about
    four such products on the residual path (q/k/v, scores, probs @ v with o_proj, the
    MLP pair), i.e. ``~2 sqrt(K) EPS32`` per layer, and the normalisations keep the gain
    per layer O(1), so the errors of the ``L`` layers and the head add:
    ``2 (L + 1) sqrt(K) EPS32`` (about 9e-6 for the tiny models: 3 layers, K = 96).
    A position or cache bug moves logits by O(0.1) relative, far outside it.
    """
    return 2.0 * (num_layers + 1) * math.sqrt(k) * EPS32


def tol_transformers64(num_layers: int) -> float:
    """Our float64 oracle against transformers' own ``.to(torch.float64)`` forward.

    transformers' float64 is only partly float64: its RMSNorms compute in float32 and its
    RoPE cos/sin are float32 (MODELS.md), so its logits carry float32 roundings of relative
    size ``EPS32 / 2`` at each norm output and rotation, not float64's ``1e-16``. A layer
    has at most 8 such points (Gemma 3: 4 norms, q/k norms, cos/sin of q and k) with O(1)
    gain: ``8 (L + 1) EPS32`` (about 4e-6 for 3 layers). This is why the bound is not the
    ``~1e-10`` a fully float64 reference would allow.
    """
    return 8.0 * (num_layers + 1) * EPS32


def rel_errors(got: Sequence[Any], ref: Sequence[Any]) -> list[float]:
    """Per-step ``max |got - ref| / max |ref|`` (any array-likes, compared in float64)."""
    out = []
    for g, r in zip(got, ref, strict=True):
        g64 = np.asarray(g, dtype=np.float64)
        r64 = np.asarray(r, dtype=np.float64)
        assert g64.shape == r64.shape, (g64.shape, r64.shape)
        out.append(float(np.abs(g64 - r64).max() / np.abs(r64).max()))
    return out


def first_departure(errors: Sequence[float], bound: float) -> str | None:
    """``None`` when every step is within ``bound``; else the first step that is not."""
    for i, e in enumerate(errors):
        if not e <= bound:  # NaN departs too
            where = "prefill" if i == 0 else f"decode step {i}"
            return f"{where}: error {e:.3g} > bound {bound:.3g} (max {max(errors):.3g})"
    return None


def run_mlx(model: Any, cache: Any, prompt: list[int], steps: list[int]) -> list[np.ndarray]:
    """MLX logits ``[prefill [L, V], step 1 [V], ...]`` through ``model`` and ``cache``."""
    import mlx.core as mx

    def to_np(a: Any) -> np.ndarray:
        return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)

    out = [to_np(model(mx.array([prompt]), cache=cache)[0])]
    for t in steps:
        out.append(to_np(model(mx.array([[t]]), cache=cache)[0, -1]))
    return out


def run_torch(model: Callable[..., Any], cache: Any, prompt: list[int],
              steps: list[int]) -> list[np.ndarray]:
    """Twin logits ``[prefill [L, V], step 1 [V], ...]`` through ``model`` and ``cache``."""
    import torch

    out = [model(torch.tensor([prompt]), cache=cache)[0].double().numpy()]
    for t in steps:
        out.append(model(torch.tensor([[t]]), cache=cache)[0, -1].double().numpy())
    return out
