"""Half dtypes: MLX bfloat16/float16 against the twin's float64 oracle on the SAME half weights
(``load(dtype=half)`` vs ``load(dtype=half, precision="float64")``), prefill + 32 cached steps.

The checkpoints are transformers' (float32) cast at load; casting changes the model, so the
oracle computes exactly with the cast weights and only the arithmetic is compared.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the models extra (transformers) is not installed")

import mlx.core as mx
import torch

import torch_reference.models as tmodels
from mlx_impl import models as mmodels
from tests.models_bounds import first_departure, rel_errors, run_mlx, run_torch
from tests.models_tiny import ARCHITECTURES, build_checkpoint, fixed_tokens

PROMPT_LEN, STEPS = 12, 32
TOKENS = fixed_tokens(PROMPT_LEN + STEPS)
PROMPT, DECODE = TOKENS[:PROMPT_LEN], TOKENS[PROMPT_LEN:]

HALF = {"bfloat16": (mx.bfloat16, torch.bfloat16, 2.0**-7), "float16": (mx.float16, torch.float16, 2.0**-10)}


def tol_half(num_layers: int, eps: float) -> float:
    """A half-precision forward against exact arithmetic on the same weights.

    Matmuls, norms and softmax accumulate in float32 (MLX's CPU back end and the twin), so
    the error is not the accumulation's but the rounding of each op's OUTPUT to the half
    dtype (``eps / 2`` relative each). The residual path of a layer has at most ~16 such
    points (q/k/v, RoPE, attention output, o_proj, norms, MLP products, the two residual
    adds) with O(1) gain: ``8 (L + 1) eps`` (bfloat16: 0.25, float16: 0.031 for 3 layers).
    A wrong norm, head or cache moves the logits by O(1).
    """
    return 8.0 * (num_layers + 1) * eps


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("dtype", list(HALF))
def test_mlx_half_matches_oracle_on_half_weights(checkpoint: Path, dtype: str) -> None:
    mdt, tdt, eps = HALF[dtype]
    model = mmodels.load(checkpoint, dtype=mdt)
    assert model.layers[0].self_attn.q_proj.weight.dtype == mdt
    got = run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE)
    oracle = tmodels.load(checkpoint, dtype=tdt, precision="float64")
    ref = run_torch(oracle, tmodels.make_cache(oracle), PROMPT, DECODE)
    bound = tol_half(model.args.num_hidden_layers, eps)
    errors = rel_errors(got, ref)
    assert first_departure(errors, bound) is None, first_departure(errors, bound)
    twin = tmodels.load(checkpoint, dtype=tdt)
    errors = rel_errors(run_torch(twin, tmodels.make_cache(twin), PROMPT, DECODE), ref)
    assert first_departure(errors, bound) is None, ("twin", first_departure(errors, bound))
