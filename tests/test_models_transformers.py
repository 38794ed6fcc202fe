"""Whole models against transformers: tiny random checkpoints written by transformers itself,
loaded by ``mlx_impl.models`` and ``torch_reference.models``, through a 12-token prefill and
32 cached single-token decode steps (Gemma 3's window of 8 is crossed in both), compared
with transformers' own float64 logits (its ``DynamicCache``) at every step.

Bounds: ``tests/models_bounds.py`` (float32 against exact: ``2 (L+1) sqrt(K) eps32``; our
float64 oracle against transformers' partly-float32 "float64": ``8 (L+1) eps32``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the models extra (transformers) is not installed")

import mlx.core as mx
import numpy as np
import torch

import torch_reference.models as tmodels
from mlx_impl import models as mmodels
from tests.models_bounds import (
    first_departure,
    inner_length,
    rel_errors,
    run_mlx,
    run_torch,
    tol_float32,
    tol_transformers64,
)
from tests.models_tiny import ARCHITECTURES, build_checkpoint, fixed_tokens, transformers_logits

PROMPT_LEN, STEPS = 12, 32
TOKENS = fixed_tokens(PROMPT_LEN + STEPS)
PROMPT, DECODE = TOKENS[:PROMPT_LEN], TOKENS[PROMPT_LEN:]

# (architecture, variant): variants exercise the tied/untied head and Gemma's final softcap.
CASES = [
    ("llama", {}),
    ("llama", {"tie": True}),
    ("qwen3", {}),
    ("gemma3_text", {}),
    ("gemma3_text", {"tie": False, "softcap": True, "linear_rope": True}),
    ("glm4", {}),
    ("gpt_oss", {}),
]
assert {a for a, _ in CASES} == set(ARCHITECTURES)


def _case_id(case: tuple[str, dict]) -> str:
    arch, kw = case
    return arch + "".join(f"-{k}" for k, v in kw.items() if v) + ("-untied" if kw.get("tie") is False else "")


@pytest.fixture(scope="module", params=CASES, ids=[_case_id(c) for c in CASES])
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``(dir, transformers' float64 logits per step, args)`` of one case (built once)."""
    arch, kw = request.param
    d = build_checkpoint(arch, tmp_path_factory.mktemp(_case_id(request.param)), **kw)
    ref = [r.numpy() for r in transformers_logits(d, PROMPT, DECODE)]
    args = mmodels.load(d).args
    return d, ref, args


def _tol32(args) -> float:
    return tol_float32(args.num_hidden_layers, inner_length(args, PROMPT_LEN + STEPS))


def test_mlx_float32_matches_transformers(checkpoint) -> None:
    d, ref, args = checkpoint
    model = mmodels.load(d)
    errors = rel_errors(run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE), ref)
    assert len(errors) == 1 + STEPS
    assert first_departure(errors, _tol32(args)) is None, first_departure(errors, _tol32(args))


def test_twin_float32_matches_transformers(checkpoint) -> None:
    d, ref, args = checkpoint
    model = tmodels.load(d)
    errors = rel_errors(run_torch(model, tmodels.make_cache(model), PROMPT, DECODE), ref)
    assert first_departure(errors, _tol32(args)) is None, first_departure(errors, _tol32(args))


def test_twin_float64_matches_transformers(checkpoint) -> None:
    d, ref, args = checkpoint
    model = tmodels.load(d, dtype=torch.float64, precision="float64")
    errors = rel_errors(run_torch(model, tmodels.make_cache(model), PROMPT, DECODE), ref)
    bound = tol_transformers64(args.num_hidden_layers)
    assert first_departure(errors, bound) is None, first_departure(errors, bound)


def test_hidden_states_per_layer(checkpoint) -> None:
    """``hidden_states`` gets the embedding and every layer's output; MLX float32 against
    the float64 twin stays within the float32 bound of the layers so far, layer by layer."""
    d, _, args = checkpoint
    mlx_model = mmodels.load(d)
    twin = tmodels.load(d, dtype=torch.float64, precision="float64")
    hm: list = []
    ht: list = []
    mlx_model(mx.array([PROMPT]), hidden_states=hm)
    twin(torch.tensor([PROMPT]), hidden_states=ht)
    assert len(hm) == len(ht) == args.num_hidden_layers + 1
    for i, (a, b) in enumerate(zip(hm, ht, strict=True)):
        assert a.shape == (1, PROMPT_LEN, args.hidden_size)
        bound = tol_float32(i, inner_length(args, PROMPT_LEN))
        err = rel_errors([np.array(a)], [b.numpy()])[0]
        assert err <= bound, f"layer {i}: {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_old_config_format_loads_the_same_model(arch: str, tmp_path: Path) -> None:
    """transformers 5's ``rope_parameters`` and the older top-level ``rope_theta`` /
    ``rope_scaling`` / ``rope_local_base_freq`` / ``partial_rotary_factor`` give the same
    ModelArgs and bit-identical logits."""
    new = build_checkpoint(arch, tmp_path / "new")
    old = build_checkpoint(arch, tmp_path / "old", old_format=True)
    assert "rope_parameters" not in (old / "config.json").read_text()
    m_new, m_old = mmodels.load(new), mmodels.load(old)
    assert m_new.args == m_old.args
    a = np.array(m_new(mx.array([PROMPT])))
    b = np.array(m_old(mx.array([PROMPT])))
    assert np.array_equal(a, b)
    # The twin's own copy of the config reader: same fields (different classes).
    assert dataclasses.asdict(tmodels.load(old).args) == dataclasses.asdict(m_new.args)
