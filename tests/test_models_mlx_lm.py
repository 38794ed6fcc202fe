"""mlx-lm as the second outside anchor on the MLX side, and MLX-quantized checkpoints.

* The same transformers-written checkpoint loaded by mlx-lm's own implementation of the
  architecture (``mlx_lm.utils.load_model``) and by ``mlx_impl.models``: logits at every
  step of a prefill and 32 cached decode steps (mlx-lm's own prompt cache).
* Quantized: mlx-lm's real ``quantize_model`` + ``save_model``/``save_config`` write an
  MLX-quantized checkpoint; ``mlx_impl.models`` must match mlx-lm on it, and the twin
  (which dequantizes the same codes, exactly in float64 for the oracle) must match MLX.

mlx-lm 0.32.2 reads only the older config keys (``rope_theta``, ``rope_scaling``,
``rope_local_base_freq``, ``partial_rotary_factor``, ``sliding_window_pattern``): given
transformers 5's ``rope_parameters`` alone it silently falls back to its defaults (a
Llama 3 checkpoint then loses its rope scaling; measured: logits off by 128%). These
tests therefore give mlx-lm the older format, which ``mlx_impl`` reads identically
(``test_old_config_format_loads_the_same_model``).

GPT-OSS is not here: mlx-lm 0.32.2's ``gpt_oss`` loads only the original checkpoint layout
(mxfp4 ``_blocks``/``_scales`` experts, ``[E, 2I, H]``) or its own sanitized one; a dense
checkpoint written by transformers (``gate_up_proj`` ``[E, H, 2I]``) fails its weight
check, so there is no second MLX port to compare with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the models extra (transformers) is not installed")
pytest.importorskip("mlx_lm", reason="the models extra (mlx-lm) is not installed")

import torch
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model, quantize_model, save_config, save_model

import torch_reference.models as tmodels
from mlx_impl import models as mmodels
from tests.models_bounds import (
    first_departure,
    inner_length,
    rel_errors,
    run_mlx,
    run_torch,
    tol_float32,
)
from tests.models_tiny import ARCHITECTURES, build_checkpoint, fixed_tokens

# Every architecture mlx-lm can load from a transformers-written checkpoint (not gpt_oss).
MLX_LM_ARCHITECTURES = tuple(a for a in ARCHITECTURES if a != "gpt_oss")

PROMPT_LEN, STEPS = 12, 32
TOKENS = fixed_tokens(PROMPT_LEN + STEPS)
PROMPT, DECODE = TOKENS[:PROMPT_LEN], TOKENS[PROMPT_LEN:]


def _tol32(args) -> float:
    return tol_float32(args.num_hidden_layers, inner_length(args, PROMPT_LEN + STEPS))


def _mlx_lm_logits(path: Path):
    model, _ = load_model(path)
    return run_mlx(model, make_prompt_cache(model), PROMPT, DECODE)


@pytest.fixture(scope="module", params=MLX_LM_ARCHITECTURES)
def old_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    arch = request.param
    return build_checkpoint(arch, tmp_path_factory.mktemp(arch), old_format=True)


def test_mlx_matches_mlx_lm(old_checkpoint: Path) -> None:
    """Same kernels underneath (mx.fast.rope / rms_norm / sdpa), different model code:
    the float32 bound applies (measured: bit-identical for all four)."""
    ref = _mlx_lm_logits(old_checkpoint)
    model = mmodels.load(old_checkpoint)
    errors = rel_errors(run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE), ref)
    bound = _tol32(model.args)
    assert first_departure(errors, bound) is None, first_departure(errors, bound)


# (architecture, (group_size, bits, mode)): affine 4-bit for every architecture; mxfp4
# (uint8 E8M0 scale codes) for Llama (layer biases) and Gemma 3 (tied quantized head); the
# other modes mlx-lm writes (affine 8-bit, nvfp4, mxfp8) for Llama only, to keep the twin's
# slow unpacking short.
QUANTIZED_CASES = [
    *((arch, (32, 4, "affine")) for arch in MLX_LM_ARCHITECTURES),
    ("llama", (32, 4, "mxfp4")),
    ("gemma3_text", (32, 4, "mxfp4")),
    ("llama", (32, 8, "affine")),
    ("llama", (16, 4, "nvfp4")),
    ("llama", (32, 8, "mxfp8")),
]


@pytest.fixture(scope="module", params=QUANTIZED_CASES,
                ids=[f"{a}-{q[2]}{q[1]}-g{q[0]}" for a, q in QUANTIZED_CASES])
def quantized_checkpoint(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mlx-lm's own quantization of a tiny checkpoint, saved as mlx-lm saves it."""
    arch, (group_size, bits, mode) = request.param
    dense = build_checkpoint(arch, tmp_path_factory.mktemp(f"{arch}-dense"), old_format=True)
    model, config = load_model(dense)
    model, qconfig = quantize_model(model, config, group_size, bits, mode=mode)
    out = tmp_path_factory.mktemp(f"{arch}-{mode}{bits}")
    save_model(out, model)
    save_config(qconfig, out / "config.json")
    return out


def test_quantized_checkpoint_is_really_quantized(quantized_checkpoint: Path) -> None:
    model = mmodels.load(quantized_checkpoint)
    assert model.args.quantization is not None
    assert type(model.layers[0].self_attn.q_proj).__name__ == "QuantizedLinear"
    assert type(model.layers[0].mlp.down_proj).__name__ == "QuantizedLinear"
    assert type(model.embed_tokens).__name__ == "QuantizedEmbedding"


def test_quantized_mlx_matches_mlx_lm(quantized_checkpoint: Path) -> None:
    ref = _mlx_lm_logits(quantized_checkpoint)
    model = mmodels.load(quantized_checkpoint)
    errors = rel_errors(run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE), ref)
    bound = _tol32(model.args)
    assert first_departure(errors, bound) is None, first_departure(errors, bound)


def test_quantized_mlx_matches_twin(quantized_checkpoint: Path) -> None:
    """The twin dequantizes the same codes: natively (MLX's rounding points) and exactly in
    float64 (the oracle). Both quantized forwards are float32 computations of the same
    dequantized weights, so the float32 bound applies to each against the oracle."""
    model = mmodels.load(quantized_checkpoint)
    got = run_mlx(model, mmodels.make_cache(model), PROMPT, DECODE)
    bound = _tol32(model.args)
    native = tmodels.load(quantized_checkpoint)
    oracle = tmodels.load(quantized_checkpoint, dtype=torch.float64, precision="float64")
    ref_native = run_torch(native, tmodels.make_cache(native), PROMPT, DECODE)
    ref_oracle = run_torch(oracle, tmodels.make_cache(oracle), PROMPT, DECODE)
    for name, ref in (("twin native", ref_native), ("twin float64", ref_oracle)):
        errors = rel_errors(got, ref)
        assert first_departure(errors, bound) is None, (name, first_departure(errors, bound))
