"""The Flux 2 DiT blocks (``mlx_impl.models.dit``: double-stream and single-stream)
against their twins, the float64 oracle and diffusers' own ``Flux2TransformerBlock`` /
``Flux2SingleTransformerBlock`` (float64 anchor), dense in every test dtype (float64
included, CPU) and quantized
in every mode; planted bugs must be caught."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.model.checkpoints import QUANT_MODES
from conformance.model.dit_check import DitCase, random_state, run_dit
from mlx_impl.models import dit as mlx_dit

CASE = DitCase()


def _failures(result: dict) -> str:
    parts = [f"{k}: {v['message']}" for k, v in result["outputs"].items() if not v["passed"]]
    parts += [f"anchor {k}: {v['message']}" for k, v in (result["anchor"] or {}).items() if not v["passed"]]
    return "\n".join(parts)


@pytest.mark.parametrize("block", ["double", "single"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_dense_block_conforms_and_matches_diffusers(dtype: str, block: str) -> None:
    result = run_dit(DitCase(block=block), dtype)
    assert result["passed"], _failures(result)
    # The anchor really is diffusers' block: it agrees with the oracle far below the
    # float32 twin's own error (diffusers rounds only its RoPE rotation to float32).
    for name, entry in result["anchor"].items():
        assert entry["rel_err"] < entry["twin32_rel_err"], name


@pytest.mark.parametrize("quant", sorted(QUANT_MODES))
def test_quantized_block_conforms(quant: str) -> None:
    result = run_dit(CASE, "float32", quant)
    assert result["passed"], _failures(result)


@pytest.mark.parametrize("block", ["double", "single"])
def test_quantized_half_block_conforms(block: str) -> None:
    result = run_dit(DitCase(block=block), "bfloat16", "affine4")
    assert result["passed"], _failures(result)


def test_rope_axes_swapped_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that rotates the image grid's h chunk by w and the w chunk by h."""
    original = mlx_dit.flux2_rope

    def swapped(x, text_len, grid, axes_dim, theta):  # type: ignore[no-untyped-def]
        b, heads, _, d = x.shape
        h, w = grid
        image = x[:, :, text_len:].reshape(b, heads, h, w, d).transpose(0, 1, 3, 2, 4).reshape(b, heads, h * w, d)
        import mlx.core as mx

        turned = original(mx.concatenate([x[:, :, :text_len], image], axis=2), text_len, (w, h), axes_dim, theta)
        back = turned[:, :, text_len:].reshape(b, heads, w, h, d).transpose(0, 1, 3, 2, 4).reshape(b, heads, h * w, d)
        return mx.concatenate([turned[:, :, :text_len], back], axis=2)

    monkeypatch.setattr(mlx_dit, "flux2_rope", swapped)
    for block in ("double", "single"):
        for dtype in ("float32", "float64"):  # float64: judged against the float32 probe
            result = run_dit(DitCase(block=block), dtype)
            assert not result["passed"], (block, dtype)
            assert not result["outputs"]["image"]["passed"], (block, dtype)


def test_modulation_without_one_plus_scale_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlx_dit, "modulate",
                        lambda x, shift, scale, eps: mlx_dit.fast.layer_norm(x, None, None, eps) * scale + shift)
    result = run_dit(CASE, "bfloat16")
    assert not result["outputs"]["text"]["passed"] and not result["outputs"]["image"]["passed"]


def test_random_state_perturbs_norms_and_uses_diffusers_names() -> None:
    state, inputs = random_state(CASE)
    assert set(f"{n}.weight" for n in mlx_dit.PROJECTIONS + mlx_dit.QK_NORMS) == set(state)
    for name in mlx_dit.QK_NORMS:
        assert np.std(state[f"{name}.weight"]) > 0.05, name
    assert inputs[0].shape == (CASE.batch, CASE.grid[0] * CASE.grid[1], CASE.dim)


def test_config_refuses_axes_that_do_not_sum_to_head_dim() -> None:
    with pytest.raises(ValueError, match=r"\[Flux2BlockConfig\] axes_dim"):
        mlx_dit.Flux2BlockConfig(64, 2, 32, (8, 8, 8, 6))
