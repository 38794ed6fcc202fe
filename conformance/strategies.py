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

VALUE_PROFILES = ("normal", "ints", "tiny", "subnormal", "large", "mixed", "special", "massive")
"""``normal``: N(0, 1). ``ints``: small integers, exact in every dtype (isolates logic
bugs from rounding). ``tiny``: magnitudes near the smallest normal of the dtype.
``subnormal``: below it. ``large``: near the dtype's overflow threshold (scaled by the
op's ``headroom``). ``mixed``: magnitudes spread over many binades. ``special``: normal
values with NaN, +inf, -inf, +0 and -0 planted at random positions. ``massive``: N(0, 1)
with a few channels (the same ones in every row) :data:`MASSIVE_RATIO` times larger and
one outlier row larger still, the activations trained LLMs feed their norms and
projections (:func:`massive_activations`)."""

MASSIVE_RATIO = 500.0
"""How much larger than the rest of a row a trained model's few massive channels are.
Measured on SmolLM2-135M-Instruct (float32, step 0, a 16-token random prompt; model
conformance's recorded points): in the residual stream (every norm's input) the largest
channel is up to 491x the row median (|h| up to 2.2e4 at layer 20, position 0), channels
507 and 247 in every layer from 2 on, the three largest holding 45-99 % of a row's sum
of squares; the down projections' inputs (act(gate) * up, K = 1536) reach 2036x."""

MASSIVE_CHANNELS = 3
"""How many channels are massive (SmolLM2: 2-3 carry most of the row)."""

OUTLIER_ROW_RATIO = 10.0
"""How much larger the massive channels of the first row are than those of the others
(SmolLM2's position 0, the attention sink: 383-22270 against the other rows' 46-576)."""


def massive_activations(shape: Sequence[int], seed: int, ratio: float = MASSIVE_RATIO,
                        channels: int = MASSIVE_CHANNELS, outlier_row: float = OUTLIER_ROW_RATIO) -> np.ndarray:
    """``[..., D]`` float32: N(0, 1) with ``channels`` fixed channels (seeded) ``ratio`` times
    larger in every row, and the first row's ``outlier_row`` times larger again (values keep
    their signs). The shape of what a trained LLM's norms and projections read (see
    :data:`MASSIVE_RATIO` for the measured magnitudes)."""
    rng = np.random.default_rng(seed)
    size = tuple(int(s) for s in shape)
    out = rng.standard_normal(size)
    if not out.size or not size:
        return out.astype(np.float32)
    d = size[-1]
    picked = rng.choice(d, size=min(channels, d), replace=False)
    rows = out.reshape(-1, d)
    rows[:, picked] *= ratio
    rows[0, picked] *= outlier_row
    return rows.reshape(size).astype(np.float32)


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
    elif profile == "massive":
        # Up to ~2e4 (4 sigma x 500 x 10): inside every test dtype's range; records whose
        # sums could overflow float16 with it draw it only for their inputs' statistics.
        out = massive_activations(size, seed)
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
