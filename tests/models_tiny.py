"""Tiny random checkpoints written by transformers itself, and transformers' own logits.

Shared by the ``tests/test_models_*.py`` files (and usable by the model conformance
harness): :func:`build_checkpoint` makes a model of one architecture with
``XForCausalLM(config)``, perturbs every 1-D parameter (a norm weight left at its constant
init would hide a loader that reads ``q_norm`` for ``k_norm``), and saves it with
``save_pretrained(..., safe_serialization=True)``. :func:`transformers_logits` runs
transformers in float64 through a prefill and cached single-token steps with its own
``DynamicCache``.

Sizes: hidden 64, 4 query heads over 2 kv heads (GQA) of head_dim 16, vocab 128, 3 layers,
initializer_range 0.15 so that attention is far from uniform (with transformers' default
0.02 the scores are ~0 and a RoPE position bug would barely move the logits).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

ARCHITECTURES = ("llama", "qwen3", "gemma3_text", "glm4", "gpt_oss")
WINDOW = 8  # Gemma 3's sliding window: a 12-token prompt and 32 decode steps cross it.

_COMMON: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=128,
    max_position_embeddings=256,
    initializer_range=0.15,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def make_config(
    arch: str, *, tie: bool | None = None, softcap: bool = False, linear_rope: bool = False
) -> Any:
    """The transformers config of a tiny model of ``arch``; ``tie`` overrides the class
    default of ``tie_word_embeddings``; ``softcap`` (Gemma 3 only) sets attention-logit and
    final-logit softcapping, which real Gemma 3 checkpoints leave unset (and mlx-lm's
    gemma3_text does not implement); ``linear_rope`` (Gemma 3 only) gives the global layers
    linear RoPE scaling (factor 8), as Gemma 3 4B and larger have."""
    import transformers as tf

    kw = dict(_COMMON)
    if tie is not None:
        kw["tie_word_embeddings"] = tie
    if arch == "llama":
        # Llama 3 scaling with a short original context so that head_dim 16's eight
        # frequencies fall in all three bands (kept, interpolated, divided by factor).
        kw["rope_scaling"] = dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=64, rope_theta=10000.0,
        )
        kw["attention_bias"] = True
        return tf.LlamaConfig(**kw)
    if arch == "qwen3":
        return tf.Qwen3Config(**kw, rope_theta=20000.0)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(
            **kw,
            sliding_window=WINDOW,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            query_pre_attn_scalar=24,  # deliberately not head_dim
            rope_theta=100000.0,
            rope_local_base_freq=5000.0,
            final_logit_softcapping=8.0 if softcap else None,
            rope_scaling={"rope_type": "linear", "factor": 8.0} if linear_rope else None,
            # transformers 5.24 stores attn_logit_softcapping but its Gemma3Attention never
            # applies it; the ports ignore it too (a test checks it changes nothing).
            attn_logit_softcapping=5.0 if softcap else None,
        )
    if arch == "glm4":
        return tf.Glm4Config(**kw, partial_rotary_factor=0.5, rope_theta=10000.0)
    if arch == "gpt_oss":
        # 4 experts, 2 per token; YaRN with a short original context so the ramp matters;
        # sliding layers (window 8) alternating with full ones, as transformers defaults.
        return tf.GptOssConfig(
            **kw, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
            rope_parameters=dict(
                rope_type="yarn", factor=4.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                original_max_position_embeddings=64, rope_theta=150000.0,
            ),
        )
    raise ValueError(f"unknown architecture {arch!r}")


_MODEL_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "glm4": "Glm4ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}


def build_checkpoint(
    arch: str, directory: Path, *, tie: bool | None = None, seed: int = 0,
    old_format: bool = False, softcap: bool = False, linear_rope: bool = False,
) -> Path:
    """Write a tiny random ``arch`` checkpoint into ``directory`` and return it.

    ``old_format`` rewrites ``config.json`` the way pre-5 transformers wrote it
    (top-level ``rope_theta`` / ``rope_scaling`` / ``rope_local_base_freq`` /
    ``partial_rotary_factor`` instead of ``rope_parameters``).
    """
    import transformers as tf

    torch.manual_seed(seed)
    config = make_config(arch, tie=tie, softcap=softcap, linear_rope=linear_rope)
    model = getattr(tf, _MODEL_CLASSES[arch])(config).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or name.endswith("_bias"):  # GPT-OSS's expert biases are [E, *]
                # Norm weights around 1 (Gemma's around 0: it multiplies by 1 + w) and
                # biases, each one different, so a swapped or dropped vector shows.
                centre = 0.0 if ("bias" in name or arch == "gemma3_text") else 1.0
                p.copy_(centre + 0.2 * torch.randn(p.shape, generator=gen))
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    if arch == "gemma3_text":
        # mlx-lm's gemma3_text reads the old pattern, not layer_types; this pattern gives
        # the same layers (every 2nd global), so both readings agree.
        path = directory / "config.json"
        cfg = json.loads(path.read_text())
        cfg["sliding_window_pattern"] = 2
        path.write_text(json.dumps(cfg, indent=2))
    if old_format:
        _to_old_config(directory / "config.json", arch)
    return directory


def _to_old_config(path: Path, arch: str) -> None:
    cfg = json.loads(path.read_text())
    params = cfg.pop("rope_parameters")
    if arch == "gemma3_text":
        full, local = params["full_attention"], params["sliding_attention"]
        cfg["rope_theta"] = full.pop("rope_theta")
        cfg["rope_local_base_freq"] = local["rope_theta"]
        cfg["rope_scaling"] = None if full.get("rope_type", "default") == "default" else full
    elif arch == "gpt_oss":
        cfg["rope_theta"] = params.pop("rope_theta")
        cfg["rope_scaling"] = params
    else:
        cfg["rope_theta"] = params.pop("rope_theta")
        if "partial_rotary_factor" in params:
            cfg["partial_rotary_factor"] = params.pop("partial_rotary_factor")
        cfg["rope_scaling"] = None if params.get("rope_type", "default") == "default" else params
    path.write_text(json.dumps(cfg, indent=2))


def fixed_tokens(n: int, vocab: int = 128, seed: int = 7) -> list[int]:
    """``n`` reproducible token ids in ``[3, vocab)`` (clear of pad/bos/eos)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def transformers_logits(directory: Path, prompt: list[int], steps: list[int]) -> list[torch.Tensor]:
    """transformers' float64 logits: ``[prefill [L, V], step 1 [V], ...]`` for one sequence.

    The model is loaded from ``directory``, cast with ``.to(torch.float64)``, and run with
    ``use_cache=True`` through one prefill of ``prompt`` and one call per token of
    ``steps``, each reusing transformers' own ``DynamicCache``.
    """
    import transformers as tf

    # Eager attention and experts: transformers' reference paths (the grouped-matmul
    # experts kernel takes no float64).
    model = tf.AutoModelForCausalLM.from_pretrained(
        directory, attn_implementation="eager", experts_implementation="eager"
    )
    model = model.to(torch.float64).eval()
    cache = tf.DynamicCache(config=model.config)
    out: list[torch.Tensor] = []
    with torch.no_grad():
        r = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True)
        out.append(r.logits[0])
        for t in steps:
            r = model(input_ids=torch.tensor([[t]]), cache=cache, use_cache=True)
            out.append(r.logits[0, -1])
    return out
