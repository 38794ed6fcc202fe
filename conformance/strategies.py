"""Hypothesis strategies shared by every record: sizes that hit kernel tails and model
shapes, and values from subnormal to near overflow, with NaN, ±inf and ±0 where asked.

Arrays are not drawn element by element (slow, and shrinking noise): Hypothesis draws a
shape, a value profile and a seed, and NumPy fills the array from that seed. A failure
therefore shrinks towards small shapes and the plain ``normal`` profile, and every draw
is labelled so the falsifying example reads like a recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from hypothesis import strategies as st

from conformance.dtypes import FORMATS

# Feature sizes: 1, small odd numbers, SIMD/kernel tails around 32 and 64, and one long
# row (4099 = 4096 + 3) that crosses every vector-width boundary.
FEATURES = (1, 2, 3, 8, 31, 32, 33, 64, 127, 4099)
SMALL_FEATURES = (1, 2, 3, 8, 31, 32, 33, 64)
HEAD_DIMS = (64, 80, 96, 128, 256)
SEQ_LENS = (1, 2, 3, 7, 16, 31, 33)
BATCH = (1, 2, 3)

VALUE_PROFILES = ("normal", "ints", "tiny", "subnormal", "large", "mixed", "special")
"""``normal``: N(0, 1). ``ints``: small integers, exact in every dtype (isolates logic
bugs from rounding). ``tiny``: magnitudes near the smallest normal of the dtype.
``subnormal``: below it. ``large``: near the dtype's overflow threshold (scaled by the
op's ``headroom``). ``mixed``: magnitudes spread over many binades. ``special``: normal
values with NaN, +inf, -inf, +0 and -0 planted at random positions."""


def fill(shape: Sequence[int], profile: str, dtype: str, seed: int, headroom: float = 1.0) -> np.ndarray:
    """Deterministically fill an array of ``shape`` with values of ``profile`` (float32).

    ``headroom`` divides the largest magnitude a ``large`` array reaches, for ops whose
    intermediate values grow (a sum of squares, a dot product).
    """
    rng = np.random.default_rng(seed)
    fmt = FORMATS[dtype]
    size = tuple(int(s) for s in shape)
    if profile == "normal":
        out = rng.standard_normal(size)
    elif profile == "ints":
        out = rng.integers(-8, 9, size).astype(np.float64)
    elif profile == "tiny":
        smallest_normal = 2.0**fmt.min_exponent
        out = rng.uniform(1.0, 8.0, size) * smallest_normal * rng.choice([-1.0, 1.0], size)
    elif profile == "subnormal":
        smallest_normal = 2.0**fmt.min_exponent
        out = rng.uniform(0.0, 1.0, size) * smallest_normal * rng.choice([-1.0, 1.0], size)
    elif profile == "large":
        top = min(fmt.max_finite, float(np.finfo(np.float32).max)) / headroom
        out = rng.uniform(0.25, 1.0, size) * top * rng.choice([-1.0, 1.0], size)
    elif profile == "mixed":
        exponents = rng.uniform(-12, 12, size)
        out = rng.choice([-1.0, 1.0], size) * np.exp2(exponents)
    elif profile == "special":
        out = rng.standard_normal(size)
        flat = out.reshape(-1)
        if flat.size:
            specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])
            count = max(1, flat.size // 16)
            where = rng.choice(flat.size, size=count, replace=False)
            flat[where] = rng.choice(specials, size=count)
    else:
        raise ValueError(f"[strategies] unknown value profile {profile!r}.")
    return np.asarray(out, dtype=np.float32)


@st.composite
def arrays(
    draw: st.DrawFn,
    shape: Sequence[int],
    dtype: str,
    *,
    profiles: Sequence[str] = ("normal",),
    headroom: float = 1.0,
    label: str = "x",
) -> np.ndarray:
    """A float32 array of ``shape`` drawn from one of ``profiles`` (rounded to ``dtype``
    later by the harness). ``profiles[0]`` is what failures shrink towards."""
    profile = draw(st.sampled_from(list(profiles)), label=f"{label}.profile")
    seed = draw(st.integers(0, 2**32 - 1), label=f"{label}.seed")
    return fill(shape, profile, dtype, seed, headroom)


def index_array(shape: Sequence[int], high: int, seed: int) -> np.ndarray:
    """Deterministic int32 indices in ``[0, high)``."""
    return np.random.default_rng(seed).integers(0, high, tuple(shape)).astype(np.int32)


def batch_shape(max_rank: int = 2) -> st.SearchStrategy[tuple[int, ...]]:
    """Leading batch dimensions: ``()``, ``(n,)`` or ``(n, m)`` with small n, m."""
    return st.lists(st.sampled_from(BATCH), min_size=0, max_size=max_rank).map(tuple)
