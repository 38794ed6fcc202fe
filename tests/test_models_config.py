"""``ModelArgs`` from ``config.json``, the RoPE frequencies against transformers' own, and the
loader's refusals."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

import torch_reference.models as tmodels
from mlx_impl import models as mmodels
from mlx_impl.models.config import ModelArgs

ROOT = Path(__file__).resolve().parents[1]
EPS32 = 2.0**-23


def _code_without_docstring(path: Path) -> str:
    tree = ast.parse(path.read_text())
    body = tree.body[1:] if isinstance(tree.body[0], ast.Expr) else tree.body
    return ast.dump(ast.Module(body=body, type_ignores=[]))


def test_both_config_readers_are_the_same_code() -> None:
    """torch_reference never imports MLX, so it carries a copy of the (pure Python) config
    reader; the copies must not drift apart."""
    a = _code_without_docstring(ROOT / "mlx_impl/models/config.py")
    b = _code_without_docstring(ROOT / "torch_reference/models/config.py")
    assert a == b


transformers = pytest.importorskip("transformers", reason="the models extra is not installed")


def test_llama3_inverse_frequencies_match_transformers() -> None:
    """Our float64 llama3 scaling against transformers' (float32) ``_compute_llama3_parameters``:
    transformers rounds ``base ** (-2i/d)`` and each scaling step to float32, a few eps32."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tests.models_tiny import make_config

    config = make_config("llama")
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    args = ModelArgs.from_config(config.to_dict())
    ours = args.rope["full_attention"].inv_freq()
    assert args.rope["full_attention"].rope_type == "llama3"
    assert len(ours) == ref.numel() == 8
    for o, r in zip(ours, ref.tolist(), strict=True):
        assert abs(o - r) <= 8 * EPS32 * abs(r), (o, r)
    # All three bands are exercised: kept, divided by factor, interpolated.
    plain = [10000.0 ** (-2 * i / 16) for i in range(8)]
    kinds = {"kept" if o == p else "divided" if abs(o - p / 8) < 1e-15 else "smoothed"
             for o, p in zip(ours, plain, strict=True)}
    assert kinds == {"kept", "divided", "smoothed"}


def test_glm4_partial_rotary_frequencies_match_transformers() -> None:
    from transformers.models.glm4.modeling_glm4 import Glm4RotaryEmbedding

    from tests.models_tiny import make_config

    config = make_config("glm4")
    ref = Glm4RotaryEmbedding(config).inv_freq
    spec = ModelArgs.from_config(config.to_dict()).rope["full_attention"]
    assert spec.dims == 8 and spec.traditional
    for o, r in zip(spec.inv_freq(), ref.tolist(), strict=True):
        assert abs(o - r) <= 4 * EPS32 * abs(r), (o, r)


def test_yarn_frequencies_and_attention_factor_match_transformers() -> None:
    """GPT-OSS's YaRN: transformers computes the ramp and frequencies in float32."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from tests.models_tiny import make_config

    config = make_config("gpt_oss")
    ref, factor = ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    args = ModelArgs.from_config(config.to_dict())
    spec = args.rope["full_attention"]
    assert spec.rope_type == "yarn" and args.rope["sliding_attention"] == spec
    assert abs(spec.attention_factor - factor) <= 1e-15 and factor > 1.1
    for o, r in zip(spec.inv_freq(), ref.tolist(), strict=True):
        assert abs(o - r) <= 8 * EPS32 * abs(r), (o, r)
    assert args.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    assert (args.num_local_experts, args.num_experts_per_tok) == (4, 2)


def test_gemma3_layer_types_and_bases() -> None:
    from tests.models_tiny import WINDOW, make_config

    args = ModelArgs.from_config(make_config("gemma3_text").to_dict())
    assert args.layer_types == ("sliding_attention", "full_attention", "sliding_attention")
    assert args.rope["sliding_attention"].theta == 5000.0
    assert args.rope["full_attention"].theta == 100000.0
    assert args.sliding_window == WINDOW
    assert args.attention_scale == 24**-0.5
    assert args.tie_word_embeddings


def test_gemma3_pattern_fallback_without_layer_types() -> None:
    cfg = {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 4,
           "num_hidden_layers": 7, "intermediate_size": 96, "vocab_size": 128,
           "sliding_window": 8, "head_dim": 16}
    args = ModelArgs.from_config(cfg)
    assert args.layer_types.count("full_attention") == 1 and args.layer_types[5] == "full_attention"
    assert args.rope["full_attention"].theta == 1_000_000.0
    assert args.rope["sliding_attention"].theta == 10_000.0


@pytest.fixture()
def llama_dir(tmp_path: Path) -> Path:
    from tests.models_tiny import build_checkpoint

    return build_checkpoint("llama", tmp_path / "llama")


def _edit_config(d: Path, **changes: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_unsupported_model_type_is_refused(llama_dir: Path, load) -> None:
    _edit_config(llama_dir, model_type="mistral")
    with pytest.raises(ValueError, match=r"\[models.load\] model_type must be one of"):
        load(llama_dir)


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_unsupported_rope_type_is_refused(llama_dir: Path, load) -> None:
    _edit_config(llama_dir, rope_parameters={"rope_type": "longrope", "rope_theta": 1e4})
    with pytest.raises(ValueError, match="rope_type 'longrope' is not supported"):
        load(llama_dir)


def _rewrite_weights(d: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = d / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_unused_tensor_is_refused(llama_dir: Path, load) -> None:
    import torch

    _rewrite_weights(llama_dir, lambda t: t.update({"model.layers.0.self_attn.q_norm.weigth": torch.ones(16)}))
    with pytest.raises(ValueError, match=r"no layer uses.*q_norm.weigth"):
        load(llama_dir)


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_missing_tensor_is_refused(llama_dir: Path, load) -> None:
    _rewrite_weights(llama_dir, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks 'model.layers.2.mlp.up_proj.weight'"):
        load(llama_dir)


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_untied_head_required_when_not_tied(llama_dir: Path, load) -> None:
    _rewrite_weights(llama_dir, lambda t: t.pop("lm_head.weight"))
    with pytest.raises(ValueError, match=r"lacks 'lm_head.weight'"):
        load(llama_dir)


@pytest.mark.parametrize("load", [mmodels.load, tmodels.load], ids=["mlx", "torch"])
def test_directory_without_checkpoint_is_refused(tmp_path: Path, llama_dir: Path, load) -> None:
    with pytest.raises(ValueError, match=r"has no config.json"):
        load(tmp_path / "nowhere")
    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"has no \*.safetensors"):
        load(tmp_path)
