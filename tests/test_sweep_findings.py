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
