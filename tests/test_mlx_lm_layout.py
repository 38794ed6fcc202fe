"""The mlx-lm candidate's quantized layout (conformance/model/mlx_lm_layout.py): mlx-lm's
own conversion (experts stacked, the MoE router at 8 bits), the oracle's values placed back
in transformers' layout exactly, and planted layout bugs caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conformance.model import mlx_lm_layout
from conformance.model.checkpoints import derive
from conformance.model.sweep_configs import build_checkpoint


@pytest.fixture(scope="module")
def moe(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(original, dense bfloat16, mlx-lm's affine4 conversion) of a tiny Qwen3-MoE."""
    root = tmp_path_factory.mktemp("moe")
    ck = build_checkpoint("qwen3_moe", root / "ck")
    dense = derive(ck, root / "dense", "bfloat16")
    return ck, dense, mlx_lm_layout.quantize_with_mlx_lm(dense, root / "mlx", "affine4")


def test_conversion_is_mlx_lms_own_layout(moe: tuple[Path, Path, Path]) -> None:
    from mlx_lm.utils import load_model
    from safetensors import safe_open

    _, _, converted = moe
    with safe_open(str(converted / "model.safetensors"), "np") as h:
        names = set(h.keys())
    assert "model.layers.0.mlp.switch_mlp.gate_proj.scales" in names  # experts stacked, then quantized
    assert not any(".experts." in n for n in names)
    q = json.loads((converted / "config.json").read_text())["quantization"]
    assert q["model.layers.0.mlp.gate"] == {"group_size": 64, "bits": 8}  # Qwen3-MoE's own router predicate
    by_path = {w.path: w for w in mlx_lm_layout.quantized_weights(converted)}
    assert by_path["model.layers.0.mlp.gate"].bits == 8 and by_path["model.layers.0.mlp.switch_mlp.down_proj"].bits == 4
    load_model(converted)  # strict: mlx-lm places every tensor


def test_oracle_values_are_the_candidates(moe: tuple[Path, Path, Path]) -> None:
    from safetensors.torch import load_file

    from torch_reference.quantization import dequantize

    _, dense, converted = moe
    assert mlx_lm_layout.check_placement(dense, converted) == len(mlx_lm_layout.quantized_weights(converted))
    placed, touched = mlx_lm_layout.place(dense, converted, "float64")
    mlx = load_file(str(converted / "model.safetensors"))
    stem = "model.layers.1.mlp.switch_mlp.up_proj"
    exact = dequantize(mlx[f"{stem}.weight"], mlx[f"{stem}.scales"], mlx[f"{stem}.biases"], group_size=64, bits=4,
                       precision="float64")
    for e in range(exact.shape[0]):  # expert e of the stack is transformers' experts.e, exactly
        assert torch.equal(placed[f"model.layers.1.mlp.experts.{e}.up_proj.weight"], exact[e])
    original = load_file(str(dense / "model.safetensors"))
    norm = "model.layers.0.input_layernorm.weight"
    assert norm not in touched and torch.equal(placed[norm], original[norm].double())  # dense stays dense
    assert "model.layers.0.mlp.gate.weight" in touched


def test_planted_expert_order_bug_is_caught(moe: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, dense, converted = moe
    real = mlx_lm_layout.Sources.locate

    def swapped(self: mlx_lm_layout.Sources, key: str) -> tuple[np.ndarray, np.ndarray]:
        tensor, flat = real(self, key)
        if "switch_mlp.gate_proj" in key:  # experts 0 and 1 placed in each other's tensor
            half = len(tensor) // 4
            tensor = np.concatenate([tensor[half:2 * half], tensor[:half], tensor[2 * half:]])
            flat = np.concatenate([flat[half:2 * half], flat[:half], flat[2 * half:]])
        return tensor, flat

    monkeypatch.setattr(mlx_lm_layout.Sources, "locate", swapped)
    with pytest.raises(ValueError, match=r"switch_mlp\.gate_proj"):
        mlx_lm_layout.check_placement(dense, converted)


def test_planted_bits_bug_is_caught(moe: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # The 8-bit router read as 4-bit from the config: other values than mlx-lm's.
    _, dense, converted = moe
    real = mlx_lm_layout.quantized_weights

    def four_bits(ck: Path) -> list[mlx_lm_layout.QuantizedWeight]:
        return [mlx_lm_layout.QuantizedWeight(w.path, w.group_size, 4, w.mode) for w in real(ck)]

    monkeypatch.setattr(mlx_lm_layout, "quantized_weights", four_bits)
    with pytest.raises(ValueError):
        mlx_lm_layout.check_placement(dense, converted)


def test_derive_layout_is_refused_for_the_twin_where_it_differs(moe: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # derive's own rule quantizes the router at 4 bits; mlx-lm keeps it at 8: the twin,
    # which reads derive's layout, must not judge mlx-lm on it.
    ck, _, _ = moe
    derived = derive(ck, tmp_path / "derived", "bfloat16", "affine4")
    with pytest.raises(ValueError, match=r"mlp\.gate"):
        mlx_lm_layout.prepare(ck, derived, tmp_path, "bfloat16", "affine4", twin=True)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
def test_derive_layout_equals_mlx_lms_for_the_twins_dense_archs(arch: str, tmp_path: Path) -> None:
    # gemma3_text: its sanitize pops the model's untied lm_head, so each trace needs a fresh model
    ck = build_checkpoint(arch, tmp_path / arch)
    derived = derive(ck, tmp_path / "derived", "bfloat16", "affine4")
    q = mlx_lm_layout.prepare(ck, derived, tmp_path, "bfloat16", "affine4", twin=True)
    assert len(mlx_lm_layout.quantized_weights(q.converted)) > 0


def test_a_sanitize_that_scales_cannot_be_placed(moe: tuple[Path, Path, Path]) -> None:
    _, dense, _ = moe

    class Folds:
        def sanitize(self, weights: dict) -> dict:
            return {k: v * 2 if k.endswith("q_proj.weight") else v for k, v in weights.items()}

    sources = mlx_lm_layout.trace_sources(dense, Folds())
    with pytest.raises(ValueError, match="scales or mixes"):
        sources.locate("model.layers.0.self_attn.q_proj.weight")
    tensor, flat = sources.locate("model.layers.0.self_attn.k_proj.weight")
    assert len(set(tensor.tolist())) == 1 and np.array_equal(flat, np.arange(len(flat)))
    with pytest.raises(ValueError, match="produces no"):
        sources.locate("no.such.weight")


def test_judge_reaches_a_verdict_on_a_quantized_moe(moe: tuple[Path, Path, Path]) -> None:
    # Before mlx-lm's own layout this configuration could not load ("parameters not in
    # model": per-expert scales, the router's). Now a verdict, and it conforms.
    from conformance.model import judge

    ck, _, _ = moe
    r = judge(ck, candidate="mlx-lm", dtype="bfloat16", quant="affine4", steps=2)
    assert r["oracle"] == "transformers" and r["hidden_states"]
    assert r["passed"], r["departure"]
