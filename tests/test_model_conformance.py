"""Meta-tests of the model-level conformance harness (``conformance/model``): a clean port
passes against the float64 oracle and transformers' own float64 model through a prefill
and 32 cached steps; planted bugs (RoPE offset off by one at decode, a cache appended
twice) are caught and named by step and layer; the bound, the tie rule, the quantized
checkpoint layout and the command's report behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conformance.cli import main
from conformance.model.bounds import check_point, greedy_flip_is_tie
from conformance.model.checkpoints import BUILDERS, build_tiny, derive
from conformance.model.harness import run_config
from conformance.model.mutants import MUTANTS


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("llama")
    checkpoint = build_tiny("llama", root / "ckpt")
    return checkpoint, derive(checkpoint, root / "float32", "float32")


@pytest.mark.parametrize("model_type", sorted(BUILDERS))
def test_float32_port_conforms_with_transformers_anchor(model_type: str, tmp_path: Path) -> None:
    checkpoint = build_tiny(model_type, tmp_path / "ckpt")
    derived = derive(checkpoint, tmp_path / "float32", "float32")
    r = run_config(checkpoint, derived, model_type=model_type, dtype="float32", quant=None, steps=32,
                   prompt_len=8, progress=False)
    assert r["departure"] is None, r["departure"]
    assert r["tokens"]["agree"] == 33 and not r["tokens"]["flips"]
    anchor = next(a for a in r["anchors"] if a["name"] == "transformers-float64")
    assert anchor["required"] and anchor["passed"] and anchor["steps_checked"] == 33, anchor
    assert r["passed"]
    # Every layer of every step was judged: (embed + layers + logits) x (prefill + 32 steps).
    assert len(r["points"]) == 33 * (r["layers"] + 2)


@pytest.mark.parametrize("layer", [None, 1])
@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_planted_bug_is_named_by_step_and_layer(llama: tuple[Path, Path], mutant: str, layer: int | None) -> None:
    checkpoint, derived = llama
    r = run_config(checkpoint, derived, model_type="llama", dtype="float32", quant=None, steps=3,
                   prompt_len=8, mutant=MUTANTS[mutant](layer), anchors=False, progress=False)
    assert not r["passed"]
    # Both bugs act on decode only: the prefill (step 0) conforms, the first cached step
    # departs at the layer the bug was planted in (all layers: the first one).
    assert r["departure"]["step"] == 1, r["departure"]
    assert r["departure"]["point"] == f"layer {0 if layer is None else layer}", r["departure"]
    assert all(p["passed"] for p in r["points"] if p["step"] == 0)


def test_check_point_passes_the_twin_and_fails_three_times_its_error() -> None:
    rng = np.random.default_rng(0)
    oracle = rng.standard_normal((1, 4, 64))
    peer = oracle + 1e-6 * rng.standard_normal(oracle.shape)
    assert check_point(peer, peer, oracle, "float32").passed
    worse = oracle + 3 * (peer - oracle)
    check = check_point(worse, peer, oracle, "float32")
    assert not check.passed and check.kind == "value" and "Row (0," in check.message
    nan = peer.copy()
    nan[0, 1, 3] = np.nan
    assert check_point(nan, peer, oracle, "float32").kind == "nonfinite"


def test_greedy_flip_is_a_tie_only_inside_twice_the_bound() -> None:
    row = np.array([0.0, 1.0, 0.99, -3.0])
    assert greedy_flip_is_tie(row, 2, bound=0.006)
    assert not greedy_flip_is_tie(row, 2, bound=0.004)
    assert not greedy_flip_is_tie(row, 0, bound=0.1)


def test_derive_writes_mlx_quantized_layout(llama: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    checkpoint, _ = llama
    affine = load_file(str(derive(checkpoint, tmp_path / "a", "bfloat16", "affine4") / "model.safetensors"))
    assert affine["model.layers.0.self_attn.q_proj.weight"].dtype == torch.uint32
    assert affine["model.layers.0.self_attn.q_proj.scales"].dtype == torch.bfloat16
    assert "model.layers.0.self_attn.q_proj.biases" in affine
    fp = derive(checkpoint, tmp_path / "f", "bfloat16", "mxfp4")
    tensors = load_file(str(fp / "model.safetensors"))
    assert tensors["model.layers.0.mlp.down_proj.scales"].dtype == torch.uint8
    assert "model.layers.0.mlp.down_proj.biases" not in tensors
    assert json.loads((fp / "config.json").read_text())["quantization"] == {
        "group_size": 32, "bits": 4, "mode": "mxfp4"}


def test_command_writes_report_and_names_a_planted_bug(llama: tuple[Path, Path], tmp_path: Path) -> None:
    checkpoint, _ = llama
    common = ["model", str(checkpoint), "--dtype", "float32", "--steps", "2", "--prompt-len", "6",
              "--no-anchors", "--progress", "configs", "--no-tune"]
    assert main([*common, "--out", str(tmp_path / "ok")]) == 0
    html = (tmp_path / "ok" / "report.html").read_text()
    assert "<svg" in html and "relative error vs depth" in html
    assert json.loads((tmp_path / "ok" / "model.json").read_text())["results"][0]["passed"]
    assert main([*common, "--mutant", "rope_offset_off_by_one", "--out", str(tmp_path / "bad")]) == 1
    assert "FAIL | step 1, layer 0" in (tmp_path / "bad" / "report.md").read_text()
