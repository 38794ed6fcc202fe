"""The KV cache is the real decode path, and the per-step comparison catches its bugs.

* Planted bugs (a RoPE offset one off at decode, a cache appended twice, a sliding window
  one too wide) must leave the float32 bound against transformers, and the first
  departure must name the step where they start.
* Cached decoding equals one uncached forward over the whole sequence; a batch of two
  equals each sequence alone; sliding-window caches stay bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the models extra (transformers) is not installed")

import mlx.core as mx
import numpy as np
import torch

import torch_reference.models as tmodels
from mlx_impl import models as mmodels
from mlx_impl.models.cache import KVCache, SlidingWindowCache
from tests.models_bounds import (
    first_departure,
    inner_length,
    rel_errors,
    run_mlx,
    run_torch,
    tol_float32,
)
from tests.models_tiny import WINDOW, build_checkpoint, fixed_tokens, transformers_logits

PROMPT_LEN, STEPS = 12, 32
TOKENS = fixed_tokens(PROMPT_LEN + STEPS)
PROMPT, DECODE = TOKENS[:PROMPT_LEN], TOKENS[PROMPT_LEN:]


@pytest.fixture(scope="module", params=["llama", "gemma3_text", "gpt_oss"])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    d = build_checkpoint(request.param, tmp_path_factory.mktemp(request.param))
    ref = [r.numpy() for r in transformers_logits(d, PROMPT, DECODE)]
    return d, ref


def _bound(model) -> float:
    return tol_float32(model.args.num_hidden_layers, inner_length(model.args, PROMPT_LEN + STEPS))


def _decode_with(model, cache, step_hook) -> list[np.ndarray]:
    """Like run_mlx, calling ``step_hook(cache)`` after the prefill."""
    out = [np.array(model(mx.array([PROMPT]), cache=cache)[0])]
    step_hook(cache)
    for t in DECODE:
        out.append(np.array(model(mx.array([[t]]), cache=cache)[0, -1]))
    return out


def test_correct_port_passes(case) -> None:
    d, ref = case
    model = mmodels.load(d)
    got = _decode_with(model, mmodels.make_cache(model), lambda c: None)
    assert first_departure(rel_errors(got, ref), _bound(model)) is None


def test_planted_rope_offset_off_by_one_is_caught_at_step_1(case) -> None:
    d, ref = case
    model = mmodels.load(d)

    def shift(cache: list[KVCache]) -> None:
        for c in cache:
            c.offset += 1  # every later query and key rotated one position too far

    got = _decode_with(model, mmodels.make_cache(model), shift)
    departure = first_departure(rel_errors(got, ref), _bound(model))
    assert departure is not None and departure.startswith("decode step 1:"), departure


def test_planted_cache_appended_twice_is_caught_at_step_1(case, monkeypatch) -> None:
    d, ref = case
    model = mmodels.load(d)
    original = KVCache.update_and_fetch

    def twice(self, keys, values):
        if self.offset >= PROMPT_LEN:  # decode steps only: the new key enters twice
            original(self, keys, values)
            self.offset -= keys.shape[2]
        return original(self, keys, values)

    monkeypatch.setattr(KVCache, "update_and_fetch", twice)
    got = _decode_with(model, mmodels.make_cache(model), lambda c: None)
    departure = first_departure(rel_errors(got, ref), _bound(model))
    assert departure is not None and departure.startswith("decode step 1:"), departure


def test_planted_window_one_too_wide_is_caught(tmp_path: Path) -> None:
    d = build_checkpoint("gemma3_text", tmp_path / "g")
    ref = [r.numpy() for r in transformers_logits(d, PROMPT, DECODE)]
    model = mmodels.load(d)
    for layer in model.layers:
        if layer.self_attn.window is not None:
            layer.self_attn.window += 1
    cache = [SlidingWindowCache(WINDOW + 1) if isinstance(c, SlidingWindowCache) else c
             for c in mmodels.make_cache(model)]
    departure = first_departure(rel_errors(run_mlx(model, cache, PROMPT, DECODE), ref),
                                _bound(model))
    # The prompt (12 > 8) already sees one key too many.
    assert departure is not None and departure.startswith("prefill:"), departure


@pytest.mark.parametrize("lib", ["mlx", "torch"])
def test_cached_decode_equals_uncached_forward(case, lib: str) -> None:
    """The last position of one uncached forward over all 44 tokens equals the last cached
    step (both float32; the float32 bound covers their different summation orders)."""
    d, _ = case
    if lib == "mlx":
        model = mmodels.load(d)
        stepped = run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE)
        whole = np.array(model(mx.array([TOKENS]))[0])
    else:
        model = tmodels.load(d)
        stepped = run_torch(model, tmodels.make_cache(model), PROMPT, DECODE)
        whole = model(torch.tensor([TOKENS]))[0].numpy()
    per_position = [whole[:PROMPT_LEN]] + [whole[PROMPT_LEN + i] for i in range(STEPS)]
    errors = rel_errors(stepped, per_position)
    assert first_departure(errors, _bound(model)) is None, first_departure(errors, _bound(model))


def test_batch_of_two_equals_each_alone(case) -> None:
    d, _ = case
    model = mmodels.load(d)
    other = fixed_tokens(PROMPT_LEN + 4, seed=11)
    batch = mx.array([TOKENS[: PROMPT_LEN + 4], other])
    cache = mmodels.make_cache(model)
    out = [model(batch[:, :PROMPT_LEN], cache=cache)]
    for i in range(PROMPT_LEN, PROMPT_LEN + 4):
        out.append(model(batch[:, i : i + 1], cache=cache))
    batched = np.concatenate([np.array(o) for o in out], axis=1)
    for row, seq in enumerate((TOKENS[: PROMPT_LEN + 4], other)):
        alone = np.array(model(mx.array([seq]))[0])
        err = rel_errors([batched[row]], [alone])[0]
        assert err <= _bound(model), (row, err)


def test_sliding_window_cache_stays_bounded(tmp_path: Path) -> None:
    d = build_checkpoint("gemma3_text", tmp_path / "g")
    model = mmodels.load(d)
    cache = mmodels.make_cache(model)
    kinds = [type(c).__name__ for c in cache]
    assert kinds == ["SlidingWindowCache", "KVCache", "SlidingWindowCache"]
    run_mlx(model, cache, PROMPT, DECODE)
    total = PROMPT_LEN + STEPS
    assert all(c.offset == total for c in cache)
    assert cache[1].keys is not None and cache[1].keys.shape[2] == total
    for c in (cache[0], cache[2]):
        assert c.keys is not None and c.keys.shape == (1, 2, WINDOW - 1, 16)
    tcache = tmodels.make_cache(tmodels.load(d))
    assert [type(c).__name__ for c in tcache] == kinds
