"""Candidates: any MLX model loader judged by the model conformance.

A candidate is named by a spec string (or given as a callable):

* ``mlx_impl``: this project's port (:class:`conformance.model.sides.MlxSide`, hidden
  states from its own ``hidden_states=`` list);
* ``mlx-lm``: ``mlx_lm.utils.load_model`` and ``mlx_lm.models.cache.make_prompt_cache``;
* ``package.module:function``: a user's ``function(path) -> model`` or ``(model, cache)``
  in mlx-lm's convention, ``model(tokens [B, L] mx.array, cache=cache) -> logits [B, L, V]``;
  without a returned cache, ``make_prompt_cache(model)`` makes one.

A candidate other than ``mlx_impl`` is not edited to expose its hidden states: the
decoder layers found at a conventional place (:data:`LAYER_PATHS`) are replaced, in the
candidate's own list, by :class:`LayerTap` wrappers that call the original and record its
output; layer 0's input is the ``embed`` point. The points then line up with the
oracle's (the twin's ``hidden_states`` and transformers' hooks record the same residual
stream: layer 0's input and each layer's output, before the final norm). A list the
model stores is preferred to one a property computes (mlx-lm's ``Model.layers`` is often
a slice: a copy). Where no layers are found, or the forward pass does not call every
tapped layer at the first step, the candidate is judged on its logits only, and the
result's notes say so. Inside each layer, every named submodule is recorded too
(:mod:`conformance.model.subpoints`), so a departure is named down to the op the
candidate exposes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformance.model.errors import CandidateLoadError

LAYER_PATHS = ("layers", "model.layers", "language_model.layers", "language_model.model.layers")
"""Where a candidate's decoder layers are looked for, in order (attribute paths from the
model): mlx-lm's ``Model.layers`` (often a property returning ``model.model.layers``),
the inner model's list, and the text model of a multimodal wrapper."""

Loader = Callable[[Path], Any]
"""``loader(checkpoint_path) -> model`` or ``(model, cache)``."""


@dataclass(frozen=True)
class Candidate:
    """A resolved candidate: ``name`` (the spec as given, or the callable's qualified
    name) and ``loader`` (None for ``mlx_impl``, which the harness builds itself)."""

    name: str
    loader: Loader | None


def _mlx_lm_loader(path: Path) -> Any:
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    return model


def resolve_candidate(spec: str | Loader) -> Candidate:
    """The candidate named by ``spec``: ``"mlx_impl"``, ``"mlx-lm"``,
    ``"package.module:function"``, or a callable ``path -> model | (model, cache)``.

    Raises:
        CandidateLoadError: a spec without a colon that is not a known name, a module
            that cannot be imported, a missing attribute, or one that is not callable.
    """
    if callable(spec):
        name = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
        return Candidate(name, spec)
    if not isinstance(spec, str) or not spec.strip():
        raise CandidateLoadError(f"[candidate] a candidate is 'mlx_impl', 'mlx-lm', 'package.module:function' "
                                 f"or a callable, but got {spec!r}.")
    spec = spec.strip()
    if spec == "mlx_impl":
        return Candidate(spec, None)
    if spec == "mlx-lm":
        return Candidate(spec, _mlx_lm_loader)
    if ":" not in spec:
        raise CandidateLoadError(f"[candidate] {spec!r} is not 'mlx_impl' or 'mlx-lm', and a user's loader is "
                                 "named 'package.module:function' (no colon found).")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CandidateLoadError(f"[candidate] {spec!r}: both the module and the function must be named "
                                 "('package.module:function').")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of the user's module is the candidate's
        raise CandidateLoadError(f"[candidate] cannot import module {module_name!r} of {spec!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CandidateLoadError(f"[candidate] module {module_name!r} has no attribute {attr!r} ({spec!r}).")
        target = getattr(target, part)
    if not callable(target):
        raise CandidateLoadError(f"[candidate] {spec!r} is a {type(target).__name__}, not a callable taking the "
                                 "checkpoint path.")
    return Candidate(spec, target)


class _Recorder:
    """The taps' shared record of one forward pass: layer 0's input, then each layer's
    output in call order."""

    def __init__(self) -> None:
        self.embed: Any = None
        self.outputs: dict[int, Any] = {}

    def clear(self) -> None:
        self.embed, self.outputs = None, {}


def _tap_class() -> type:
    import mlx.nn as nn

    class LayerTap(nn.Module):
        """Calls the wrapped decoder layer and records its output (the first element of a
        tuple); layer 0 also records its input (the ``embed`` point). Attributes the
        candidate reads from its layers (``is_sliding``, ``self_attn`` ...) are answered by
        the wrapped layer."""

        def __init__(self, inner: Any, index: int, recorder: _Recorder) -> None:
            super().__init__()
            self.inner = inner
            self._index = index
            self._recorder = recorder

        def __getattr__(self, key: str) -> Any:
            if key in self:
                return self[key]
            inner = dict.get(self, "inner")
            if inner is None:
                raise AttributeError(key)
            return getattr(inner, key)

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if self._index == 0:
                self._recorder.embed = args[0] if args else next(iter(kwargs.values()))
            out = self.inner(*args, **kwargs)
            self._recorder.outputs[self._index] = out[0] if isinstance(out, tuple) else out
            return out

    return LayerTap


def find_layers(model: Any) -> tuple[str, list[Any]] | None:
    """The candidate's decoder layers: ``(path, the list itself)`` for the first of
    :data:`LAYER_PATHS` holding a non-empty list, preferring a list the model stores over
    one a property computes (mlx-lm's ``Model.layers`` may return a slice, a copy that the
    forward pass never reads); None where there is none."""
    computed: tuple[str, list[Any]] | None = None
    for path in LAYER_PATHS:
        parent: Any = None
        target: Any = model
        try:
            for part in path.split("."):
                parent, target = target, getattr(target, part)
        except AttributeError:
            continue
        if not (isinstance(target, list) and target):
            continue
        last = path.rsplit(".", 1)[-1]
        layers: list[Any] = target
        stored = dict.get(parent, last) if isinstance(parent, dict) else getattr(parent, "__dict__", {}).get(last)
        if stored is layers:
            return path, layers
        computed = computed or (path, layers)
    return computed


def install_taps(model: Any) -> tuple[str, int, _Recorder] | None:
    """Replace each entry of the candidate's layer list by a :class:`LayerTap` (in place:
    the model's own forward then calls the taps); ``(path, number of layers, recorder)``,
    or None where :func:`find_layers` finds no layers."""
    found = find_layers(model)
    if found is None:
        return None
    path, layers = found
    tap = _tap_class()
    recorder = _Recorder()
    for i, layer in enumerate(layers):
        layers[i] = tap(layer, i, recorder)
    return path, len(layers), recorder


def _split_loaded(loaded: Any, name: str) -> tuple[Any, Any]:
    """``(model, cache or None)`` from what a loader returned, checked."""
    model, cache = (loaded if isinstance(loaded, tuple) and len(loaded) == 2 else (loaded, None))
    if isinstance(loaded, tuple) and len(loaded) != 2:
        raise CandidateLoadError(f"[candidate] {name} returned a tuple of {len(loaded)} items; it must return "
                                 "a model or (model, cache).")
    if model is None or not callable(model):
        raise CandidateLoadError(f"[candidate] {name} returned {type(model).__name__}, not a callable model "
                                 "(model(tokens [B, L], cache=cache) -> logits [B, L, V]).")
    if cache is not None and not isinstance(cache, (list, tuple)):
        raise CandidateLoadError(f"[candidate] {name} returned a cache of type {type(cache).__name__}; a cache "
                                 "is a list with one entry per layer, as make_prompt_cache makes.")
    return model, cache


class CandidateSide:
    """A candidate loaded from ``path`` with its cache and layer taps; answers the
    harness's ``step(tokens [B, L]) -> (logits [B, L, V], hidden states)``, the hidden
    states ``[B, L, H]`` (layer 0's input, each layer's output) or ``[]`` without taps.

    ``notes``: what the result should say about this candidate (logits only, and why).
    """

    def __init__(self, path: Path, candidate: Candidate, subpoints: bool = True) -> None:
        if candidate.loader is None:
            raise ValueError("[candidate] mlx_impl is run by conformance.model.sides.MlxSide.")
        self.name = candidate.name
        self.notes: list[str] = []
        self.steps = 0
        try:
            loaded = candidate.loader(Path(path))
        except CandidateLoadError:
            raise
        except Exception as exc:  # the user's loader failing is the candidate's failure
            raise CandidateLoadError(f"[candidate] {self.name} failed to load {path}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self.model, cache = _split_loaded(loaded, self.name)
        if cache is None:
            from mlx_lm.models.cache import make_prompt_cache

            try:
                cache = make_prompt_cache(self.model)
            except Exception as exc:  # a model make_prompt_cache cannot read
                raise CandidateLoadError(f"[candidate] {self.name}: mlx_lm's make_prompt_cache failed on the "
                                         f"returned model ({type(exc).__name__}: {exc}); return (model, cache) "
                                         "from the loader.") from exc
        self.cache = cache
        # Taps after the cache: a make_cache that inspects the layers sees the candidate's own.
        found = find_layers(self.model) if subpoints else None
        self.subtrace: Any = None  # the sub-layer points (conformance/model/subpoints.py)
        if found is not None:
            from conformance.dtypes import mlx_to_numpy
            from conformance.model.subpoints import SubTrace, find_head, tap_mlx_layers

            self.subtrace = SubTrace(mlx_to_numpy, deferred=True)
            tap_mlx_layers(found[1], self.subtrace, head=find_head(self.model))
        tapped = install_taps(self.model)
        if tapped is None:
            self.layers_path, self.n_layers, self.recorder = None, 0, None
            self.notes.append(f"logits only: no decoder layers at {' or '.join('model.' + p for p in LAYER_PATHS)}")
        else:
            self.layers_path, self.n_layers, self.recorder = tapped

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``tokens: [B, L]`` through the candidate's cache; logits ``[B, L, V]`` and
        the tapped hidden states (float64 copies). Raises CandidateLoadError when the
        candidate crashes or answers the wrong shape."""
        import mlx.core as mx

        from conformance.model.sides import _mx_np

        if self.recorder is not None:
            self.recorder.clear()
        if self.subtrace is not None:
            self.subtrace.begin(tuple(tokens.shape))
        try:
            logits = self.model(mx.array(tokens.astype(np.int32)), cache=self.cache)
            hidden: list[Any] = []
            if self.recorder is not None:
                called = len(self.recorder.outputs)
                if self.recorder.embed is None or called != self.n_layers:
                    if self.steps:  # the points must be the same at every step
                        raise CandidateLoadError(
                            f"[candidate] {self.name}: step {self.steps} called {called} of the {self.n_layers} "
                            f"layers at model.{self.layers_path} (every one at step 0).")
                    self.notes.append(f"logits only: the forward pass called {called} of the {self.n_layers} "
                                      f"layers found at model.{self.layers_path}")
                    self.recorder = self.subtrace = None
                else:
                    hidden = [self.recorder.embed, *(self.recorder.outputs[i] for i in range(self.n_layers))]
            mx.eval(logits, *hidden)
            if self.subtrace is not None:
                self.subtrace.end()
        except CandidateLoadError:
            raise
        except Exception as exc:  # the candidate crashing is its failure, not the harness's
            raise CandidateLoadError(f"[candidate] {self.name} crashed on tokens of shape {tokens.shape}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        self.steps += 1
        out = _mx_np(logits)
        if out.ndim != 3 or out.shape[:2] != tokens.shape:
            raise CandidateLoadError(f"[candidate] {self.name} returned logits of shape {out.shape} for tokens "
                                     f"{tokens.shape}; expected [B, L, V].")
        return out, [_mx_np(h) for h in hidden]
