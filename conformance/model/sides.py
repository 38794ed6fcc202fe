"""The sides of a model comparison, each loading one checkpoint directory and answering
``step(tokens [B, L]) -> (logits [B, L, vocab], hidden states)`` through its own cache:

* ``MlxSide``: ``mlx_impl.models`` (the port under test);
* ``TwinSide``: ``torch_reference.models`` in the test dtype (``native``, the peer) or in
  float64 (the oracle);
* ``TransformersSide``: transformers' own model in float64 (external anchor, logits only);
* ``MlxLmSide``: mlx-lm's implementation (external anchor on the MLX side, logits only).

Every array comes back as a float64 NumPy copy (half precision widened exactly).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np


class RouterLog:
    """The routing observer set on every mixture-of-experts layer of one side.

    Records, per step (``begin_step``) and per MoE layer in call order, the router input
    ``[N, H]``, the router logits ``[N, E]`` (float64 copies) and the side's own top-k
    choice ``[N, k]`` (sorted). With
    ``force`` (the oracle's choices, ``force[step][layer]: [N, k]``), a row whose own set
    of experts differs from the oracle's continues with the oracle's: the harness judges
    the choice itself (:func:`conformance.model.bounds.routing_flip_is_tie`) and keeps the
    rest of the trace comparable, as teacher forcing keeps tokens comparable. Rows whose
    set agrees keep the side's own indices (order and all): forcing is then a no-op."""

    def __init__(self, to_np: Any, from_np: Any, force: list[list[np.ndarray]] | None = None) -> None:
        self.to_np, self.from_np, self.force = to_np, from_np, force
        self.steps: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []

    def begin_step(self) -> None:
        self.steps.append([])

    def route(self, x: Any, logits: Any, experts: Any) -> Any:
        step, layer = len(self.steps) - 1, len(self.steps[-1])
        own = np.sort(self.to_np(experts).astype(np.int64), axis=-1)
        self.steps[-1].append((self.to_np(x).astype(np.float64), self.to_np(logits).astype(np.float64), own))
        if self.force is None:
            return experts
        oracle = np.sort(self.force[step][layer], axis=-1)
        differs = np.any(own != oracle, axis=-1)
        if not differs.any():
            return experts
        chosen = np.where(differs[:, None], oracle, self.to_np(experts).astype(np.int64))
        return self.from_np(chosen, experts)


def moe_layers(model: Any) -> list[Any]:
    """The mixture-of-experts blocks of ``model`` (those with a ``routing`` observer), in layer order."""
    return [layer.mlp for layer in model.layers if hasattr(layer.mlp, "routing")]


class Side(Protocol):
    """One implementation of the model, loaded and holding its own cache."""

    name: str

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Feed ``tokens: [B, L]`` int; return logits ``[B, L, V]`` and the hidden states
        ``[B, L, H]`` after the embedding and after each layer (empty for anchors)."""
        ...


class MlxSide:
    """``mlx_impl.models.load(path)`` with ``make_cache``; hidden states captured."""

    def __init__(self, path: Path, name: str = "mlx", force: list[list[np.ndarray]] | None = None) -> None:
        import mlx.core as mx

        from mlx_impl import models

        self.name = name
        self.model = models.load(str(path))
        self.cache = models.make_cache(self.model)
        from conformance.dtypes import mlx_to_numpy

        self.routing = RouterLog(mlx_to_numpy, lambda c, like: mx.array(c).astype(like.dtype), force)
        for moe in moe_layers(self.model):
            moe.routing = self.routing

    def step(self, tokens: np.ndarray, points: dict[str, Any] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step; ``points`` (a dict) receives every op's output and inputs
        (``mlx_impl.models.points``) as MLX arrays, evaluated."""
        import mlx.core as mx

        self.routing.begin_step()
        hidden: list[Any] = []
        logits = self.model(mx.array(tokens.astype(np.int32)), cache=self.cache, hidden_states=hidden,
                            points=points)
        mx.eval(logits, *hidden)
        return _mx_np(logits), [_mx_np(h) for h in hidden]


def _mx_np(a: Any) -> np.ndarray:
    from conformance.dtypes import mlx_to_numpy

    return mlx_to_numpy(a).astype(np.float64)


def _torch_np(t: Any) -> np.ndarray:
    from conformance.dtypes import torch_to_numpy

    return torch_to_numpy(t).astype(np.float64)


class TwinSide:
    """``torch_reference.models.load(path, precision=...)``; hidden states captured.

    The peer (``native``) computes where the op-level peer does (:func:`conformance.execute.
    peer_device`: CUDA tensors in a CUDA run) with its float32 matmuls at MLX's precision
    (TF32 where ``MLX_ENABLE_TF32`` is on), so that the judge's 2x-the-peer rule compares
    like with like; the float64 oracle always computes on the CPU."""

    def __init__(self, path: Path, precision: str, name: str, force: list[list[np.ndarray]] | None = None) -> None:
        import torch

        from conformance.execute import backend_name, configure_peer_precision, peer_device
        from torch_reference import models

        self.name = name
        backend = backend_name()
        self.device = peer_device(backend) if precision == "native" else "cpu"
        configure_peer_precision(backend)
        self.model = models.load(str(path), precision=precision, device=self.device)
        self.cache = models.make_cache(self.model)
        self.routing = RouterLog(_torch_np, lambda c, like: torch.from_numpy(c).to(like.device, like.dtype), force)
        for moe in moe_layers(self.model):
            moe.routing = self.routing

    def step(self, tokens: np.ndarray, points: dict[str, Any] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step; ``points`` (a dict) receives every op's output and inputs
        (``torch_reference.models.points``) as tensors."""
        import torch

        self.routing.begin_step()
        hidden: list[Any] = []
        ids = torch.from_numpy(tokens.astype(np.int64)).to(self.device)
        with torch.no_grad():
            logits = self.model(ids, cache=self.cache, hidden_states=hidden, points=points)
        return _torch_np(logits), [_torch_np(h) for h in hidden]


class TransformersSide:
    """transformers' ``AutoModelForCausalLM`` in float64 with its ``DynamicCache``, its
    weights streamed from the checkpoint one module at a time where the architecture allows
    (``streamed``)."""

    def __init__(self, path: Path, name: str = "transformers-float64") -> None:
        import torch
        from transformers import AutoModelForCausalLM, DynamicCache
        from transformers.utils import logging

        from conformance.model.streaming import needs_streaming, streamed_transformers

        logging.disable_progress_bar()
        self.name = name
        # Streamed only where the whole float64 model (8 bytes a parameter) would not fit
        # (conformance/model/streaming.py; the same computation, bit for bit, here). An
        # architecture whose loading renames or fuses weights cannot be streamed and loads whole.
        self.model: Any = None
        self.streamed = needs_streaming(path)
        if self.streamed:
            try:
                self.model = streamed_transformers(path)
            except ValueError:
                self.streamed = False
        if self.model is None:
            # Eager attention and experts: the fused kernels (SDPA, grouped_mm) take no float64.
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float64,
                                                              attn_implementation="eager",
                                                              experts_implementation="eager")
        self.model.eval()
        self.cache = DynamicCache(config=self.model.config)
        self.seen = 0

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        import torch

        ids = torch.from_numpy(tokens.astype(np.int64))
        length = ids.shape[1]
        positions = torch.arange(self.seen, self.seen + length)[None]
        with torch.no_grad():
            out = self.model(input_ids=ids, cache=self.cache, use_cache=True, position_ids=positions)
        self.seen += length
        return _torch_np(out.logits), []


class MlxLmSide:
    """mlx-lm's ``load`` and ``make_prompt_cache`` (its own port of the architecture)."""

    def __init__(self, path: Path, name: str = "mlx-lm") -> None:
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load_model

        self.name = name
        self.model, _ = load_model(Path(path))
        self.cache = make_prompt_cache(self.model)

    def step(self, tokens: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        import mlx.core as mx

        logits = self.model(mx.array(tokens.astype(np.int32)), cache=self.cache)
        mx.eval(logits)
        return _mx_np(logits), []


def release(side: Any) -> None:
    """Drop ``side``'s model and cache and return their memory now (Python's cycles
    collected, MLX's buffer cache emptied, the C heap trimmed), so the next side loads into
    the space."""
    import gc

    import mlx.core as mx

    for attr in ("model", "cache"):
        if hasattr(side, attr):
            setattr(side, attr, None)
    gc.collect()
    mx.clear_cache()
    trim_heap()


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). PyTorch's and NumPy's many medium-sized buffers are freed into glibc's
    arenas, which keep them: after a 1B model's attribution that was 0.6 GiB of resident
    memory no one used, under the next side's peak."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return
    trim(0)


def mlx_lm_supports(model_type: str) -> bool:
    """Whether the installed mlx-lm has an implementation of ``model_type``."""
    import importlib.util

    try:
        return importlib.util.find_spec(f"mlx_lm.models.{model_type}") is not None
    except ModuleNotFoundError:
        return False
