"""transformers as the float64 oracle (conformance/model/hf_sides.py), measured against
the twin's float64 oracle on architectures both implement.

transformers' float64 model keeps float32 islands (RMSNorm's statistics, RoPE's
``inv_freq`` and cos/sin, eager attention's softmax); :class:`Float64Mode` removes them.
Measured on the tiny models (prefill of 8 + 3 cached steps, every hidden state and the
logits, relative 2-norm error against the twin's float64 oracle): under the mode
0 (llama) to ~5e-16 (qwen3); without it ~6e-8 to ~1.3e-7, float32-sized. The test
holds the patched oracle to 1e-12 and the unpatched one above 1e-9 (so the test proves
the islands exist and that the mode removes them).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conformance.model.checkpoints import build_tiny, derive
from conformance.model.hf_sides import Float64Mode, HFSide, dense_copy
from conformance.model.sides import TwinSide


class _Unpatched(HFSide):
    """transformers' float64 model as it ships (its float32 islands kept)."""

    def _mode(self) -> Any:
        return contextlib.nullcontext()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _worst(side: Any, oracle: Any, tokens: list[np.ndarray]) -> float:
    worst = 0.0
    for t in tokens:
        (lg, hs), (olg, ohs) = side.step(t), oracle.step(t)
        assert len(hs) == len(ohs) == 5  # embed + 4 layers, at the same points
        worst = max(worst, _rel(lg, olg), *(_rel(h, o) for h, o in zip(hs, ohs, strict=True)))
    return worst


def _tokens() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 96, (1, 8)), *(rng.integers(0, 96, (1, 1)) for _ in range(3))]


def test_float64_mode_widens_every_float32_request() -> None:
    ints = torch.arange(4)
    with Float64Mode():
        assert torch.arange(0, 4, 2, dtype=torch.float).dtype == torch.float64
        assert ints.float().dtype == torch.float64
        assert torch.ones(2, dtype=torch.float64).to(torch.float32).dtype == torch.float64
        assert torch.ones(2, dtype=torch.float64).to(dtype=torch.float32).dtype == torch.float64
        x = torch.ones(3, dtype=torch.float64)
        assert torch.nn.functional.softmax(x, dim=-1, dtype=torch.float32).dtype == torch.float64
        # Other requests pass unchanged.
        assert x.to(torch.bfloat16).dtype == torch.bfloat16 and ints.to(torch.int32).dtype == torch.int32
    assert ints.float().dtype == torch.float32  # nothing left behind


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_transformers_float64_oracle_agrees_with_the_twins(arch: str, tmp_path: Path) -> None:
    derived = derive(build_tiny(arch, tmp_path / "ck"), tmp_path / "f32", "float32")
    patched = HFSide(derived, "float64", "transformers-float64")
    assert patched.not_float64 == []
    assert _worst(patched, TwinSide(derived, "float64", "twin-float64"), _tokens()) < 1e-12
    raw = _Unpatched(derived, "float64", "transformers-float64-as-shipped")
    assert any("inv_freq" in n for n in raw.not_float64)
    assert 1e-9 < _worst(raw, TwinSide(derived, "float64", "twin-float64"), _tokens()) < 1e-5


@pytest.mark.parametrize("quant", ["affine4", "mxfp4"])
def test_dense_copy_gives_the_exact_codes(quant: str, tmp_path: Path) -> None:
    """transformers on the float64 dense copy of an MLX-quantized checkpoint agrees with
    the twin's float64 oracle, which dequantizes the same codes exactly; the peer's copy
    is in the activation dtype."""
    derived = derive(build_tiny("llama", tmp_path / "ck"), tmp_path / "q", "bfloat16", quant)
    dense64 = dense_copy(derived, tmp_path / "d64", "float64")
    oracle = HFSide(dense64, "float64", "transformers-float64")
    assert _worst(oracle, TwinSide(derived, "float64", "twin-float64"), _tokens()) < 1e-12
    from safetensors.torch import load_file

    native = load_file(str(dense_copy(derived, tmp_path / "dn", "native") / "model.safetensors"))
    assert {t.dtype for t in native.values()} == {torch.bfloat16}
    assert not any(k.endswith((".scales", ".biases")) for k in native)
    assert dense_copy(tmp_path / "ck", tmp_path / "unused", "float64") == tmp_path / "ck"  # dense: as it is


def test_dense_copy_of_an_mlx_lm_conversion_loads_in_transformers(tmp_path: Path) -> None:
    """mlx-lm writes its quantization under transformers' ``quantization_config`` too, and a
    layer's own group size and bits under its path; the dense copy drops both keys (else
    transformers refuses it: "no `quant_method`") and dequantizes each layer with its own."""
    import json

    from transformers import AutoModelForCausalLM

    derived = derive(build_tiny("llama", tmp_path / "ck"), tmp_path / "q", "bfloat16", "affine4")
    cfg_path = derived / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = dict(cfg["quantization"])
    cfg["quantization"]["model.layers.0.mlp.up_proj"] = {"group_size": 64, "bits": 4}
    cfg_path.write_text(json.dumps(cfg))
    dense = dense_copy(derived, tmp_path / "d64", "float64")
    written = json.loads((dense / "config.json").read_text())
    assert "quantization" not in written and "quantization_config" not in written
    AutoModelForCausalLM.from_pretrained(str(dense), dtype=torch.float64)
