"""DeepSeek Sparse Attention (DSA): the indexer's top-k choice of keys, judged like a routing tie.

DeepSeek-V3.2's indexer scores every cached key per query (a sum over its heads of
weighted ReLU'd dot products) and the attention then sees only the ``index_topk`` best.
That choice is discrete: two keys whose scores differ by less than the test dtype's
error are a tie, and a port that keeps the other one attends to a different key and its
layer output moves by far more than the 2x rule admits (measured on the sweep's tiny
deepseek_v32, bfloat16+affine4: the float64 oracle's 4th to 6th scores at step 10,
layer 0 are 0.00159, 0.00153, 0.00146, transformers' bfloat16 peer's score row is
4.8e-4 from the oracle's at its worst element, mlx-lm's 4.2e-4, and mlx-lm keeps key 11
for key 15: a 9.2x departure; transformers' own bfloat16 peer keeps a different key than
the oracle in 2 of the 34 (step, layer) choices of that run).

So, as the twin's routing does for expert choices (:mod:`conformance.model.harness`):
every side continues with the ORACLE's keys where its own differ (the peer and the
candidate compute their own choice, which is recorded, then attend to the oracle's keys
if it is another set), so hidden states stay comparable
and are judged as usual; and each side's own choice is judged on its own
(:func:`judge_selections`): where it differs from the oracle's it must be a tie
(:func:`conformance.model.bounds.selection_flip_is_tie`), else it is a flip and fails.

Observers: transformers' indexer modules (any module with ``index_topk`` and a
``forward`` returning ``[B, S, k]`` indices; its scores are read at its ``topk``
call) and mlx-lm's (``self_attn.indexer`` returning ``[B, 1, S, k]`` indices, or None
when every key is kept). Calls are logged in order: each step calls every indexer once,
layer by layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.model.bounds import score_bound, selection_flip_is_tie


class IndexerLog:
    """One side's indexer calls, in call order: ``own`` (its own choice ``[S, k]`` int, or
    None where it keeps every key), ``scores`` (``[S, T]`` float64, transformers only);
    ``force``: the oracle's choices, in the same order, returned instead of the side's."""

    def __init__(self, force: list[np.ndarray] | None = None) -> None:
        self.own: list[np.ndarray | None] = []
        self.scores: list[np.ndarray] = []
        self.force = force

    def forced(self) -> np.ndarray | None:
        """The oracle's choice for the call being made (None without forcing)."""
        if self.force is None:
            return None
        i = len(self.own)
        if i >= len(self.force):
            raise RuntimeError(f"[dsa indexer] call {i} has no forced choice: the oracle made {len(self.force)} "
                               "indexer calls (the sides must replay the same steps).")
        return self.force[i]


def same_keys(own: np.ndarray, forced: np.ndarray) -> bool:
    """Whether two choices ``[S, k]`` keep the same keys in every row (in any order): a side
    whose choice is the oracle's runs untouched (the order of the keys is its own, and it
    changes the order of its attention's sums)."""
    return own.shape == forced.shape and all(set(a.tolist()) == set(b.tolist()) for a, b in zip(own, forced, strict=True))


def hf_indexers(model: Any) -> list[Any]:
    """transformers' DSA indexer modules of ``model`` in layer order (empty: no DSA)."""
    return [m for m in model.modules() if hasattr(m, "index_topk") and type(m).__name__.endswith("Indexer")]


def install_hf(model: Any, force: list[np.ndarray] | None = None) -> IndexerLog | None:
    """Observe (and with ``force``, steer) every DSA indexer of a transformers ``model``;
    None for a model without one. The scores are the tensor its ``topk`` ranks ``[B, S, T]``
    (read through a torch function mode while the indexer runs, so transformers' own code
    computes them); the forced choice replaces its returned indices ``[B, S, k]``."""
    import torch
    from torch.overrides import TorchFunctionMode

    modules = hf_indexers(model)
    if not modules:
        return None
    log = IndexerLog(force)

    class _Topk(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.scores: Any = None

        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (torch.Tensor.topk, torch.topk):
                self.scores = args[0]
            return func(*args, **(kwargs or {}))

    def wrap(module: Any) -> None:
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            mode = _Topk()
            with mode:
                out = original(*args, **kwargs)
            if mode.scores is None or out.shape[0] != 1:
                raise RuntimeError("[dsa indexer] transformers' indexer ran no topk on a batch of 1; the observer "
                                   "reads its scores there.")
            forced = log.forced()
            log.scores.append(mode.scores[0].detach().to(torch.float64).cpu().numpy().copy())
            own = out[0].detach().cpu().numpy().astype(np.int64).copy()
            log.own.append(own)
            if forced is None or same_keys(own, forced):
                return out
            return torch.from_numpy(forced.astype(np.int64)).to(out.device, out.dtype)[None]

        module.forward = forward

    for m in modules:
        wrap(m)
    return log


def install_mlx_lm(model: Any, force: list[np.ndarray] | None = None) -> IndexerLog | None:
    """Observe (and steer) mlx-lm's DSA indexers (``layers[i].self_attn.indexer``) of
    ``model``; None where there are none. mlx-lm returns ``[B, 1, S, k]`` indices (in
    no order) or None (every key kept); a forced choice replaces the indices."""
    import mlx.core as mx
    import mlx.nn as nn

    inner_model = getattr(model, "model", model)
    layers = getattr(inner_model, "layers", None) or []
    found = [(layer.self_attn, layer.self_attn.indexer) for layer in layers
             if hasattr(getattr(layer, "self_attn", None), "indexer")]
    if not found:
        return None
    log = IndexerLog(force)

    class _Observed(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def __call__(self, x: Any, qr: Any, mask: Any, cache: Any = None) -> Any:
            out = self.inner(x, qr, mask, cache=cache)
            forced = log.forced()
            if out is None:
                log.own.append(None)
                return None
            if out.shape[0] != 1:
                raise RuntimeError("[dsa indexer] the observer reads a batch of 1.")
            own = np.array(out[0, 0]).astype(np.int64)
            log.own.append(own)
            if forced is None or same_keys(own, forced):
                return out
            return mx.array(forced.astype(np.uint32))[None, None].astype(out.dtype)

    for attn, indexer in found:
        attn.indexer = _Observed(indexer)
    return log


def judge_selections(side: IndexerLog, peer: IndexerLog, oracle: IndexerLog, dtype: str) -> dict[str, Any]:
    """Each side's own choice of keys at every (indexer call, query row), against the
    oracle's (its scores ``[S, T]``, masked keys ``-inf`` or the mask dtype's minimum). Only keys the oracle's mask
    admits count (a prefill row with fewer than k visible keys fills its choice with
    masked ones, in any order); a side that keeps every key (mlx-lm's None) chose them all.

    The bound on one score row is the model rule's on that row
    (``2 ||peer - oracle|| + 2 ulp sqrt(T)``, :func:`score_bound`): a conforming side's
    score row is that close to the oracle's, so each of its scores is. A differing choice
    is a tie when :func:`selection_flip_is_tie` admits it, else a flip.

    Returns ``{"rows", "ties", "flips" [{"call", "row", "oracle", "side", "margin", "bound"}],
    "twin_departures" (rows where the peer's own choice differs from the oracle's),
    "passed"}``."""
    if not (len(side.own) == len(peer.own) == len(oracle.own) == len(oracle.scores) == len(peer.scores)):
        raise RuntimeError(f"[dsa indexer] the sides made different numbers of indexer calls (candidate "
                           f"{len(side.own)}, peer {len(peer.own)}, oracle {len(oracle.own)}).")
    rows = ties = twin = 0
    flips: list[dict[str, Any]] = []
    for c, (mine, theirs, o_sel, o_sc, p_sc) in enumerate(
            zip(side.own, peer.own, oracle.own, oracle.scores, peer.scores, strict=True)):
        if o_sel is None:
            raise RuntimeError(f"[dsa indexer] the oracle's log has no choice at call {c} (transformers always "
                               "returns one).")
        for r in range(o_sc.shape[0]):
            # Masked keys: -inf, or the additive mask's dtype minimum (float64's for the
            # oracle, far below float32's); scores are O(1).
            visible = o_sc[r] > np.finfo(np.float32).min
            keys = set(np.flatnonzero(visible).tolist())
            o_set = set(o_sel[r].tolist()) & keys
            bound = score_bound(p_sc[r][visible], o_sc[r][visible], dtype)
            rows += 1
            if theirs is not None and set(theirs[r].tolist()) & keys != o_set:
                twin += 1
            s_set = keys if mine is None else set(mine[r].tolist()) & keys
            if s_set == o_set:
                continue
            if selection_flip_is_tie(o_sc[r], sorted(o_set), sorted(s_set), bound):
                ties += 1
            else:
                only_o, only_s = sorted(o_set - s_set), sorted(s_set - o_set)
                margin = max((float(o_sc[r][a] - o_sc[r][b]) for a in only_o for b in only_s), default=0.0)
                flips.append({"call": c, "row": r, "oracle": sorted(o_set), "side": sorted(s_set),
                              "margin": float(f"{margin:.4g}"), "bound": float(f"{bound:.4g}")})
    return {"rows": rows, "ties": ties, "flips": flips, "twin_departures": twin, "passed": not flips}
