"""Wall-clock timing of one call: warm-up, an adaptive number of samples, median and IQR.

Every timed callable must finish its work before it returns: the MLX side ends with
``mx.eval`` of the outputs, the PyTorch side with ``torch.cuda.synchronize()`` on CUDA
(see :mod:`conformance.bench.runner`). Each sample times ONE call with
``time.perf_counter``; the garbage collector is paused while sampling so a collection
does not land inside one sample.

How many samples (:class:`Budget`): after the warm-up, calls are sampled until at least
``min_samples`` were taken AND ``target_s`` seconds were spent sampling; a slow call
stops earlier, at ``floor_samples`` samples once ``cap_s`` seconds are spent (so a
5-second kernel costs 3 samples, not 5), and nothing takes more than ``max_samples``.
A call that takes ``cap_s`` or longer is its own warm-up: its first call is kept as the
first sample (the one-time costs a warm-up hides are far below its duration). The median is the reported time; the interquartile range (IQR, the 75th
minus the 25th percentile, NumPy's linear interpolation) is the noise the regression
rule tolerates (:mod:`conformance.bench.baseline`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Budget:
    """How long to warm up and how many samples to take (see the module docstring)."""

    target_s: float = 0.5
    min_samples: int = 5
    cap_s: float = 2.0
    floor_samples: int = 3
    max_samples: int = 2000
    warmup_s: float = 0.05
    max_warmup_calls: int = 20

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in every baseline)."""
        return dict(self.__dict__)


TINY_BUDGET = Budget(target_s=0.0, min_samples=1, cap_s=0.0, floor_samples=1, max_samples=1,
                     warmup_s=0.0, max_warmup_calls=1)
"""One warm-up call and one sample: for smoke runs that prove the code path, not the speed."""


@dataclass(frozen=True)
class Timing:
    """Summary of the samples of one timed call, in seconds."""

    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    n: int

    @property
    def iqr_s(self) -> float:
        """Interquartile range: the noise of this measurement."""
        return self.q3_s - self.q1_s

    @classmethod
    def from_samples(cls, samples: Sequence[float]) -> Timing:
        """Median, quartiles and minimum of ``samples`` (at least one)."""
        if not samples:
            raise ValueError("[bench] a timing needs at least one sample.")
        q1, median, q3 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(min(samples)), len(samples))

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready form, with the IQR spelled out for readers of the file."""
        return {"median_s": self.median_s, "q1_s": self.q1_s, "q3_s": self.q3_s,
                "iqr_s": self.iqr_s, "min_s": self.min_s, "n": self.n}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        """Inverse of :meth:`as_dict` (the IQR is derived, not read)."""
        return cls(float(data["median_s"]), float(data["q1_s"]), float(data["q3_s"]),
                   float(data["min_s"]), int(data["n"]))


def _done(n: int, elapsed: float, budget: Budget) -> bool:
    if n >= budget.max_samples:
        return True
    if n >= budget.min_samples and elapsed >= budget.target_s:
        return True
    return n >= budget.floor_samples and elapsed >= budget.cap_s


def measure_interleaved(fns: Sequence[Callable[[], Any]], budget: Budget = Budget()) -> list[Timing]:
    """Time several calls in turn (a, b, b, a, ... rotating the order each round), so that
    a drift in the machine's speed (another process, frequency scaling) affects each of them
    alike; the sample count is decided on the slowest. Used for the layer-vs-raw overhead
    comparisons."""
    if not fns:
        return []
    samples: list[list[float]] = [[] for _ in fns]
    spent = [0.0 for _ in fns]
    started = time.perf_counter()
    calls = 0
    while True:
        first = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            first.append(time.perf_counter() - t0)
        calls += 1
        if calls == 1 and max(first) >= budget.cap_s:
            # A call this slow is its own warm-up: one-time costs (allocation, page faults,
            # lazy symbol binding) are micro- to milliseconds, noise beside seconds. Its
            # first round counts as a sample instead of being thrown away.
            for i, dt in enumerate(first):
                samples[i].append(dt)
                spent[i] += dt
            break
        if calls >= budget.max_warmup_calls or time.perf_counter() - started >= budget.warmup_s:
            break
    was_enabled = gc.isenabled()
    gc.disable()
    rounds = 0
    try:
        while not _done(min(len(s) for s in samples), max(spent), budget):
            # Each round starts one call later (a, b, c; b, c, a; ...): no call always runs
            # right after the same neighbour, whose caches or thread wake-ups it would inherit.
            for j in range(len(fns)):
                i = (j + rounds) % len(fns)
                fn = fns[i]
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                samples[i].append(dt)
                spent[i] += dt
            rounds += 1
    finally:
        if was_enabled:
            gc.enable()
    return [Timing.from_samples(s) for s in samples]


def measure(fn: Callable[[], Any], budget: Budget = Budget()) -> Timing:
    """Warm up ``fn``, then time it call by call; see the module docstring for the rule."""
    return measure_interleaved([fn], budget)[0]
