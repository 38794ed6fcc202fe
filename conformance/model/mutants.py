"""Planted bugs in the MLX model port, for the harness's meta-tests and the CLI's
``--mutant`` self-check. Each is a context manager factory that patches a class of
``mlx_impl.models`` while the MLX side is built and run (the twin and the oracle never
import these classes), so the harness must name the (step, layer) where it bites:

* ``rope_offset_off_by_one``: at decode (a single new token), RoPE rotates queries and
  keys at position ``offset + 1`` instead of ``offset``;
* ``cache_appended_twice``: at decode, the new token's key and value are appended to the
  cache twice (the attention then weighs the new token twice, and every later position
  is one further off);
* ``norm_eps_wrong`` (a port recipe bug) and ``matmul_wrong_at_width`` (a stand-in for
  a back-end kernel bug) are the attribution's (:data:`OP_MUTANTS`): it must name their
  op and cause;
* ``router_picks_last``: GPT-OSS's router picks the top-k experts of the NEGATED logits
  (the lowest k), a wrong expert choice with the margin of the whole logit range; the
  harness continues with the oracle's experts at rows that differ, so this bug shows
  as routing flips (:func:`conformance.model.bounds.routing_flip_is_tie`), not ties.

Two more stand in for a back end that fails outright, so the ``--jobs`` isolation
(:mod:`conformance.model.isolated`) can prove it names the configuration that was lost:

* ``crash_at_decode``: the process aborts (SIGABRT) at the first decode step's cache update;
* ``hang_at_decode``: the first decode step's cache update never returns.

``layer`` restricts a bug to one decoder layer (instances are counted in creation order,
which is layer order), so a test can prove the harness names the layer, not just the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from conformance.model.harness import Mutant


@contextlib.contextmanager
def _patched(cls: type, init_hook: bool, call_name: str,
             make_call: Callable[[Callable[..., Any], Callable[[Any], bool]], Callable[..., Any]],
             layer: int | None) -> Iterator[None]:
    """Patch ``cls.call_name`` with ``make_call(original, targeted)``; ``targeted(self)``
    says whether an instance is the chosen layer's (all when ``layer`` is None)."""
    original_init = cls.__init__  # type: ignore[misc]
    original_call = getattr(cls, call_name)
    order: dict[int, int] = {}

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        order[id(self)] = len(order)

    def targeted(self: Any) -> bool:
        return layer is None or order.get(id(self)) == layer

    if init_hook:
        cls.__init__ = init  # type: ignore[misc]
    setattr(cls, call_name, make_call(original_call, targeted))
    try:
        yield
    finally:
        cls.__init__ = original_init  # type: ignore[misc]
        setattr(cls, call_name, original_call)


def rope_offset_off_by_one(layer: int | None = None) -> Mutant:
    """RoPE at ``offset + 1`` for single-token (decode) calls."""
    from mlx_impl.models.rope import LayerRoPE

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def call(self: Any, x: Any, offset: int) -> Any:
            if x.shape[2] == 1 and targeted(self):
                offset = offset + 1
            return original(self, x, offset)
        return call

    return lambda: _patched(LayerRoPE, True, "__call__", make, layer)


def _at_decode_update(before: Callable[[Callable[..., Any], Any, Any, Any], object],
                      layer: int | None) -> Mutant:
    """Run ``before(original, cache, keys, values)`` ahead of every decode step's (one new
    token) ``KVCache.update_and_fetch`` in the targeted layer(s)."""
    from mlx_impl.models.cache import KVCache

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def update(self: Any, keys: Any, values: Any) -> Any:
            if keys.shape[2] == 1 and targeted(self):
                before(original, self, keys, values)
            return original(self, keys, values)
        return update

    return lambda: _patched(KVCache, True, "update_and_fetch", make, layer)


def cache_appended_twice(layer: int | None = None) -> Mutant:
    """Append a decode step's key and value twice."""
    return _at_decode_update(lambda original, cache, keys, values: original(cache, keys, values), layer)


def crash_at_decode(layer: int | None = None) -> Mutant:
    """Abort the process (as a crashing kernel would) at a decode step's cache update."""
    import os

    return _at_decode_update(lambda *_: os.abort(), layer)


def hang_at_decode(layer: int | None = None) -> Mutant:
    """Never return (as a stuck kernel or compile would) from a decode step's cache update."""
    import threading

    return _at_decode_update(lambda *_: threading.Event().wait(), layer)


def router_picks_last(layer: int | None = None) -> Mutant:
    """The mixture of experts selects the k LOWEST router logits."""
    import mlx.core as mx

    from mlx_impl.models.moe import MixtureOfExperts

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def select(self: Any, logits: Any) -> Any:
            if not targeted(self):
                return original(self, logits)
            k = self.top_k
            return mx.argpartition(logits, kth=k - 1, axis=-1)[:, :k]
        return select

    return lambda: _patched(MixtureOfExperts, True, "select", make, layer)


def norm_eps_wrong(layer: int | None = None) -> Mutant:
    """A port bug (a recipe, not an op): the MLP's pre-norm is built with eps 1e-2 instead of
    the checkpoint's ``rms_norm_eps``. ``mlx_impl.nn.RMSNorm`` itself is right (its record
    conforms with any eps), so attribution must say ``"port"`` at ``pre_mlp_norm``."""
    from mlx_impl import nn
    from mlx_impl.models.decoder import DecoderLayer

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if targeted(self) and not getattr(self, "_eps_planted", False):
                norm = self.pre_mlp_norm
                if hasattr(norm, "norm"):  # Gemma's / GPT-OSS's float32 norm wraps an nn.RMSNorm
                    norm.norm = nn.RMSNorm(norm.norm.weight, eps=1e-2)
                else:
                    self.pre_mlp_norm = nn.RMSNorm(norm.weight, eps=1e-2)
                self._eps_planted = True
            return original(self, *args, **kwargs)
        return call

    return lambda: _patched(DecoderLayer, True, "__call__", make, layer)


MATMUL_BUG_WIDTH = 128
"""The input width at which :func:`matmul_wrong_at_width` bites (the tiny models' MLP width)."""


def matmul_wrong_at_width(layer: int | None = None) -> Mutant:
    """A stand-in for an MLX back-end bug (an op, not the port): ``mlx_impl.nn.Linear`` scales
    its output by ``1 + 2^-7`` whenever the input width is :data:`MATMUL_BUG_WIDTH`, as a
    shape-dependent kernel would, in the model AND in the op's registry record. Attribution
    must say ``"mlx-backend"`` at the first down projection (the first op of that width)
    and write the inputs for a reproducer. ``layer`` is ignored: a kernel bites wherever it runs."""
    import mlx.core as mx

    from mlx_impl import nn

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def call(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            out = original(self, x, *args, **kwargs)
            if x.shape[-1] == MATMUL_BUG_WIDTH:
                return out * mx.array(1.0 + 2.0**-7, dtype=out.dtype)
            return out
        return call

    return lambda: _patched(nn.Linear, False, "__call__", make, None)


def norm_coarser(layer: int | None = None, unit_roundoffs: float = 24.0) -> Mutant:
    """NOT a bug by the op-level contract: ``mlx_impl.nn.RMSNorm`` scales its output by
    ``1 + unit_roundoffs x 2^-24`` (a statistic ``unit_roundoffs`` float32 unit roundoffs off,
    coherently in every element), which ``nn.rms_norm``'s record admits (its D-term sum of
    squares may be ``gamma_D`` off). The composition then leaves the 2x rule; attribution must
    say ``"bound"`` (every op conforms) and the op-calibrated rule admit it. ``layer`` is
    ignored (an op's behaviour)."""
    import mlx.core as mx

    from mlx_impl import nn

    def make(original: Callable[..., Any], targeted: Callable[[Any], bool]) -> Callable[..., Any]:
        def call(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
            y = original(self, x, *args, **kwargs)
            return y * mx.array(1.0 + unit_roundoffs * 2.0**-24, dtype=y.dtype)
        return call

    return lambda: _patched(nn.RMSNorm, False, "__call__", make, None)


OP_MUTANTS: dict[str, tuple[Callable[[int | None], Mutant], str, str]] = {
    "norm_eps_wrong": (norm_eps_wrong, "pre_mlp_norm", "port"),
    "matmul_wrong_at_width": (matmul_wrong_at_width, "mlp.down_proj", "mlx-backend"),
}
"""Planted bugs for the attribution's meta-tests: name -> (factory, the op attribution
must name (without its ``layer i``), the cause it must give)."""

MUTANTS: dict[str, Callable[[int | None], Mutant]] = {
    "rope_offset_off_by_one": rope_offset_off_by_one,
    "cache_appended_twice": cache_appended_twice,
    "router_picks_last": router_picks_last,
}
"""Planted numerical bugs by name: the harness must name their (step, layer)."""

PROCESS_FAULTS: dict[str, Callable[[int | None], Mutant]] = {
    "crash_at_decode": crash_at_decode,
    "hang_at_decode": hang_at_decode,
}
"""Planted process failures by name: only a ``--jobs`` run survives them (it names the
configuration lost); a serial run dies or waits with them."""

ALL_MUTANTS = {**MUTANTS, **PROCESS_FAULTS, **{k: v[0] for k, v in OP_MUTANTS.items()}}
"""What ``--mutant`` accepts."""
