"""Pins of the sweep's findings (conformance/model/sweep_triage.py): each reproducer still
reproduces, and each convention still holds. When mlx-lm, transformers or MLX change one
of them, a test here fails and the triage entry is to be revisited (not the test loosened)."""

from __future__ import annotations

import dataclasses
import importlib
import runpy
from pathlib import Path

import pytest

from conformance.model.sweep_configs import build_checkpoint, legacy_keys, tiny_config

REPRO = Path(__file__).resolve().parent.parent / "reports" / "sweep" / "mlx-lm" / "repro"


@pytest.mark.parametrize("script", sorted(p.name for p in REPRO.glob("*.py")))
def test_reproducers_still_reproduce(script: str) -> None:
    # Each script asserts its own symptom (and that the control case agrees) under __main__.
    runpy.run_path(str(REPRO / script), run_name="__main__")


def test_gather_mm_bfloat16_cpu_unsupported() -> None:
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        pytest.skip("the finding is about MLX's CPU back end; this run's default device is a GPU")
    a = mx.ones((2, 1, 64), dtype=mx.bfloat16)
    b = mx.ones((4, 64, 32), dtype=mx.bfloat16)
    with pytest.raises(RuntimeError, match=r"GatherMM::eval\] Currently only supports float32"):
        mx.eval(mx.gather_mm(a, b, rhs_indices=mx.array([[0], [3]], dtype=mx.uint32)))
    # float32 runs: the limit is the dtype, not the op
    mx.eval(mx.gather_mm(a.astype(mx.float32), b.astype(mx.float32), rhs_indices=mx.array([[0], [3]], dtype=mx.uint32)))


_REQUIRED = ["apertus", "minimax", "mamba2", "lfm2", "exaone", "kimi_linear", "solar_open", "glm_moe_dsa",
             "longcat_flash", "mimo_v2_flash", "exaone_moe"]


@pytest.mark.parametrize("arch", _REQUIRED)
def test_mlx_lm_requires_keys_transformers_does_not_write(arch: str) -> None:
    from mlx_lm.utils import MODEL_REMAPPING

    cfg = tiny_config(arch)
    written = cfg.to_dict()
    written.update(legacy_keys(cfg, written))
    args = importlib.import_module(f"mlx_lm.models.{MODEL_REMAPPING.get(arch, arch)}").ModelArgs
    required = {f.name for f in dataclasses.fields(args)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert required - set(written), f"{arch}: mlx-lm now finds every key it requires"


@pytest.mark.parametrize("arch", ["deepseek_v2", "minicpm3"])
def test_mlx_lm_requires_rope_scaling(arch: str) -> None:
    mod = importlib.import_module(f"mlx_lm.models.{arch}")
    cfg = tiny_config(arch)
    written = cfg.to_dict()
    written.update(legacy_keys(cfg, written))
    assert written["rope_scaling"] is None
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
        mod.Model(mod.ModelArgs.from_dict(written))


@pytest.mark.parametrize("arch", ["gpt2", "gpt_oss", "granitemoehybrid", "jamba", "exaone4"])
def test_weight_or_layout_mismatch_still_fails(arch: str, tmp_path: Path) -> None:
    from mlx_lm.utils import load_model

    ck = build_checkpoint(arch, tmp_path / arch)
    with pytest.raises((ValueError, TypeError)):
        load_model(ck)


def test_rope_scaling_null_drops_per_layer_rope_parameters(tmp_path: Path) -> None:
    import json

    import torch
    from transformers import AutoModelForCausalLM

    ck = build_checkpoint("mellum", tmp_path / "mellum")
    config = json.loads((ck / "config.json").read_text())
    assert "full_attention" in config["rope_parameters"] and "rope_scaling" not in config
    AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float64)  # as the sweep writes it: loads
    (ck / "config.json").write_text(json.dumps({**config, "rope_scaling": None}))
    with pytest.raises(TypeError, match="'NoneType' object is not subscriptable"):
        AutoModelForCausalLM.from_pretrained(ck, dtype=torch.float64)


def test_glm4_moe_lite_latent_norm_eps() -> None:
    import torch
    from mlx_lm.models import glm4_moe_lite
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("glm4_moe_lite")
    assert cfg.rms_norm_eps == 1e-5
    torch.manual_seed(0)
    attn = AutoModelForCausalLM.from_config(cfg).model.layers[0].self_attn
    assert attn.kv_a_layernorm.variance_epsilon == 1e-6  # not config.rms_norm_eps
    written = cfg.to_dict()
    written.update(legacy_keys(cfg, written))
    mlx_attn = glm4_moe_lite.Model(glm4_moe_lite.ModelArgs.from_dict(written)).model.layers[0].self_attn
    assert mlx_attn.kv_a_layernorm.eps == 1e-5


def test_deepseek_v32_indexer_k_norm_eps() -> None:
    # The finding on the sweep's own config: the two libraries' indexer key norms differ in
    # eps only (the reproducer shows the outputs), and the record explains no outcome: it
    # makes no configuration depart, so a departure of deepseek_v32 stays untriaged.
    import torch
    from mlx_lm.models import deepseek_v32
    from transformers import AutoModelForCausalLM

    from conformance.model.sweep_triage import TRIAGE

    cfg = tiny_config("deepseek_v32")
    torch.manual_seed(0)
    assert AutoModelForCausalLM.from_config(cfg).model.layers[0].self_attn.indexer.k_norm.eps == 1e-6
    written = cfg.to_dict()
    written.update(legacy_keys(cfg, written))
    mlx_attn = deepseek_v32.Model(deepseek_v32.ModelArgs.from_dict(written)).model.layers[0].self_attn
    assert mlx_attn.indexer.k_norm.eps == 1e-5
    finding = next(f for f in TRIAGE if f.id == "deepseek-v32-indexer-k-norm-eps")
    assert not any(finding.matches({"arch": "deepseek_v32", "label": label, "status": status, "reason": ""})
                   for label in ("float32", "bfloat16", "bfloat16+affine4") for status in ("departs", "conforms"))


def test_gemma4_affine4_departure_is_the_bf16_quantized_matmul(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import platform

    import mlx.core as mx
    import mlx.nn as nn

    from conformance.model import judge

    if mx.default_device() != mx.cpu:
        pytest.skip("the finding is about MLX's CPU quantized matmul; this run's default device is a GPU")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("measured on x86-64, whose CPU kernel accumulates bfloat16 in bfloat16 (SEMANTICS.md: "
                    "Apple's NEON path accumulates in float32)")
    ck = build_checkpoint("gemma4_text", tmp_path / "gemma4_text")
    kwargs = {"candidate": "mlx-lm", "dtype": "bfloat16", "quant": "affine4", "steps": 16, "prompt_len": 8}
    shipped = judge(ck, **kwargs)
    assert not shipped["passed"], "mlx-lm's gemma4_text at bfloat16+affine4 now conforms: revisit the finding"

    # The same computation with MLX's quantized matmul (bfloat16 running sum) replaced by
    # its dense equivalent on the kernel's own dequantized weight (float32 accumulation).
    def dense(module: nn.Module, x: mx.array) -> mx.array:
        w = mx.dequantize(module["weight"], module["scales"], module.get("biases"),
                          group_size=module.group_size, bits=module.bits, mode=module.mode)
        return x @ w.T

    def linear(self: nn.QuantizedLinear, x: mx.array) -> mx.array:
        y = dense(self, x)
        return y + self["bias"] if "bias" in self else y

    monkeypatch.setattr(nn.QuantizedLinear, "__call__", linear)
    monkeypatch.setattr(nn.QuantizedEmbedding, "as_linear", dense)
    summed_in_float32 = judge(ck, **kwargs)
    assert summed_in_float32["passed"], (f"with float32 accumulation it departs too ({summed_in_float32['departure']}): "
                                         "the cause is not (only) the quantized matmul")


def test_gemma4_quantized_matmul_repro_fails_on_a_float32_accumulating_kernel() -> None:
    import platform

    import mlx.core as mx

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the reproducer asserts only on x86-64 (where the finding was measured)")
    repro = runpy.run_path(str(REPRO / "gemma4_quantized_matmul_bf16.py"))

    def summed_in_float32(x, wq, scales, biases, **kw):  # a kernel without the finding
        kw.pop("transpose")
        return x @ mx.dequantize(wq, scales, biases, **kw).T

    with pytest.raises(AssertionError, match="no longer sums in bfloat16"):
        repro["check"](summed_in_float32)


def test_quantized_matmul_bfloat16_cpu_accumulates_in_bfloat16() -> None:
    # Finding quantized-matmul-bf16-accumulation (ernie4_5_moe, nemotron_h): on the x86 CPU
    # back end the bfloat16 quantized matmul's error is several times that of
    # x @ dequantize(w).T (one rounding of a float32 sum: ~2^-9 relative); in float32 the
    # quantized matmul is as accurate as the dense one, so the kernel's bfloat16 path, not the
    # weights, differs. (Not bit-identity in float32: the dense matmul's summation order is the
    # BLAS library's, which differs between environments; a fresh CI environment differed in
    # the last bits where this machine's was bit-identical.)
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        pytest.skip("the finding is about MLX's CPU back end; this run's default device is a GPU")
    import numpy as np

    mx.random.seed(0)
    x = mx.random.normal((8, 64))
    w = 0.02 * mx.random.normal((256, 64))
    wq, s, b = mx.quantize(w.astype(mx.bfloat16), 64, 4)
    deq = mx.dequantize(wq, s, b, 64, 4)
    xb = x.astype(mx.bfloat16)
    ref = np.array(xb.astype(mx.float32), dtype=np.float64) @ np.array(deq.astype(mx.float32), dtype=np.float64).T

    def rel(y: mx.array) -> float:
        return float(np.linalg.norm(np.array(y.astype(mx.float32)) - ref) / np.linalg.norm(ref))

    qmm = rel(mx.quantized_matmul(xb, wq, s, b, transpose=True, group_size=64, bits=4))
    dense = rel(xb @ deq.T)
    assert qmm > 3 * dense, (qmm, dense)  # measured 9e-3 against 1.7e-3
    wq32, s32, b32 = mx.quantize(w, 64, 4)
    deq32 = np.array(mx.dequantize(wq32, s32, b32, 64, 4), dtype=np.float64)
    exact32 = np.array(x, dtype=np.float64) @ deq32.T

    def rel32(y: mx.array) -> float:
        return float(np.linalg.norm(np.array(y, dtype=np.float64) - exact32) / np.linalg.norm(exact32))

    qmm32 = rel32(mx.quantized_matmul(x, wq32, s32, b32, transpose=True, group_size=64, bits=4))
    dense32 = rel32(x @ mx.dequantize(wq32, s32, b32, 64, 4).T)
    # Both at float32's level (2^-24 ~ 6e-8 a rounding; K = 64 terms): a bfloat16 accumulator
    # would be ~1e-3 here.
    assert qmm32 < 2 * dense32 + 1e-7 and qmm32 < 1e-6, (qmm32, dense32)


def test_dbrx_attention_config_has_no_rope_theta() -> None:
    # Finding dbrx-attn-rope-theta: transformers' default DBRX attention config cannot build
    # the model; the sweep's override (the published attn_config.rope_theta) can.
    from transformers import AutoModelForCausalLM, DbrxConfig

    small = {"d_model": 64, "n_heads": 4, "n_layers": 1, "max_seq_len": 64, "vocab_size": 32,
             "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 2, "moe_top_k": 1}}
    with pytest.raises(AttributeError, match="rope_theta"):
        AutoModelForCausalLM.from_config(DbrxConfig(**small))
    cfg = tiny_config("dbrx")
    assert cfg.attn_config.rope_theta == cfg.rope_parameters["rope_theta"] == 500000.0
    AutoModelForCausalLM.from_config(cfg)
